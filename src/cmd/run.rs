//! `spansink run`: the production consumer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
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
use crate::poison::breaker::{BreakerConfig, Breakers};
use crate::poison::crashguard::CrashGuard;
use crate::poison::dlq::{DlqConfig, DlqPublisher};
use crate::poison::drain::Drainer;
use crate::poison::spool::{Spool, SpoolConfig};
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
    let poison = &args.poison;
    // Opening the spool reads every entry back and quarantines torn ones.
    let spool = Arc::new(Spool::open(SpoolConfig {
        dir: poison.spool_dir.clone(),
        max_entries: poison.spool_max_entries,
        max_bytes: poison.spool_max_bytes,
    })?);
    // One per process: it tells its own retries from a dead process's leftovers.
    let crash_guard = Arc::new(CrashGuard::open(&poison.spool_dir, poison.crash_threshold)?);
    let breakers = Arc::new(Breakers::new(BreakerConfig {
        threshold: poison.breaker_threshold,
        window: poison.breaker_window,
        min_messages: poison.breaker_min_messages,
        cooldown: poison.breaker_cooldown,
    }));
    // The listener outlives the pipeline's drain, so that probes keep answering.
    let listener_stop = CancellationToken::new();
    crate::http::serve(
        args.metrics_addr,
        metrics,
        health.clone(),
        Some(pool.clone()),
        Some(breakers.clone()),
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
    // Entries whose PostgreSQL commit never happened are superseded: their
    // messages will be consumed, and dead-lettered, again.
    let publisher = Arc::new(DlqPublisher::new(&DlqConfig {
        topic: poison.dlq_topic.clone(),
        brokers: args.kafka.brokers.clone(),
        kafka: args.kafka.kafka.clone(),
        instance: args.instance_id.clone(),
        message_timeout: poison.dlq_message_timeout,
    })?);
    let drainer = Arc::new(Drainer::new(spool.clone(), publisher, pool.clone()));
    retry_transient("spool check", &args.ingest, &shutdown, || async {
        drainer.discard_superseded().await.map(|_| ())
    })
    .await?;
    let dlq_wake = Arc::new(Notify::new());
    let drainer_stop = CancellationToken::new();
    let drainer_task = tokio::spawn(drainer.clone().run(dlq_wake.clone(), drainer_stop.clone()));

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
        fault_abort_marker: args.fault_abort_marker.clone(),
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
        spool,
        crash_guard,
        breakers,
        instance: args.instance_id.clone(),
        dlq_wake,
    });
    let result = pipeline.run(&args.kafka, &ingest.group_id).await;
    // Whatever the pipeline committed last may still be published.
    drainer_stop.cancel();
    if drainer_task.await.is_err() {
        tracing::warn!("the DLQ drainer panicked");
    }
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
