//! The HTTP listeners: `/metrics`, `/healthz` and `/readyz` for Prometheus and
//! the orchestrator, and, on an address of its own, the operator's
//! `POST /breaker/close`.
//!
//! Both must stay up whatever clients do. A connection has
//! [`HEADER_READ_TIMEOUT`] to send its request and serves one request
//! (no keep-alive); at most a few hundred connections are open at once, well
//! below the file limit, so that the spool and the crash guard can always
//! open their files. When the cap is reached, a new connection takes the place
//! of the oldest one that has not finished sending its request: a flood of
//! slow clients (slowloris) churns among themselves while a probe that sends
//! its request at once is served.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::health::Health;
use crate::poison::breaker::{Breakers, Hold};

/// A healthy process answers every few seconds; a minute of silence means it is stuck.
const LIVENESS_WINDOW: Duration = Duration::from_secs(60);
/// How long a client may take to send its request line and headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a connection may live, whatever it does.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long the readiness probe waits for PostgreSQL before saying it is not ready.
const READINESS_PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections open at once, per listener, at most.
const MAX_CONNECTIONS: usize = 256;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    pool: Option<deadpool_postgres::Pool>,
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    breakers: Arc<Breakers>,
    /// Presented as `Authorization: Bearer <token>`, when configured.
    token: Option<Arc<str>>,
    /// How long a close holds by default.
    default_hold: Duration,
}

/// The operator's endpoints and what guards them.
pub struct Admin {
    pub addr: SocketAddr,
    pub breakers: Arc<Breakers>,
    pub token: Option<String>,
    pub default_hold: Duration,
}

/// Binds the metrics and health listener and serves until `stop`; returns the
/// bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    pool: Option<deadpool_postgres::Pool>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let state = AppState {
        metrics,
        health,
        pool,
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let bound = listen(addr, "--metrics-addr", app, stop).await?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

/// Binds the admin listener and serves until `stop`; returns the bound address.
pub async fn serve_admin(
    admin: Admin,
    health: Arc<Health>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let state = AdminState {
        health,
        breakers: admin.breakers,
        token: admin.token.map(Arc::from),
        default_hold: admin.default_hold,
    };
    let app = Router::new()
        .route("/breaker/close", post(close_breakers))
        .with_state(state);
    let bound = listen(admin.addr, "--admin-addr", app, stop).await?;
    tracing::info!(address = %bound, "serving POST /breaker/close");
    Ok(bound)
}

async fn listen(
    addr: SocketAddr,
    setting: &str,
    app: Router,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config(setting, format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?;
    tokio::spawn(accept(listener, app, stop));
    Ok(bound)
}

/// One open connection, as the cap sees it.
struct Open {
    since: Instant,
    request_read: Arc<AtomicBool>,
    task: AbortHandle,
}

async fn accept(listener: TcpListener, app: Router, stop: CancellationToken) {
    let open: Arc<Mutex<Vec<Open>>> = Arc::default();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let mut list = open.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|c| !c.task.is_finished());
        if list.len() >= MAX_CONNECTIONS && !evict_slowest(&mut list) {
            // Every connection is busy with a whole request: refuse this one.
            drop(stream);
            continue;
        }
        let request_read = Arc::new(AtomicBool::new(false));
        let io = Tracked {
            io: stream,
            request_read: request_read.clone(),
            tail: [0; 3],
        };
        let task = tokio::spawn(serve_connection(io, app.clone()));
        list.push(Open {
            since: Instant::now(),
            request_read,
            task: task.abort_handle(),
        });
    }
    for c in open.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        c.task.abort();
    }
}

/// Closes the oldest connection that has not sent a whole request yet.
fn evict_slowest(list: &mut Vec<Open>) -> bool {
    let slowest = list
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.request_read.load(Ordering::Relaxed))
        .min_by_key(|(_, c)| c.since)
        .map(|(i, _)| i);
    match slowest {
        Some(i) => {
            list.swap_remove(i).task.abort();
            true
        }
        None => false,
    }
}

