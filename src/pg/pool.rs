//! The connection pool and its per-connection setup.

use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::CancelToken;

use crate::error::{Error, Result};
use crate::metric;
use crate::pg::tls;

const PING: &str = include_str!("../../sql/ping.sql");
const SESSION_SETUP: &str = include_str!("../../sql/session_setup.sql");
const STAGE_CREATE: &str = include_str!("../../sql/stage_create.sql");

/// Reported in `pg_stat_activity`, so that operators can tell our sessions apart.
const APPLICATION_NAME: &str = "spansink";

/// How to reach PostgreSQL.
#[derive(Clone)]
pub struct Settings {
    /// May hold a password: never printed.
    pub url: String,
    pub pool_size: usize,
    /// How long a checkout waits for a connection, and a connection to open.
    pub pool_timeout: std::time::Duration,
    /// The sessions' `statement_timeout`; zero disables it.
    pub statement_timeout: std::time::Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &"***")
            .field("pool_size", &self.pool_size)
            .field("pool_timeout", &self.pool_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// Builds the pool. A malformed URL fails here (fatal); connections open on
/// first use, so that a server that is down at start is a transient failure
/// of the first query, retried like any other, rather than an exit.
pub async fn connect(db: &Settings) -> Result<Pool> {
    build(db)
}

/// Cancels the statement a connection's server session is running, the way
/// the pool connects (a separate connection to the server, as PostgreSQL's
/// cancel protocol works, with the pool's TLS settings).
#[derive(Clone)]
pub struct Canceller {
    tls: tls::Connector,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller").finish_non_exhaustive()
    }
}

impl Canceller {
    /// Connects as the pool of `db` does.
    pub fn new(db: &Settings) -> Result<Self> {
        Ok(Canceller {
            tls: tls::parse(&db.url)?.tls,
        })
    }

    /// Fire and forget: a cancel that fails (the server session already
    /// ended, say) leaves nothing to do.
    pub fn cancel(&self, token: CancelToken) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tls = self.tls.clone();
            runtime.spawn(async move {
                if let Err(e) = token.cancel_query(tls).await {
                    tracing::debug!(error = %e, "cancel request failed");
                }
            });
        }
    }
}

/// Publishes the pool's state as gauges; called when metrics are scraped.
pub fn record_pool_metrics(pool: &Pool) {
    let status = pool.status();
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!(metric::PG_POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(metric::PG_POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
    metrics::gauge!(metric::PG_POOL_WAITING).set(status.waiting as f64);
}

/// Readiness: a pooled connection answers a query.
pub async fn ping(pool: &Pool) -> Result<()> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(PING).await?;
    client.query_one(&stmt, &[]).await?;
    Ok(())
}

fn build(db: &Settings) -> Result<Pool> {
    let tls::Target {
        config: mut pg,
        tls,
        ..
    } = tls::parse(&db.url)?;
    // An application_name or connect_timeout in the URL wins over ours.
    if pg.get_application_name().is_none() {
        pg.application_name(APPLICATION_NAME);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(db.pool_timeout);
    }
    // Fast recycling trusts `is_closed()`: the writer never returns a
    // connection whose transaction state is unknown (see `write`), so a
    // check query per checkout would buy nothing.
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let statement_timeout = format!("{}ms", db.statement_timeout.as_millis());
    Pool::builder(manager)
        .max_size(db.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(db.pool_timeout))
        .create_timeout(Some(db.pool_timeout))
        .recycle_timeout(Some(db.pool_timeout))
        .post_create(Hook::async_fn(move |client, _| {
            let statement_timeout = statement_timeout.clone();
            Box::pin(async move {
                setup_session(client, &statement_timeout)
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        // The only build error is timeouts without a runtime, set above.
        .map_err(|e| Error::config("--pg-pool-timeout", e.to_string()))
}

/// Runs once per new connection: session settings, then the staging tables.
async fn setup_session(
    client: &mut ClientWrapper,
    statement_timeout: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    client
        .query_one(SESSION_SETUP, &[&statement_timeout])
        .await?;
    create_staging(client).await
}

/// Creates this session's staging tables if the schema exists and they do not.
/// Safe to run again at any time outside a failed transaction.
pub(crate) async fn create_staging(
    client: &tokio_postgres::Client,
) -> std::result::Result<(), tokio_postgres::Error> {
    client.batch_execute(STAGE_CREATE).await
}

/// A pooled connection inside a transaction. Unless released after an
/// acknowledged COMMIT or ROLLBACK, dropping it (a panic, a cancelled future
/// such as a worker aborted after a lost assignment, an unknown outcome)
/// cancels the statement the server may still be running, takes the
/// connection out of the pool and closes it, so that the server aborts
/// whatever was in flight and no later batch inherits a half-done
/// transaction or COPY. The cancel is a courtesy that frees locks sooner:
/// correctness rests on the offset fence, since a COMMIT already sent cannot
/// be called back.
pub(crate) struct TxConnection {
    client: Option<Object>,
    canceller: Canceller,
}

impl TxConnection {
    pub fn new(client: Object, canceller: Canceller) -> Self {
        TxConnection {
            client: Some(client),
            canceller,
        }
    }

    pub fn client(&mut self) -> &mut Object {
        // Only `release` and `drop` take the client, and both consume self.
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("TxConnection used after release"))
    }

    /// Returns the connection to the pool.
    pub fn release(mut self) {
        drop(self.client.take());
    }
}

impl Drop for TxConnection {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            tracing::warn!("closing a connection whose transaction did not finish cleanly");
            self.canceller.cancel(client.cancel_token());
            // Detached from the pool, the client closes its socket when dropped.
            drop(Object::take(client));
        }
    }
}
