//! An in-process TCP proxy a test can cut, to simulate a lost broker connection
//! without touching the shared broker.

use std::net::SocketAddr;

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
    cut: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a local port");
        let addr = listener.local_addr().expect("the local address");
        let (cut, _) = watch::channel(0_u64);
        let cuts = cut.clone();
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
        Self { addr, cut, accept }
    }

    /// The port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops every connection made through the proxy so far.
    pub(crate) fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
