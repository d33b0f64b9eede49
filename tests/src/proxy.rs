//! A TCP proxy in front of a gateway, as a Kubernetes Service is: the
//! test cuts its connections as a network would, and points it at another
//! gateway as a rolling restart does.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The proxy; dropping it stops taking connections.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<Mutex<Route>>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Route {
    upstream: SocketAddr,
    /// Cancelled to drop every connection open now.
    cut: CancellationToken,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free port.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("binding port 0");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(Route {
            upstream,
            cut: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        let route = state.clone();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stopped.cancelled() => return,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let (upstream, cut) = {
                    let route = route.lock().expect("proxy route");
                    (route.upstream, route.cut.clone())
                };
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, state, stop }
    }

    /// Drops every connection open now; new ones pass.
    pub fn cut(&self) {
        let mut route = self.state.lock().expect("proxy route");
        route.cut.cancel();
        route.cut = CancellationToken::new();
    }

    /// Sends new connections to `upstream`; open ones stay where they are.
    pub fn point_to(&self, upstream: SocketAddr) {
        self.state.lock().expect("proxy route").upstream = upstream;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}
