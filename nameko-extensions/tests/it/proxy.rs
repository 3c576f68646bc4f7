//! An in-process TCP proxy a test can cut, to simulate a lost broker connection
//! without touching the shared broker, and take down (refusing connections) and bring
//! back up, to simulate an outage.

use std::{net::SocketAddr, sync::Mutex};

use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// Forwards every connection accepted on `127.0.0.1:<port>` to `upstream`.
#[derive(Debug)]
pub(crate) struct Proxy {
    addr: SocketAddr,
    upstream: String,
    cut: watch::Sender<u64>,
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
            accept: Mutex::new(None),
        }
    }

    fn serve(&self, listener: TcpListener) {
        let cuts = self.cut.clone();
        let upstream = self.upstream.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both sockets closes them.
                });
            }
        });
        *self.accept.lock().expect("the proxy lock") = Some(accept);
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
