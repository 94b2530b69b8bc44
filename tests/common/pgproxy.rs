//! A TCP proxy in front of PostgreSQL that a test can cut and restore: one
//! spawned process loses its database while the server, which every other
//! test shares, keeps running.
//!
//! ```ignore
//! let (proxy, url) = PgProxy::for_url(&db.url).await;
//! // hand `url` to the process under test
//! proxy.block();   // every proxied connection closes; new ones are closed at once
//! proxy.unblock(); // connections go through again
//! proxy.lose_next_commit_ack(); // the next COMMIT reaches the server, its reply never returns
//! ```

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    faults: Arc<Faults>,
}

/// Faults armed by the test, shared with every connection.
#[derive(Default)]
struct Faults {
    lose_commit_ack: AtomicBool,
    commits_lost: AtomicUsize,
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
    /// same URL through the proxy, in plain text (`sslmode=disable`): the proxy
    /// reads the protocol's messages to recognise a COMMIT.
    pub async fn for_url(url: &str) -> (PgProxy, String) {
        let (before, host_port, after) =
            split_url(url).unwrap_or_else(|| panic!("not a postgres://…/db URL: {url}"));
        let proxy = PgProxy::start(&host_port).await;
        let separator = if after.contains('?') { '&' } else { '?' };
        let proxied = format!("{before}{}{after}{separator}sslmode=disable", proxy.addr);
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

    /// The next COMMIT of any connection reaches the server, but its reply
    /// never comes back: the connection closes instead, as when the network
    /// fails right after the server committed.
    pub fn lose_next_commit_ack(&self) {
        self.state()
            .faults
            .lose_commit_ack
            .store(true, Ordering::SeqCst);
    }

    /// COMMITs whose reply was lost so far.
    pub fn commits_lost(&self) -> usize {
        self.state().faults.commits_lost.load(Ordering::SeqCst)
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
        let task = tokio::spawn(forward(client, upstream.clone(), state.faults.clone()));
        state.connections.push(task.abort_handle());
    }
}

async fn forward(client: TcpStream, upstream: String, faults: Arc<Faults>) {
    // If the server cannot be reached, dropping `client` closes it: the caller
    // sees the same failure it would see without the proxy.
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mute = Arc::new(AtomicBool::new(false));
    let replies = pump(server_read, client_write, mute.clone());
    let requests = requests(client_read, server_write, faults, mute);
    // Either direction ending ends the connection, closing both sockets.
    tokio::select! {
        _ = replies => {}
        _ = requests => {}
    }
}

/// Server to client: copies bytes until the connection mutes.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mute: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if mute.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Client to server, one protocol message at a time, so that a COMMIT can be
/// recognised: the startup message (a length, no tag), then tagged messages.
async fn requests(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    faults: Arc<Faults>,
    mute: Arc<AtomicBool>,
) {
    let mut tagged = false;
    loop {
        let mut head = if tagged { vec![0u8; 5] } else { vec![0u8; 4] };
        if from.read_exact(&mut head).await.is_err() {
            return;
        }
        let len_at = head.len() - 4;
        let len = u32::from_be_bytes([
            head[len_at],
            head[len_at + 1],
            head[len_at + 2],
            head[len_at + 3],
        ]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if from.read_exact(&mut body).await.is_err() {
            return;
        }
        let is_commit = tagged && head[0] == b'Q' && body.starts_with(b"COMMIT");
        let lose = is_commit && faults.lose_commit_ack.swap(false, Ordering::SeqCst);
        if lose {
            // Muted before the server can answer: its reply is never seen.
            mute.store(true, Ordering::SeqCst);
        }
        if to.write_all(&head).await.is_err() || to.write_all(&body).await.is_err() {
            return;
        }
        if lose {
            // Give the server time to commit, then cut the connection.
            tokio::time::sleep(Duration::from_millis(300)).await;
            faults.commits_lost.fetch_add(1, Ordering::SeqCst);
            return;
        }
        // After an SSLRequest or GSSENCRequest (refused: the proxy speaks plain
        // TCP), the startup message, untagged, comes next.
        let negotiation =
            !tagged && len == 8 && matches!(body[..4], [0x04, 0xd2, 0x16, 0x2f | 0x30]);
        tagged = !negotiation;
    }
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

/// A server that speaks just enough of PostgreSQL's wire protocol to refuse a
/// password, as a server with password authentication does: the local server
/// trusts every connection, so a wrong password cannot be tried on it.
/// Returns the address it listens on; it answers every connection alike.
pub async fn password_refusing_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = refuse_password(&mut socket).await;
            });
        }
    });
    addr
}

async fn refuse_password(socket: &mut TcpStream) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    loop {
        let len = socket.read_u32().await?;
        let code = socket.read_u32().await?;
        let mut rest = vec![0; (len as usize).saturating_sub(8)];
        socket.read_exact(&mut rest).await?;
        if code != SSL_REQUEST {
            break;
        }
        socket.write_all(b"N").await?;
    }
    // AuthenticationCleartextPassword, then the client's PasswordMessage.
    socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    let _tag = socket.read_u8().await?;
    let len = socket.read_u32().await?;
    let mut password = vec![0; (len as usize).saturating_sub(4)];
    socket.read_exact(&mut password).await?;
    let mut fields = Vec::new();
    for (kind, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"postgres\""),
    ] {
        fields.push(kind);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    socket.write_all(&message).await?;
    socket.flush().await
}
