//! `spansink run`: the production consumer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::batch::BatchLimits;
use crate::config::RunArgs;
use crate::error::{Class, Result};
use crate::health::Health;
use crate::partition::WorkerSettings;
use crate::pg;
use crate::pg::partitions::Partitions;
use crate::pg::write::Writer;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::retry::Backoff;

/// How often the days ahead are made sure to have partitions.
const PARTITION_MAINTENANCE: Duration = Duration::from_secs(3600);

pub async fn run(
    args: &RunArgs,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<()> {
    args.validate()?;
    let pool = pg::pool::connect(&args.db).await?;
    let health = Arc::new(Health::new());
    // The listener outlives the pipeline's drain, so that probes keep answering.
    let listener_stop = CancellationToken::new();
    crate::http::serve(
        args.metrics_addr,
        metrics,
        health.clone(),
        Some(pool.clone()),
        listener_stop.clone(),
    )
    .await?;

    if !args.no_migrate {
        let ahead = args.db.partitions_ahead_days;
        retry_transient("migrations", &args.ingest, &shutdown, || {
            crate::cmd::migrate::apply(&pool, ahead)
        })
        .await?;
    }
    let partitions = Arc::new(Partitions::new());
    tokio::spawn(maintain_partitions(
        pool.clone(),
        partitions.clone(),
        args.db.partitions_ahead_days,
        shutdown.clone(),
    ));

    let writer = Arc::new(Writer::new(
        pool.clone(),
        partitions,
        args.fault_panic_span_name.clone(),
    ));
    let ingest = &args.ingest;
    let settings = WorkerSettings {
        group: ingest.group_id.clone(),
        tenant_header: ingest.tenant_header.clone(),
        default_tenant: ingest.default_tenant.clone(),
        limits: ingest.limits(),
        batch: BatchLimits {
            max_messages: ingest.batch_max_messages,
            max_bytes: ingest.batch_max_bytes,
            linger: ingest.batch_linger,
        },
        retry_initial: ingest.retry_initial,
        retry_max: ingest.retry_max,
    };
    let topics: HashMap<String, _> = ingest
        .traces_topics
        .iter()
        .map(|t| (t.name.clone(), t.encoding))
        .collect();
    let pipeline = Pipeline::new(PipelineConfig {
        settings,
        topics,
        pool,
        writer,
        inflight_budget_bytes: ingest.max_inflight_bytes / 2,
        health,
        shutdown: shutdown.clone(),
        drain_timeout: args.drain_timeout,
    });
    let result = pipeline.run(&args.kafka, &ingest.group_id).await;
    listener_stop.cancel();
    result
}

/// Runs `op` until it succeeds, backing off on transient failures.
async fn retry_transient<F, Fut>(
    what: &str,
    ingest: &crate::config::IngestArgs,
    stop: &CancellationToken,
    mut op: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut backoff = Backoff::new(ingest.retry_initial, ingest.retry_max);
    loop {
        match op().await {
            Ok(()) => return Ok(()),
            Err(e) if e.class() == Class::Transient => {
                metrics::counter!(crate::metrics::TRANSIENT_RETRIES, "kind" => e.transient_kind())
                    .increment(1);
                tracing::warn!(error = %e, what, "transient failure; retrying");
                backoff.wait(stop).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn maintain_partitions(
    pool: deadpool_postgres::Pool,
    partitions: Arc<Partitions>,
    ahead: u32,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PARTITION_MAINTENANCE);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = partitions.ensure_ahead(&pool, pg::partitions::today(), ahead).await {
                    // On-demand creation still covers every batch; this only runs ahead.
                    tracing::warn!(error = %e, "cannot create upcoming partitions");
                }
            }
        }
    }
}
