//! `spansink bench`: the whole pipeline measured end to end beside what
//! PostgreSQL alone can take, on the same rows, in one run.
//!
//! Each round, for one partition count: a fresh database made from a template
//! (migrated, and pre-filled with `--prefill` spans), a broker in its own
//! process (librdkafka's mock cluster, or `--brokers`), the bench's messages
//! (generated and encoded before anything is timed), and `spansink run` in a
//! process of its own with default settings. It is timed from its start until
//! PostgreSQL holds every partition's last offset, and every span produced
//! must be stored, or the round reports nothing. Then the same rows, decoded
//! beforehand, are written by bare COPY on as many connections (the
//! ceilings, see [`ceiling`]), each into a fresh database of the same kind.

mod broker;
mod ceiling;
mod db;
mod measure;
mod pipeline;
mod prefill;
mod report;
mod traffic;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;

pub use broker::{serve as serve_mock_broker, MockBrokerArgs};
pub use report::{Figures, Round};

use crate::config::{DbArgs, Encoding};
use crate::decode::Limits;
use crate::error::{Error, Result};
use crate::model::Decoded;
use broker::Broker;
use ceiling::{Batch, Traces};
use traffic::Traffic;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The PostgreSQL server to measure: each round creates (and drops) its
    /// own databases there.
    #[command(flatten)]
    pub db: DbArgs,
    /// Spans to produce and store in each round.
    #[arg(long, env = "SPANSINK_BENCH_SPANS", default_value_t = 1_000_000)]
    pub spans: usize,
    /// Spans per Kafka message.
    #[arg(long, env = "SPANSINK_BENCH_SPANS_PER_MESSAGE", default_value_t = 100)]
    pub spans_per_message: usize,
    /// Partition counts, one round each.
    #[arg(
        long,
        env = "SPANSINK_BENCH_PARTITIONS",
        value_delimiter = ',',
        default_value = "16"
    )]
    pub partitions: Vec<i32>,
    /// Spans already in the table before each round.
    #[arg(long, env = "SPANSINK_BENCH_PREFILL", default_value_t = 0)]
    pub prefill: u64,
    /// Rounds per partition count. A shared machine's speed drifts from one
    /// minute to the next, and a round's ratio with it; the summary gives
    /// each partition count's medians and the ratios' ranges.
    #[arg(long, env = "SPANSINK_BENCH_ROUNDS", default_value_t = 3)]
    pub rounds: usize,
    /// Encoding of the produced messages.
    #[arg(long, env = "SPANSINK_BENCH_ENCODING", value_parser = crate::config::parse_encoding, default_value = "otlp_proto")]
    pub encoding: Encoding,
    /// A broker to use instead of the mock cluster; everything is produced
    /// before the clock starts.
    #[arg(long, env = "SPANSINK_BENCH_BROKERS")]
    pub brokers: Option<String>,
    /// A flag for `spansink run` (repeat it for more), e.g. `--run-arg=--pg-pool-size=8`.
    #[arg(
        long = "run-arg",
        env = "SPANSINK_BENCH_RUN_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub run_args: Vec<String>,
    /// Give up on a round after this long.
    #[arg(long, env = "SPANSINK_BENCH_TIMEOUT", value_parser = crate::config::parse_duration, default_value = "15m")]
    pub timeout: Duration,
    /// Seed of the generated traffic.
    #[arg(long, env = "SPANSINK_BENCH_SEED", default_value_t = 42)]
    pub seed: u64,
}

