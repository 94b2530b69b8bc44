//! A TCP proxy in front of PostgreSQL that a test can cut and restore: one
//! spawned process loses its database while the server, which every other
//! test shares, keeps running.
//!
//! ```ignore
//! let (proxy, url) = PgProxy::for_url(&db.url).await;
//! // hand `url` to the process under test
//! proxy.block();   // every proxied connection closes; new ones are closed at once
//! proxy.unblock(); // connections go through again
//! ```

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub struct PgProxy {
    addr: SocketAddr,
    shared: Arc<Mutex<State>>,
    acceptor: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    blocked: bool,
    /// One task per proxied connection; aborting it drops, and so closes, both sockets.
    connections: Vec<AbortHandle>,
}

impl PgProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to
    /// `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Mutex::new(State::default()));
        let acceptor = tokio::spawn(accept_loop(listener, upstream.to_string(), shared.clone()));
        PgProxy {
            addr,
            shared,
            acceptor,
        }
    }

    /// A proxy to the server of a `postgres://[user@]host[:port]/db` URL, and the
    /// same URL through the proxy.
    pub async fn for_url(url: &str) -> (PgProxy, String) {
        let (before, host_port, after) =
            split_url(url).unwrap_or_else(|| panic!("not a postgres://…/db URL: {url}"));
        let proxy = PgProxy::start(&host_port).await;
        let proxied = format!("{before}{}{after}", proxy.addr);
        (proxy, proxied)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the database off: closes every proxied connection, and from now on
    /// accepts new ones only to close them, as a server that is going away would.
    pub fn block(&self) {
        let mut state = self.state();
        state.blocked = true;
        for c in state.connections.drain(..) {
            c.abort();
        }
    }

    /// Lets new connections through again.
    pub fn unblock(&self) {
        self.state().blocked = false;
    }

    /// Proxied connections still open.
    pub fn open_connections(&self) -> usize {
        let mut state = self.state();
        state.connections.retain(|c| !c.is_finished());
        state.connections.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.block();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, shared: Arc<Mutex<State>>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: try again shortly.
                eprintln!("pgproxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Deciding and registering under the lock that `block` takes means no
        // connection can slip through while the proxy is being blocked.
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        if state.blocked {
            drop(client);
            continue;
        }
        state.connections.retain(|c| !c.is_finished());
        let task = tokio::spawn(forward(client, upstream.clone()));
        state.connections.push(task.abort_handle());
    }
}

async fn forward(mut client: TcpStream, upstream: String) {
    // If the server cannot be reached, dropping `client` closes it: the caller
    // sees the same failure it would see without the proxy.
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// Splits a URL around its `host:port` (the port defaults to PostgreSQL's).
/// IPv6 literals are not supported; the tests use 127.0.0.1.
pub fn split_url(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((user, host_port)) => (format!("{user}@"), host_port),
        None => (String::new(), authority),
    };
    if host_port.is_empty() {
        return None;
    }
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    Some((format!("{scheme}://{user}"), host_port, after.to_string()))
}
