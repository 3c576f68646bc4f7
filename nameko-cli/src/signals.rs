//! Shutdown signals: the process's SIGTERM and Ctrl-C, or injected ones in tests.

use std::{fmt, io};

use tokio::{sync::mpsc, task::JoinHandle};

/// A request to stop: the first one stops gracefully, the second kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// SIGTERM.
    Terminate,
    /// SIGINT, Ctrl-C.
    Interrupt,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT (Ctrl-C)",
        })
    }
}

/// Where `run` hears shutdown signals from.
///
/// ```
/// use nameko_cli::{Signal, Signals};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (sender, mut signals) = Signals::channel();
/// sender.send(Signal::Terminate);
/// assert_eq!(signals.recv().await, Some(Signal::Terminate));
/// # }
/// ```
#[derive(Debug)]
pub struct Signals {
    rx: mpsc::UnboundedReceiver<Signal>,
    listener: Option<JoinHandle<()>>,
}

/// Sends injected [`Signal`]s to a [`Signals`] made by [`Signals::channel`].
#[derive(Clone, Debug)]
pub struct SignalSender(mpsc::UnboundedSender<Signal>);

impl SignalSender {
    /// Sends `signal`; false when the receiving [`Signals`] is gone.
    pub fn send(&self, signal: Signal) -> bool {
        self.0.send(signal).is_ok()
    }
}

impl Signals {
    /// The process's SIGTERM and SIGINT (Ctrl-C on every platform). The handlers are
    /// installed before this returns, so no signal between here and `run` is lost.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// When a signal handler cannot be installed.
    pub fn os() -> io::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = listen(tx)?;
        Ok(Self {
            rx,
            listener: Some(listener),
        })
    }

    /// Signals injected through the returned sender (tests, or an application with its
    /// own signal handling).
    #[must_use]
    pub fn channel() -> (SignalSender, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (SignalSender(tx), Self { rx, listener: None })
    }

    /// The next signal; `None` when no signal can come any more (every sender dropped).
    pub async fn recv(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }

    /// The next signal, waiting forever when none can come.
    pub(crate) async fn next(&mut self) -> Signal {
        match self.rx.recv().await {
            Some(signal) => signal,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

#[cfg(unix)]
fn listen(tx: mpsc::UnboundedSender<Signal>) -> io::Result<JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut terminate = signal(SignalKind::terminate())?;
    // What `tokio::signal::ctrl_c()` listens to on Unix, installed now rather than on
    // first poll.
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = terminate.recv() => Signal::Terminate,
                Some(()) = interrupt.recv() => Signal::Interrupt,
                else => break,
            };
            if tx.send(signal).is_err() {
                break;
            }
        }
    }))
}

#[cfg(not(unix))]
fn listen(tx: mpsc::UnboundedSender<Signal>) -> io::Result<JoinHandle<()>> {
    Ok(tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(Signal::Interrupt).is_err() {
                break;
            }
        }
    }))
}