pub async fn run(args: &BenchArgs) -> Result<String> {
    validate(args)?;
    let server = db::Server::connect(&args.db.url()).await?;
    let limits = crate::config::run_defaults()?.ingest.limits();
    let (spans, per_message, encoding, seed) =
        (args.spans, args.spans_per_message, args.encoding, args.seed);
    let traffic = crate::blocking::run("generating the bench traffic", move || {
        Traffic::generate(spans, per_message, encoding, seed)
    })
    .await?;
    eprintln!(
        "bench: {} spans in {} messages ({:.0} MB), encoded",
        traffic.spans,
        traffic.messages.len(),
        traffic.bytes as f64 / 1e6
    );
    let traffic = Arc::new(traffic);
    let decoded = decode_all(&traffic, &limits).await?;
    let template = format!("spansink_bench_{:08x}", rand::random::<u32>());
    prefill::template(&server, &template, args.prefill, &limits).await?;
    let mut rounds = Vec::new();
    let outcome = async {
        for &partitions in &args.partitions {
            for _ in 0..args.rounds {
                let round = round(args, &server, &template, &traffic, &decoded, partitions).await?;
                eprintln!("{}", report::table(std::slice::from_ref(&round)));
                rounds.push(round);
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    server.drop_database(&template).await?;
    outcome?;
    Ok(format!(
        "{}\n{}",
        report::table(&rounds),
        report::summary(&rounds)
    ))
}

fn validate(args: &BenchArgs) -> Result<()> {
    if args.spans == 0 {
        return Err(Error::config("--spans", "must be at least 1"));
    }
    if args.rounds == 0 {
        return Err(Error::config("--rounds", "must be at least 1"));
    }
    if args.partitions.is_empty() || args.partitions.iter().any(|p| *p < 1) {
        return Err(Error::config(
            "--partitions",
            "each count must be at least 1",
        ));
    }
    args.db.validate()
}

/// Every message decoded as the pipeline decodes it, for the ceilings.
async fn decode_all(traffic: &Arc<Traffic>, limits: &Limits) -> Result<Arc<Vec<Decoded>>> {
    let (traffic, limits) = (Arc::clone(traffic), limits.clone());
    crate::blocking::run("decoding the bench traffic", move || {
        let now = SystemTime::now();
        traffic
            .messages
            .iter()
            .map(|m| {
                crate::decode::decode_traces(&m.payload, traffic.encoding, &m.tenant, &limits, now)
            })
            .collect::<Result<Vec<_>>>()
            .map(Arc::new)
    })
    .await
}

async fn round(
    args: &BenchArgs,
    server: &db::Server,
    template: &str,
    traffic: &Traffic,
    decoded: &Arc<Vec<Decoded>>,
    partitions: i32,
) -> Result<Round> {
    let topic = format!(
        "bench-{partitions}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    );
    let broker = match &args.brokers {
        None => Broker::spawn(&topic, partitions)?,
        Some(bootstrap) => {
            let config = crate::cmd::loadgen::producer_config(bootstrap);
            crate::cmd::loadgen::ensure_topic(&config, &topic, partitions).await?;
            Broker::External {
                bootstrap: bootstrap.clone(),
            }
        }
    };
    let name = format!("{template}_p{partitions}");
    let url = server.create(&name, Some(template)).await?;
    let measured = pipeline::Pipeline {
        traffic,
        broker: &broker,
        topic: &topic,
        partitions,
        database: &name,
        url: &url,
        run_args: &args.run_args,
        timeout: args.timeout,
    }
    .measure()
    .await;
    drop(broker);
    server.drop_database(&name).await?;
    let pipeline = measured?;
    let connections = pipeline.connections.max(1);
    // The ceilings commit as often as the pipeline did: the same rows per
    // transaction, so that only the work per row differs.
    let per_batch = traffic
        .messages
        .len()
        .div_ceil(usize::try_from(pipeline.transactions).unwrap_or(1).max(1));
    let mut ceilings = Vec::new();
    for traces in [Traces::Upsert, Traces::Copy] {
        let name = format!("{template}_p{partitions}_{}", traces.suffix());
        let url = server.create(&name, Some(template)).await?;
        let batches = batches(traffic, decoded, partitions, per_batch);
        let measured = ceiling::measure(&url, batches, connections, traces).await;
        server.drop_database(&name).await?;
        ceilings.push(measured?);
    }
    let (Some(copy), Some(upsert)) = (ceilings.pop(), ceilings.pop()) else {
        return Err(Error::Internal("a ceiling is missing".into()));
    };
    Ok(Round {
        partitions,
        prefill: args.prefill,
        pipeline,
        upsert,
        copy,
    })
}

/// Each partition's messages in batches of `per_batch`, partitions taking
/// turns, as concurrent workers would reach them.
fn batches(
    traffic: &Traffic,
    decoded: &[Decoded],
    partitions: i32,
    per_batch: usize,
) -> Vec<Batch> {
    let mut queues: Vec<Vec<Batch>> = traffic
        .by_partition(partitions)
        .iter()
        .map(|indexes| {
            indexes
                .chunks(per_batch.max(1))
                .map(|chunk| Batch::of(chunk.iter().map(|&i| decoded[i].clone()).collect()))
                .rev()
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        out.extend(queues.iter_mut().filter_map(Vec::pop));
    }
    out
}

impl Traces {
    fn suffix(self) -> &'static str {
        match self {
            Traces::Upsert => "upsert",
            Traces::Copy => "copy",
        }
    }
}
