//! `spansink demo`: the first thing to run. An embedded Kafka (librdkafka's mock
//! cluster, in-process), loadgen traffic, the real pipeline into the local
//! PostgreSQL, and a summary read back from the database.

use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{DbArgs, Encoding, RunArgs};
use crate::error::{Error, Result};
use crate::kafka::mock::MockKafka;
use crate::loadgen::{Generator, TenantMix, TrafficSpec};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Spans to produce.
    #[arg(long, env = "SPANSINK_DEMO_SPANS", default_value_t = 20_000)]
    pub spans: usize,
    /// Spans per Kafka message.
    #[arg(long, env = "SPANSINK_DEMO_SPANS_PER_MESSAGE", default_value_t = 50)]
    pub spans_per_message: usize,
    /// Partitions of the demo topic.
    #[arg(long, env = "SPANSINK_DEMO_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    /// Tenants and their weights.
    #[arg(
        long,
        env = "SPANSINK_DEMO_TENANTS",
        default_value = "acme:3,globex:2,initech:1"
    )]
    pub tenants: TenantMix,
    /// Encoding of the produced messages.
    #[arg(long, env = "SPANSINK_DEMO_ENCODING", value_parser = crate::config::parse_encoding, default_value = "otlp_proto")]
    pub encoding: Encoding,
    /// Listen address for /metrics, /healthz and /readyz while the demo runs.
    #[arg(
        long,
        env = "SPANSINK_DEMO_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: std::net::SocketAddr,
    /// Give up waiting for the spans to be stored after this long.
    #[arg(long, env = "SPANSINK_DEMO_TIMEOUT", value_parser = crate::config::parse_duration, default_value = "120s")]
    pub timeout: Duration,
    /// After the summary, keep the embedded Kafka and the consumer running until Ctrl-C.
    #[arg(long, env = "SPANSINK_DEMO_KEEP_RUNNING")]
    pub keep_running: bool,
}

/// `spansink run`'s own arguments, parsed as from a command line, so that the
/// demo runs exactly the production code path with its defaults.
#[derive(Parser)]
struct EmbeddedRun {
    #[command(flatten)]
    run: RunArgs,
}

