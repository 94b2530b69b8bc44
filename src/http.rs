//! The HTTP listener: `/metrics`, `/healthz`, `/readyz`, and the operator's
//! `POST /breaker/close`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::health::Health;
use crate::poison::breaker::Breakers;

/// The main loop turns every second; a minute of silence means it is stuck.
const LIVENESS_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    pool: Option<deadpool_postgres::Pool>,
    breakers: Option<Arc<Breakers>>,
}

/// Binds the listener and serves until `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    pool: Option<deadpool_postgres::Pool>,
    breakers: Option<Arc<Breakers>>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let state = AppState {
        metrics,
        health,
        pool,
        breakers,
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/breaker/close", post(close_breakers))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config("--metrics-addr", format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("metrics listener address", e))?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
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
async fn refresh_readiness(s: &AppState) -> Vec<&'static str> {
    if let Some(pool) = &s.pool {
        let down = crate::pg::pool::ping(pool).await.is_err();
        s.health.set_pg_down(down);
    }
    let reasons = s.health.not_ready_reasons();
    metrics::gauge!(crate::metrics::READY).set(if reasons.is_empty() { 1.0 } else { 0.0 });
    reasons
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_live(LIVENESS_WINDOW) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n")
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

/// The operator's override of the poison-rate circuit breaker.
async fn close_breakers(State(s): State<AppState>) -> (StatusCode, String) {
    match &s.breakers {
        Some(b) => {
            let closed = b.close_all();
            s.health.set_breaker_open(false);
            (
                StatusCode::OK,
                format!("closed {closed} circuit breaker(s)\n"),
            )
        }
        None => (
            StatusCode::NOT_FOUND,
            "no circuit breaker here\n".to_string(),
        ),
    }
}
