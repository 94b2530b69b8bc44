//! `spansink run`: the production consumer, assembled from its parts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::Consumer as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::batch::BatchLimits;
use crate::blocking;
use crate::config::{AdminAddr, RunArgs};
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::http::Admin;
use crate::kafka::consume;
use crate::kafka::lag::Lag;
use crate::kafka::rebalance::Context;
use crate::pg;
use crate::pg::partitions::Partitions;
use crate::pg::write::Writer;
use crate::poison::breaker::{BreakerConfig, Breakers};
use crate::poison::crashguard::CrashGuard;
use crate::poison::dlq::{DlqConfig, DlqPublisher};
use crate::poison::forward::Forwarder;
use crate::poison::spool::{Spool, SpoolConfig};
use crate::retry;
use crate::shutdown::Stopper;
use crate::worker::{Budget, FetchSlots, LiveWorkers, Shared, WorkerSettings};

/// How often the days ahead are made sure to have partitions.
const PARTITION_MAINTENANCE: Duration = Duration::from_secs(3600);

/// Builds the parts in the order their failures should surface: settings,
/// then Kafka clients (librdkafka checks its settings only when a client is
/// created), then PostgreSQL and the spool, then the listeners, and only
/// then anything that waits on the network.
pub async fn run(
    args: &RunArgs,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<()> {
    args.validate()?;
    crate::fault::arm(args.fault.faults());
    let stopper = Stopper::new(shutdown.clone());
    let lag = Arc::new(Lag::new(args.ingest.fetch_stuck_after));
    let health = Arc::new(Health::new());
    let kafka = Kafka::create(args, &lag, &health, &stopper)?;
    let pool = pg::pool::connect(&args.db.settings()).await?;
    let poison = PoisonPath::open(args, &shutdown)?;
    let listener_stop = CancellationToken::new();
    serve_http(args, metrics, &health, &poison, &pool, &listener_stop).await?;
    tokio::spawn(tick(
        health.clone(),
        poison.spool.clone(),
        poison.breakers.clone(),
        lag.clone(),
        listener_stop.clone(),
    ));
    prepare_database(args, &pool, &shutdown).await?;
    let forwarding = Forwarding::start(
        &poison,
        kafka.publisher.clone(),
        &pool,
        &stopper,
        args.ingest.retry_policy(),
        args.spool_drain_timeout,
    )
    .await?;
    let partitions = Arc::new(Partitions::new());
    tokio::spawn(maintain_partitions(
        pool.clone(),
        partitions.clone(),
        args.db.partitions_ahead_days,
        shutdown.clone(),
    ));
    tokio::spawn(crate::cmd::retention::schedule(
        pool.clone(),
        args.retention.clone(),
        shutdown.clone(),
    ));
    let shared = Arc::new(Shared {
        settings: worker_settings(args),
        writer: Arc::new(Writer::new(
            pool.clone(),
            partitions,
            pg::pool::Canceller::new(&args.db.settings())?,
        )),
        spool: poison.spool,
        crash_guard: poison.crash_guard,
        breakers: poison.breakers,
        budget: Budget::new(args.ingest.batch_budget()),
        fetch_slots: FetchSlots::new(args.ingest.prefetch().slots),
        lag: lag.clone(),
        health: health.clone(),
        instance: args.instance_id.clone(),
        dlq_wake: forwarding.wake.clone(),
        stopper: stopper.clone(),
        live: LiveWorkers::default(),
    });
    let consumed = consume_until_stopped(args, &stopper, kafka, shared, pool).await;
    // Whatever was committed last may still be published.
    forwarding.stop().await;
    listener_stop.cancel();
    consumed?;
    match stopper.take_fatal() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The consumer, the events its rebalance callback sends, and the DLQ producer.
struct Kafka {
    consumer: Arc<consume::Consumer>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<crate::kafka::rebalance::RebalanceEvent>,
    publisher: Arc<DlqPublisher>,
}

impl Kafka {
    fn create(
        args: &RunArgs,
        lag: &Arc<Lag>,
        health: &Arc<Health>,
        stopper: &Stopper,
    ) -> Result<Self> {
        let ingest = &args.ingest;
        let (events, inbox) = tokio::sync::mpsc::unbounded_channel();
        let config = consume::consumer_config(
            &args.kafka.settings(),
            &ingest.group_id,
            &ingest.prefetch(),
            ingest.max_message_bytes,
        );
        let context = Context::new(events, lag.clone(), health.clone(), stopper.clone());
        let consumer = consume::create(&config, context)?;
        let publisher = Arc::new(DlqPublisher::new(&DlqConfig {
            topic: args.poison.dlq_topic.clone(),
            client: args.kafka.settings(),
            instance: args.instance_id.clone(),
            message_timeout: args.poison.dlq_message_timeout,
        })?);
        Ok(Kafka {
            consumer,
            inbox,
            publisher,
        })
    }
}

/// What a poison message goes through on its way to the DLQ.
struct PoisonPath {
    spool: Arc<Spool>,
    crash_guard: Arc<CrashGuard>,
    breakers: Arc<Breakers>,
}

impl PoisonPath {
    fn open(args: &RunArgs, shutdown: &CancellationToken) -> Result<Self> {
        let poison = &args.poison;
        // Opening the spool locks its directory and reads every entry back,
        // quarantining torn ones.
        let spool = Arc::new(Spool::open(SpoolConfig {
            dir: poison.spool_dir.clone(),
            max_entries: poison.spool_max_entries,
            max_bytes: poison.spool_max_bytes,
        })?);
        // One per process: it tells its own retries from a dead process's leftovers.
        let crash_guard = Arc::new(CrashGuard::open(&poison.spool_dir, poison.crash_threshold)?);
        tokio::spawn(record_stopping(crash_guard.clone(), shutdown.clone()));
        let breakers = Arc::new(Breakers::new(BreakerConfig {
            threshold: poison.breaker_threshold,
            window: poison.breaker_window,
            min_messages: poison.breaker_min_messages,
            cooldown: poison.breaker_cooldown,
        }));
        Ok(PoisonPath {
            spool,
            crash_guard,
            breakers,
        })
    }
}

/// The probe and metrics listener, and the operator's. They outlive the
/// drain, so that probes keep answering until the process exits.
async fn serve_http(
    args: &RunArgs,
    metrics: PrometheusHandle,
    health: &Arc<Health>,
    poison: &PoisonPath,
    pool: &deadpool_postgres::Pool,
    stop: &CancellationToken,
) -> Result<()> {
    crate::http::serve(
        args.metrics_addr,
        metrics,
        health.clone(),
        Some(pool.clone()),
        stop.clone(),
    )
    .await?;
    if let AdminAddr(Some(addr)) = args.admin_addr {
        let admin = Admin {
            addr,
            breakers: poison.breakers.clone(),
            token: args.admin_token()?,
            default_hold: args.poison.breaker_cooldown,
        };
        crate::http::serve_admin(admin, health.clone(), stop.clone()).await?;
    }
    Ok(())
}

/// Migrations, unless the operator applies them: retried while PostgreSQL
/// cannot be reached.
async fn prepare_database(
    args: &RunArgs,
    pool: &deadpool_postgres::Pool,
    shutdown: &CancellationToken,
) -> Result<()> {
    if args.no_migrate {
        return Ok(());
    }
    let ahead = args.db.partitions_ahead_days;
    retry::until_ok(
        "applying migrations",
        shutdown,
        args.ingest.retry_policy(),
        |_| crate::cmd::migrate::apply(pool, ahead),
    )
    .await
}

/// The dead-letter forwarder, running beside the partition workers.
struct Forwarding {
    /// Poked by a worker after a commit that dead-lettered something.
    wake: Arc<Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarding {
    async fn start(
        poison: &PoisonPath,
        publisher: Arc<DlqPublisher>,
        pool: &deadpool_postgres::Pool,
        stopper: &Stopper,
        retry: retry::Policy,
        final_pass: Duration,
    ) -> Result<Self> {
        let forwarder = Arc::new(Forwarder::new(
            poison.spool.clone(),
            publisher,
            pool.clone(),
        ));
        // Before consuming, no batch of this spool is in flight: what the ledger
        // does not hold for it will never be published from here.
        retry::until_ok(
            "checking the spool against the ledger",
            stopper.token(),
            retry,
            |_| async { forwarder.recover().await.map(|_| ()) },
        )
        .await?;
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(forwarder.run(wake.clone(), stop.clone(), final_pass, stopper.clone()));
        Ok(Forwarding { wake, stop, task })
    }

    /// Cancelled once every worker has stopped, so that its last pass sees
    /// their last commits.
    async fn stop(self) {
        self.stop.cancel();
        if self.task.await.is_err() {
            tracing::warn!("the DLQ forwarder panicked");
        }
    }
}

fn worker_settings(args: &RunArgs) -> WorkerSettings {
    let ingest = &args.ingest;
    WorkerSettings {
        group: ingest.group_id.clone(),
        tenant_header: ingest.tenant_header.clone(),
        default_tenant: ingest.default_tenant.clone(),
        limits: ingest.limits(),
        batch: BatchLimits {
            max_messages: ingest.batch_max_messages,
            max_bytes: ingest.batch_max_bytes,
            linger: ingest.batch_linger,
        },
        retry: ingest.retry_policy(),
        statement_timeout: args.db.pg_statement_timeout,
    }
}

/// The consumer, its poll thread and the coordinator, until shutdown; then
/// every worker drains and the consumer leaves its group.
async fn consume_until_stopped(
    args: &RunArgs,
    stopper: &Stopper,
    kafka: Kafka,
    shared: Arc<Shared>,
    pool: deadpool_postgres::Pool,
) -> Result<()> {
    let Kafka {
        consumer, inbox, ..
    } = kafka;
    let sources = args.ingest.sources();
    let names: Vec<String> = sources.iter().map(|(n, _)| n.clone()).collect();
    let topics: HashMap<String, _> = sources.into_iter().collect();
    let (health, lag) = (shared.health.clone(), shared.lag.clone());
    let present = match consume::wait_for_topics(
        &consumer,
        &args.kafka.brokers,
        &names,
        &health,
        stopper.token(),
    )
    .await
    {
        Ok(present) => present,
        Err(Error::Shutdown) => return Ok(()),
        Err(e) => return Err(e),
    };
    subscribe(&consumer, &present, &args.ingest.group_id)?;
    let group = args.ingest.group_id.clone();
    let widen = consumer.clone();
    let watcher = tokio::spawn(consume::watch_for_topics(
        consumer.clone(),
        names,
        present,
        stopper.token().clone(),
        move |all| subscribe(&widen, all, &group),
    ));
    let poller = consume::spawn_poller(consumer.clone(), stopper.clone())
        .map_err(|e| Error::io("starting the Kafka poll thread", e))?;
    let watermarks = tokio::spawn(lag.watch_watermarks(consumer.clone(), stopper.token().clone()));
    Coordinator::new(CoordinatorConfig {
        consumer: consumer.clone(),
        events: inbox,
        shared,
        pool,
        topics,
        drain_timeout: args.drain_timeout,
        health,
        stopper: stopper.clone(),
    })
    .run()
    .await;
    let _ = watermarks.await;
    let _ = watcher.await;
    close(consumer, poller).await
}

fn subscribe(consumer: &consume::Consumer, names: &[String], group: &str) -> Result<()> {
    for topic in names {
        crate::metric::init_topic(topic);
    }
    let subscribed: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer
        .subscribe(&subscribed)
        .map_err(|e| Error::config("--traces-topic", e.to_string()))?;
    tracing::info!(topics = ?names, group, "subscribed");
    Ok(())
}

/// Every worker has ended. Closing blocks while librdkafka leaves the group,
/// and runs a last revocation through the (now gone) coordinator: off the
/// async workers, after the poll thread has let go.
async fn close(
    consumer: Arc<consume::Consumer>,
    poller: std::thread::JoinHandle<()>,
) -> Result<()> {
    blocking::run("closing the Kafka consumer", move || {
        let polled = poller.join();
        drop(consumer);
        polled.map_err(|panic| {
            Error::Internal(format!(
                "the Kafka poll thread panicked: {}",
                crate::error::panic_message(&panic)
            ))
        })
    })
    .await?;
    tracing::info!("consumer closed");
    Ok(())
}

/// Once SIGTERM (or a fatal error) starts shutdown, the crash guard records
/// it: a kill after that is the orchestrator's, not a message's.
async fn record_stopping(crash_guard: Arc<CrashGuard>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
    if let Err(e) = blocking::run("crash guard", move || crash_guard.stopping()).await {
        tracing::warn!(error = %e, "cannot record the shutdown with the crash guard");
    }
}

/// Once a second: liveness, readiness inputs, and gauges that must stay
/// truthful while nothing moves. Its own task, so that liveness never waits
/// on PostgreSQL or the broker.
async fn tick(
    health: Arc<Health>,
    spool: Arc<Spool>,
    breakers: Arc<Breakers>,
    lag: Arc<Lag>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        health.heartbeat();
        health.set_spool_full(spool.is_full());
        health.set_breaker_open(!breakers.open_topics().is_empty());
        breakers.record_metrics();
        spool.record_metrics();
        lag.publish(std::time::SystemTime::now());
        let stuck = lag.stuck();
        for ((topic, partition), offset) in &stuck {
            if let Some(held_back) = crate::logcap::allow("partition stuck") {
                tracing::error!(topic, partition, offset, held_back,
                    "no message can be fetched although the partition holds more: a message larger than the consumer may receive (receive.message.max.bytes, derived from --max-message-bytes)? Raise --max-message-bytes, or skip it by hand");
            }
        }
        health.set_stuck(
            stuck
                .into_iter()
                .map(|((topic, partition), offset)| {
                    format!("{topic}/{partition} at offset {offset}")
                })
                .collect(),
        );
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