pub async fn run(
    args: &DemoArgs,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<()> {
    args.db.validate()?;
    let topic = "otlp_spans";
    let kafka = MockKafka::start(3)?;
    kafka.create_topic(topic, args.partitions)?;
    let bootstrap = kafka.bootstrap_servers().to_string();
    let run_id = format!("demo-{:08x}", rand::random::<u32>());
    announce(args, &bootstrap, topic, &run_id);

    let pool = crate::pg::pool::connect(&args.db.settings()).await?;
    crate::cmd::migrate::apply(&pool, args.db.partitions_ahead_days).await?;

    let run_args = embedded_run_args(args, &bootstrap, &run_id)?;
    let pipeline_stop = shutdown.child_token();
    let consumer = tokio::spawn({
        let stop = pipeline_stop.clone();
        async move { crate::cmd::run::run(&run_args, metrics, stop).await }
    });

    let started = Instant::now();
    let produced = produce(args, &bootstrap, topic, &run_id).await?;
    println!(
        "  produced {} spans in {} messages",
        produced.spans, produced.messages
    );

    let tenants: Vec<String> = args
        .tenants
        .entries()
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    let stored = wait_stored(
        &pool,
        &tenants,
        &run_id,
        produced.spans,
        args.timeout,
        &shutdown,
    )
    .await?;
    let complete = report(args, produced.spans, stored, started.elapsed(), &run_id);

    if args.keep_running && complete {
        println!(
            "\nstill running (metrics on http://{}/metrics); Ctrl-C to stop",
            args.metrics_addr
        );
        shutdown.cancelled().await;
    }
    pipeline_stop.cancel();
    let consumer_result = consumer
        .await
        .map_err(|e| Error::Internal(format!("the embedded consumer did not finish: {e}")))?;
    drop(kafka);
    consumer_result?;
    if complete {
        Ok(())
    } else {
        Err(Error::io(
            "demo",
            std::io::Error::other("not every produced span was stored"),
        ))
    }
}

fn announce(args: &DemoArgs, bootstrap: &str, topic: &str, run_id: &str) {
    println!("spansink demo {run_id}");
    println!(
        "  embedded Kafka: {bootstrap} (topic {topic}, {} partitions)",
        args.partitions
    );
    println!(
        "  produce your own:  kcat -b {bootstrap} -t {topic} -P -H X-Scope-OrgID=acme spans.pb   (one file, one message)"
    );
    println!("  PostgreSQL:     {}", redact(&args.db.url()));
}

/// Prints what was stored and how to look at it; whether every span was.
fn report(args: &DemoArgs, produced: usize, stored: i64, elapsed: Duration, run_id: &str) -> bool {
    println!();
    println!("spans produced:  {produced}");
    println!("spans stored:    {stored} (read back from PostgreSQL)");
    println!(
        "throughput:      {:.0} spans/s end to end ({:.2}s)",
        stored as f64 / elapsed.as_secs_f64().max(1e-3),
        elapsed.as_secs_f64()
    );
    println!("look at them:");
    println!(
        "  psql '{}' -c \"SELECT tenant_id, service_name, name, duration_ns/1e6 AS ms FROM spans WHERE resource_attributes->>'loadgen.run_id' = '{run_id}' ORDER BY start_time DESC LIMIT 20\"",
        redact(&args.db.url())
    );
    let complete = stored == produced as i64;
    if !complete {
        println!(
            "NOT COMPLETE: {} spans missing after {:?}",
            produced as i64 - stored,
            args.timeout
        );
    }
    complete
}

fn embedded_run_args(args: &DemoArgs, bootstrap: &str, run_id: &str) -> Result<RunArgs> {
    let argv = [
        "spansink".to_string(),
        format!("--brokers={bootstrap}"),
        format!("--database-url={}", args.db.url()),
        format!("--group-id=spansink-{run_id}"),
        format!("--metrics-addr={}", args.metrics_addr),
        "--no-migrate".to_string(),
        format!(
            "--spool-dir={}",
            std::env::temp_dir()
                .join(format!("spansink-{run_id}"))
                .display()
        ),
    ];
    EmbeddedRun::try_parse_from(argv)
        .map(|e| e.run)
        .map_err(|e| Error::config("demo", e.to_string()))
}

struct Produced {
    spans: usize,
    messages: usize,
}

async fn produce(args: &DemoArgs, bootstrap: &str, topic: &str, run_id: &str) -> Result<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .map_err(Error::Kafka)?;
    let spec = TrafficSpec {
        tenants: args.tenants.clone(),
        spans_per_message: args.spans_per_message,
        seed: u64::from(rand::random::<u32>()),
        run_id: run_id.to_string(),
        error_ratio: 0.05,
    };
    spec.validate()?;
    let mut generator = Generator::new(spec);
    let report = crate::cmd::loadgen::produce(
        &producer,
        topic,
        args.encoding,
        "X-Scope-OrgID",
        &mut generator,
        args.spans,
        0.0,
        Some(args.partitions),
    )
    .await?;
    Ok(Produced {
        spans: report.spans,
        messages: report.messages,
    })
}

async fn wait_stored(
    pool: &deadpool_postgres::Pool,
    tenants: &[String],
    run_id: &str,
    want: usize,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<i64> {
    let deadline = Instant::now() + timeout;
    let since = SystemTime::now() - Duration::from_secs(3600);
    let mut stored = 0;
    while Instant::now() < deadline && !stop.is_cancelled() {
        stored = count_run_spans(pool, tenants, run_id, since).await?;
        if stored >= want as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(stored)
}

async fn count_run_spans(
    pool: &deadpool_postgres::Pool,
    tenants: &[String],
    run_id: &str,
    since: SystemTime,
) -> Result<i64> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            include_str!("../../sql/demo_count_run_spans.sql"),
            &[&tenants, &run_id, &since],
        )
        .await?;
    Ok(row.get(0))
}

/// The URL without its password, for printing. A string that cannot be
/// read, or a key/value string with a password, is not shown at all.
fn redact(url: &str) -> String {
    let has_password = match crate::pg::tls::parse(url) {
        Ok(target) => target.config.get_password().is_some(),
        Err(_) => true,
    };
    if !has_password {
        return url.to_string();
    }
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    match url.split_once('@') {
        Some((head, tail)) if is_url => {
            let user = head.rsplit_once(':').map_or(head, |(u, _)| u);
            format!("{user}:***@{tail}")
        }
        _ => "*** (not shown: it holds a password)".to_string(),
    }
}
