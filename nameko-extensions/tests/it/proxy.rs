//! An in-process TCP proxy a test can cut, to simulate a lost broker connection
//! without touching the shared broker, and take down (refusing connections) and bring
//! back up, to simulate an outage.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
    task::JoinHandle,
};

/// Forwards every connection accepted on `127.0.0.1:<port>` to `upstream`.
#[derive(Debug)]
pub(crate) struct Proxy {
    addr: SocketAddr,
    upstream: String,
    cut: watch::Sender<u64>,
    /// While `true`, nothing the broker sends is passed on to the client (it stays
    /// buffered in the proxy): replies and confirms stall.
    held: watch::Sender<bool>,
    /// How many times the proxy went down: an accept loop from before the latest
    /// `down` drops what it still accepts (aborting it takes effect only later).
    downs: Arc<AtomicU64>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a local port");
        let addr = listener.local_addr().expect("the local address");
        let proxy = Self::down_at(addr, upstream);
        proxy.serve(listener);
        proxy
    }

    /// A proxy to `upstream` on a free port that is down (refuses connections) until
    /// [`up`](Self::up).
    pub(crate) async fn start_down(upstream: String) -> Self {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a local port");
            listener.local_addr().expect("the local address")
        };
        Self::down_at(addr, upstream)
    }

    fn down_at(addr: SocketAddr, upstream: String) -> Self {
        let (cut, _) = watch::channel(0_u64);
        Self {
            addr,
            upstream,
            cut,
            held: watch::Sender::new(false),
            downs: Arc::new(AtomicU64::new(0)),
            accept: Mutex::new(None),
        }
    }

    fn serve(&self, listener: TcpListener) {
        let cuts = self.cut.clone();
        let held = self.held.clone();
        let upstream = self.upstream.clone();
        let downs = Arc::clone(&self.downs);
        let serving = downs.load(Ordering::SeqCst);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if downs.load(Ordering::SeqCst) != serving {
                    // Down since: refuse, as a closed listener would.
                    return;
                }
                let upstream = upstream.clone();
                let mut cut = cuts.subscribe();
                let held = held.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let (never_held, _) = watch::channel(false);
                    tokio::select! {
                        () = pump(client_read, server_write, never_held.subscribe()) => {}
                        () = pump(server_read, client_write, held) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both sockets closes them.
                });
            }
        });
        *self.accept.lock().expect("the proxy lock") = Some(accept);
    }

    /// Stops passing on what the broker sends, for good: what it sends stays in the
    /// proxy until the connection is cut.
    pub(crate) fn hold(&self) {
        self.held.send_replace(true);
    }

    /// The port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops every connection made through the proxy so far.
    pub(crate) fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Cuts every connection and stops listening: new connections are refused until
    /// [`up`](Self::up).
    pub(crate) fn down(&self) {
        self.downs.fetch_add(1, Ordering::SeqCst);
        if let Some(accept) = self.accept.lock().expect("the proxy lock").take() {
            accept.abort();
        }
        self.cut();
    }

    /// Listens again on the same port.
    pub(crate) async fn up(&self) {
        let listener = bind_again(self.addr).await;
        self.serve(listener);
    }
}

/// Copies `from` to `to`, waiting while `held` says so; returns when either side ends.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut held: watch::Receiver<bool>) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if held.wait_for(|held| !held).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Binds `addr` again; the old listener may take a moment to go.
async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("cannot listen on {addr} again");
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(accept) = self
            .accept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            accept.abort();
        }
    }
}