async fn serve_connection(io: Tracked, app: Router) {
    let service = TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    // Errors here are the client's (a reset, a timeout): nothing to report.
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
}

/// A connection's socket that notices when the request's head has arrived
/// (the blank line that ends the headers).
struct Tracked {
    io: TcpStream,
    request_read: Arc<AtomicBool>,
    /// The last bytes read, to find the end of the head across reads.
    tail: [u8; 3],
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.request_read.load(Ordering::Relaxed) {
            let mut seen: Vec<u8> = self.tail.to_vec();
            seen.extend_from_slice(&buf.filled()[before..]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                self.request_read.store(true, Ordering::Relaxed);
            }
            let keep = seen.len().saturating_sub(3);
            self.tail.copy_from_slice(&seen[keep..keep + 3]);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn render_metrics(State(s): State<AppState>) -> String {
    if let Some(pool) = &s.pool {
        crate::pg::pool::record_pool_metrics(pool);
    }
    // Prometheus scrapes only this: readiness must be current here too.
    refresh_readiness(&s).await;
    s.metrics.render()
}

/// Probes PostgreSQL and sets the ready gauge; the reasons when not ready.
async fn refresh_readiness(s: &AppState) -> Vec<String> {
    if let Some(pool) = &s.pool {
        let ping = tokio::time::timeout(READINESS_PING_TIMEOUT, crate::pg::pool::ping(pool)).await;
        s.health.set_pg_unreachable(match ping {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer within {}",
                humantime::format_duration(READINESS_PING_TIMEOUT)
            )),
        });
    }
    let reasons = s.health.not_ready_reasons();
    metrics::gauge!(crate::metric::READY).set(if reasons.is_empty() { 1.0 } else { 0.0 });
    reasons
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_live(LIVENESS_WINDOW) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stalled\n")
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    // A probe per request: readiness must follow PostgreSQL both ways.
    let reasons = refresh_readiness(&s).await;
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join(", ")),
        )
    }
}

#[derive(Debug, serde::Deserialize)]
struct CloseParams {
    /// How long to hold the breakers closed, such as `10m`.
    #[serde(rename = "for")]
    hold_for: Option<String>,
    /// How many more dead letters the hold allows.
    messages: Option<u64>,
}

/// The operator's override of the poison-rate circuit breaker: closes every
/// breaker and holds it closed (`?for=10m`, `?messages=500`; by default for
/// one cool-down), so that a flood the operator accepts drains to the DLQ.
async fn close_breakers(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(params): Query<CloseParams>,
) -> (StatusCode, String) {
    if let Err(refused) = authorize(&s, &headers) {
        return refused;
    }
    let hold_for = match params.hold_for.as_deref().map(humantime::parse_duration) {
        None => s.default_hold,
        Some(Ok(d)) => d,
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("for: {e}\n")),
    };
    let hold = Hold {
        until: Instant::now() + hold_for,
        messages: params.messages,
    };
    let closed = s.breakers.close_all(hold);
    s.health.set_breaker_open(false);
    let budget = params
        .messages
        .map_or(String::new(), |m| format!(" or {m} dead letters"));
    (
        StatusCode::OK,
        format!(
            "closed {closed} circuit breaker(s); held closed for {}{budget}\n",
            humantime::format_duration(hold_for)
        ),
    )
}

/// Refuses what a browser could send (any request with an `Origin`: a page
/// cannot forge a request without one) and, when a token is configured, a
/// request without it.
fn authorize(s: &AdminState, headers: &HeaderMap) -> std::result::Result<(), (StatusCode, String)> {
    if headers.contains_key(axum::http::header::ORIGIN) {
        return Err((
            StatusCode::FORBIDDEN,
            "refused: admin requests do not come from browsers\n".to_string(),
        ));
    }
    let Some(token) = &s.token else {
        return Ok(());
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        _ => Err((
            StatusCode::UNAUTHORIZED,
            "refused: send the admin token as Authorization: Bearer <token>\n".to_string(),
        )),
    }
}
