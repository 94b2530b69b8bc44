//! `spansink loadgen`: produces realistic OTLP trace traffic to Kafka.
//!
//! Every message is confirmed by the broker before the run reports success, and
//! the producer is idempotent, so the report's span count is exactly what the
//! topic received: a run can be checked against what spansink stored.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::metadata::Metadata;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use crate::config::{parse_kafka_setting, Encoding, KafkaSetting};
use crate::error::{Error, Result};
use crate::kafka::{Client, Settings};
use crate::loadgen::json::encode_traces_json;
use crate::loadgen::{GeneratedMessage, Generator, TenantMix, TrafficSpec};
use crate::otlp::ExportTraceServiceRequest;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "SPANSINK_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// A librdkafka producer setting passed through, such as security.protocol,
    /// sasl.* or ssl.*. Repeatable; in the environment, separate several with ';'.
    #[arg(long = "kafka", env = "SPANSINK_KAFKA", value_name = "KEY=VALUE", value_parser = parse_kafka_setting, value_delimiter = ';', hide_env_values = true)]
    pub kafka: Vec<KafkaSetting>,
    /// Topic to produce to.
    #[arg(long, env = "SPANSINK_LOADGEN_TOPIC", default_value = "otlp_spans")]
    pub topic: String,
    /// Message encoding.
    #[arg(long, env = "SPANSINK_LOADGEN_ENCODING", value_parser = crate::config::parse_encoding, default_value = "otlp_proto")]
    pub encoding: Encoding,
    /// Kafka header that carries the tenant id.
    #[arg(long, env = "SPANSINK_TENANT_HEADER", default_value = "X-Scope-OrgID")]
    pub tenant_header: String,
    /// Tenants and their weights, as TENANT[:WEIGHT],... (weight 1 if left out).
    #[arg(
        long,
        env = "SPANSINK_LOADGEN_TENANTS",
        default_value = "acme:3,globex:2,initech:1"
    )]
    pub tenants: TenantMix,
    /// Total spans to produce.
    #[arg(long, env = "SPANSINK_LOADGEN_COUNT", default_value_t = 10_000)]
    pub count: usize,
    /// Spans per second, spread evenly; 0 produces as fast as the broker accepts.
    #[arg(long, env = "SPANSINK_LOADGEN_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Spans in each Kafka message.
    #[arg(long, env = "SPANSINK_LOADGEN_SPANS_PER_MESSAGE", default_value_t = 50)]
    pub spans_per_message: usize,
    /// Partitions of the topic when loadgen creates it; an existing topic is left as it is.
    #[arg(long, env = "SPANSINK_LOADGEN_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    /// Seed of the generator; the same seed gives the same traces. Random if unset.
    #[arg(long, env = "SPANSINK_LOADGEN_SEED")]
    pub seed: Option<u64>,
    /// Tag written to every resource as loadgen.run_id. Random if unset.
    #[arg(long, env = "SPANSINK_LOADGEN_RUN_ID")]
    pub run_id: Option<String>,
    /// Share of spans with status ERROR, from 0 to 1.
    #[arg(long, env = "SPANSINK_LOADGEN_ERROR_RATIO", default_value_t = 0.02)]
    pub error_ratio: f64,
}

/// How long the topic check waits for the cluster's metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// Messages awaiting their delivery report before the producer waits for one.
const MAX_IN_FLIGHT: usize = 10_000;
/// After a stall, how far behind schedule the rate limiter lets the producer be,
/// and so the largest burst it sends to catch up.
const MAX_CATCH_UP: Duration = Duration::from_millis(50);

impl LoadgenArgs {
    pub fn validate(&self) -> Result<()> {
        Settings {
            brokers: self.brokers.clone(),
            overrides: self.kafka.clone(),
        }
        .check(Client::Loadgen)?;
        if self.partitions < 1 {
            return Err(Error::config("--partitions", "must be at least 1"));
        }
        validate_produce(&self.topic, &self.tenant_header, self.count, self.rate)?;
        self.traffic().validate()
    }

    /// The traffic to generate, with the seed and run id drawn now when unset.
    pub fn traffic(&self) -> TrafficSpec {
        let mut entropy = rand::rng();
        TrafficSpec {
            tenants: self.tenants.clone(),
            spans_per_message: self.spans_per_message,
            seed: self.seed.unwrap_or_else(|| rand::Rng::random(&mut entropy)),
            run_id: self
                .run_id
                .clone()
                .unwrap_or_else(|| hex::encode(rand::Rng::random::<[u8; 6]>(&mut entropy))),
            error_ratio: self.error_ratio,
        }
    }

    /// The idempotent producer's configuration, with `--kafka` settings applied last.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = producer_config(&self.brokers);
        for s in &self.kafka {
            config.set(&s.key, &s.value);
        }
        config
    }
}

/// An idempotent, lz4-compressing producer configuration for `brokers`.
pub fn producer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "spansink-loadgen")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Built into the bundled librdkafka; OTLP compresses about four to one.
        .set("compression.type", "lz4")
        .set("linger.ms", "5");
    config
}

/// Runs `spansink loadgen`: checks the topic, then produces `--count` spans.
pub async fn run(args: &LoadgenArgs) -> Result<LoadgenReport> {
    args.validate()?;
    let traffic = args.traffic();
    tracing::info!(
        run_id = %traffic.run_id,
        seed = traffic.seed,
        topic = %args.topic,
        count = args.count,
        rate = args.rate,
        "generating traffic"
    );
    let config = args.producer_config();
    let partitions = ensure_topic(&config, &args.topic, args.partitions).await?;
    let producer: FutureProducer = config.create()?;
    let mut generator = Generator::new(traffic);
    produce(
        &producer,
        &args.topic,
        args.encoding,
        &args.tenant_header,
        &mut generator,
        args.count,
        args.rate,
        Some(partitions),
    )
    .await
}

/// Makes sure `topic` exists, creating it with `partitions` partitions (and the
/// broker's default replication) if not. Returns the topic's partition count.
pub async fn ensure_topic(config: &ClientConfig, topic: &str, partitions: i32) -> Result<i32> {
    let mut config = config.clone();
    // Otherwise the metadata request itself may create the topic, with the
    // broker's default partition count instead of ours.
    config.set("allow.auto.create.topics", "false");
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(config.create()?);
    if let Some(existing) = partition_count(&admin, topic).await? {
        if existing != partitions {
            tracing::info!(
                topic,
                existing,
                requested = partitions,
                "the topic exists; keeping its partition count"
            );
        }
        return Ok(existing);
    }
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new()
        .operation_timeout(Some(METADATA_TIMEOUT))
        .request_timeout(Some(2 * METADATA_TIMEOUT));
    for result in admin.create_topics([&new_topic], &options).await? {
        match result {
            // Another producer created it first: as good.
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(Error::Kafka(KafkaError::AdminOp(code))),
        }
    }
    tracing::info!(topic, partitions, "created the topic");
    Ok(partitions)
}

/// The topic's partition count, or `None` if the cluster does not know it.
async fn partition_count(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<i32>> {
    let (admin, name) = (Arc::clone(admin), topic.to_string());
    // librdkafka's metadata call blocks its thread.
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await
    .map_err(join_error)??;
    topic_partitions(&metadata, topic)
}

fn topic_partitions(metadata: &Metadata, topic: &str) -> Result<Option<i32>> {
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(
            i32::try_from(found.partitions().len()).unwrap_or(i32::MAX),
        )),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        Some(code) => Err(Error::Kafka(KafkaError::MetadataFetch(code))),
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    match e.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        // Only a runtime that shuts down cancels a blocking task.
        Err(_) => Error::Shutdown,
    }
}

/// Checks the arguments of [`produce`]; errors name the command-line flag.
fn validate_produce(topic: &str, tenant_header: &str, count: usize, rate: f64) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::config("--topic", "is empty"));
    }
    if tenant_header.trim().is_empty() {
        return Err(Error::config("--tenant-header", "is empty"));
    }
    if count == 0 {
        return Err(Error::config("--count", "must be at least 1"));
    }
    if !rate.is_finite() || rate < 0.0 {
        return Err(Error::config("--rate", "must be 0 or a positive number"));
    }
    Ok(())
}

/// What a run produced. Every message counted here was acknowledged by the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadgenReport {
    pub messages: usize,
    pub spans: usize,
    /// Payload bytes before compression.
    pub bytes: u64,
    pub elapsed: Duration,
    pub run_id: String,
}

impl LoadgenReport {
    pub fn spans_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.spans as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for LoadgenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run {}: {} spans in {} messages ({:.1} MiB) in {:.2}s, {:.0} spans/s",
            self.run_id,
            self.spans,
            self.messages,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.elapsed.as_secs_f64(),
            self.spans_per_second(),
        )
    }
}

/// Produces `count` spans from `generator` to `topic`, `rate` spans per second
/// (0: as fast as the broker accepts), and waits until the broker has
/// acknowledged every message. A failed delivery fails the run.
///
/// `partitions` is the partition count the caller made the topic with (see
/// [`ensure_topic`]); it is checked against the cluster before the first message,
/// so that a run against a topic of another shape is noticed in the log.
// The argument list is the interface `spansink demo` shares with this command.
#[allow(clippy::too_many_arguments)]
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    encoding: Encoding,
    tenant_header: &str,
    generator: &mut Generator,
    count: usize,
    rate: f64,
    partitions: Option<i32>,
) -> Result<LoadgenReport> {
    validate_produce(topic, tenant_header, count, rate)?;
    if let Some(expected) = partitions {
        check_partitions(producer, topic, expected).await?;
    }
    let target = Target {
        topic,
        tenant_header,
    };
    let started = Instant::now();
    let mut pacer = Pacer::new(rate, started);
    let mut in_flight = FuturesUnordered::new();
    let mut report = LoadgenReport {
        messages: 0,
        spans: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        run_id: generator.spec().run_id.clone(),
    };
    let mut left = count;
    while left > 0 {
        let spans = left.min(generator.spec().spans_per_message);
        if let Some(at) = pacer.reserve(Instant::now(), spans) {
            tokio::time::sleep_until(at.into()).await;
        }
        let message = generator.next_message_of(spans, SystemTime::now());
        let payload = encode(encoding, &message.request);
        send(producer, &target, &message, &payload, &mut in_flight).await?;
        left -= message.span_count;
        report.messages += 1;
        report.spans += message.span_count;
        report.bytes += payload.len() as u64;
        settle_ready(&mut in_flight)?;
        if in_flight.len() >= MAX_IN_FLIGHT {
            settle_one(&mut in_flight).await?;
        } else if report.messages.is_multiple_of(64) {
            // Without a rate, nothing above waits: let the runtime's other tasks run.
            tokio::task::yield_now().await;
        }
    }
    while !in_flight.is_empty() {
        settle_one(&mut in_flight).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Encodes one request as the topic's consumers expect it.
pub fn encode(encoding: Encoding, request: &ExportTraceServiceRequest) -> Vec<u8> {
    match encoding {
        Encoding::OtlpProto => request.encode_to_vec(),
        Encoding::OtlpJson => encode_traces_json(request).into_bytes(),
    }
}

type InFlight = FuturesUnordered<DeliveryFuture>;

/// Where each message goes.
struct Target<'a> {
    topic: &'a str,
    tenant_header: &'a str,
}

/// Logs when the topic's partition count is not the one expected.
async fn check_partitions(producer: &FutureProducer, topic: &str, expected: i32) -> Result<()> {
    let (client, name) = (producer.clone(), topic.to_string());
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await
    .map_err(join_error)??;
    match topic_partitions(&metadata, topic)? {
        Some(found) if found == expected => {}
        found => tracing::warn!(
            topic,
            expected,
            found = found.unwrap_or(0),
            "the topic does not have the expected partition count"
        ),
    }
    Ok(())
}

/// Hands one message to the producer, waiting for room in its queue if it is full.
async fn send(
    producer: &FutureProducer,
    target: &Target<'_>,
    message: &GeneratedMessage,
    payload: &[u8],
    in_flight: &mut InFlight,
) -> Result<()> {
    let headers = OwnedHeaders::new().insert(Header {
        key: target.tenant_header,
        value: Some(message.tenant.as_bytes()),
    });
    let mut record = FutureRecord::to(target.topic)
        .key(&message.key)
        .payload(payload)
        .headers(headers)
        .timestamp(unix_millis(SystemTime::now()));
    loop {
        match producer.send_result(record) {
            Ok(delivery) => {
                in_flight.push(delivery);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                if in_flight.is_empty() {
                    // The queue is full of someone else's messages (a shared producer).
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    settle_one(in_flight).await?;
                }
            }
            Err((e, _)) => return Err(Error::Kafka(e)),
        }
    }
}

/// Collects the delivery reports that have already arrived.
fn settle_ready(in_flight: &mut InFlight) -> Result<()> {
    while let Some(Some(delivery)) = in_flight.next().now_or_never() {
        check_delivery(delivery)?;
    }
    Ok(())
}

/// Waits for one delivery report.
async fn settle_one(in_flight: &mut InFlight) -> Result<()> {
    match in_flight.next().await {
        Some(delivery) => check_delivery(delivery),
        None => Ok(()),
    }
}

fn check_delivery(
    delivery: std::result::Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
) -> Result<()> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(Error::Kafka(e)),
        // The producer was dropped with the message still queued.
        Err(_) => Err(Error::Kafka(KafkaError::Canceled)),
    }
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Paces messages to a rate in spans per second. Each message is due when the
/// spans before it would have gone out at an even rate, so the rate holds over
/// any stretch of time rather than per second; after a stall it catches up by
/// at most [`MAX_CATCH_UP`] worth of spans.
#[derive(Debug)]
struct Pacer {
    /// `None`: no limit.
    per_span: Option<Duration>,
    due: Instant,
}

impl Pacer {
    fn new(rate: f64, start: Instant) -> Pacer {
        let per_span = (rate > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / rate).ok())
            .flatten();
        Pacer {
            per_span,
            due: start,
        }
    }

    /// Books a message of `spans` spans; returns when to send it, `None` for now.
    fn reserve(&mut self, now: Instant, spans: usize) -> Option<Instant> {
        let per_span = self.per_span?;
        let earliest = now.checked_sub(MAX_CATCH_UP).unwrap_or(now);
        let at = self.due.max(earliest);
        let cost = per_span.saturating_mul(u32::try_from(spans).unwrap_or(u32::MAX));
        // A due time past what Instant can hold is as good as never.
        self.due = at.checked_add(cost).unwrap_or(at);
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadgenArgs,
    }

    fn parse(argv: &[&str]) -> std::result::Result<LoadgenArgs, clap::Error> {
        let mut full = vec!["loadgen"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|c| c.args)
    }

    #[test]
    fn defaults_are_valid() {
        let args = parse(&[]).unwrap();
        args.validate().unwrap();
        assert_eq!(args.topic, "otlp_spans");
        assert_eq!(args.encoding, Encoding::OtlpProto);
        assert_eq!(args.tenants.to_string(), "acme:3,globex:2,initech:1");
        assert_eq!((args.count, args.spans_per_message), (10_000, 50));
    }

    #[test]
    fn flags_parse_and_invalid_values_name_their_flag() {
        let args = parse(&[
            "--encoding",
            "otlp_json",
            "--tenants",
            "a:2,b",
            "--rate",
            "2.5",
        ])
        .unwrap();
        assert_eq!(args.encoding, Encoding::OtlpJson);
        assert_eq!(args.tenants.entries().len(), 2);
        assert!(parse(&["--tenants", "a/b"]).is_err());

        let err = parse(&["--error-ratio", "1.5"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("--error-ratio"), "{err}");
        let err = parse(&["--count", "0"]).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("--count"), "{err}");
        let err = parse(&["--rate=-1"]).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("--rate"), "{err}");
        let err = parse(&["--kafka", "acks=1"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("acks"), "{err}");
        assert_eq!(err.class(), crate::error::Class::Fatal);
    }

    #[test]
    fn kafka_settings_override_the_defaults() {
        let args = parse(&["--kafka", "compression.type=none;linger.ms=0"]).unwrap();
        let config = args.producer_config();
        assert_eq!(config.get("compression.type"), Some("none"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn seed_and_run_id_are_drawn_once_when_unset() {
        let args = parse(&["--seed", "7", "--run-id", "r1"]).unwrap();
        let t = args.traffic();
        assert_eq!((t.seed, t.run_id.as_str()), (7, "r1"));
        let random = parse(&[]).unwrap().traffic();
        assert_eq!(random.run_id.len(), 12);
    }

    #[test]
    fn the_bundled_librdkafka_has_lz4() {
        // librdkafka refuses to create a client when a listed feature is missing.
        let mut config = producer_config("127.0.0.1:1");
        config.set("builtin.features", "lz4");
        assert!(config.create::<rdkafka::producer::BaseProducer>().is_ok());
        config.set("builtin.features", "no-such-feature");
        assert!(config.create::<rdkafka::producer::BaseProducer>().is_err());
    }

    #[test]
    fn pacer_spreads_messages_evenly() {
        let t0 = Instant::now();
        // 1000 spans/s, 10 spans a message: one message every 10 ms.
        let mut p = Pacer::new(1000.0, t0);
        assert_eq!(p.reserve(t0, 10), None);
        assert_eq!(p.reserve(t0, 10), Some(t0 + Duration::from_millis(10)));
        assert_eq!(p.reserve(t0, 10), Some(t0 + Duration::from_millis(20)));
        // On time: no wait, and the next slot follows this one.
        let t30 = t0 + Duration::from_millis(30);
        assert_eq!(p.reserve(t30, 10), None);
        assert_eq!(p.reserve(t30, 10), Some(t0 + Duration::from_millis(40)));
    }

    #[test]
    fn pacer_catches_up_at_most_a_short_burst_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000.0, t0);
        p.reserve(t0, 10);
        let late = t0 + Duration::from_secs(5);
        let mut immediate = 0;
        while p.reserve(late, 10).is_none() {
            immediate += 1;
        }
        // 50 ms of catch-up at 10 ms a message, plus the one due now.
        assert_eq!(immediate, 6);
    }

    #[test]
    fn no_rate_means_no_waiting() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.0, t0);
        assert!((0..1000).all(|_| p.reserve(t0, 1000).is_none()));
    }

    #[test]
    fn report_reads_well() {
        let r = LoadgenReport {
            messages: 20,
            spans: 1000,
            bytes: 3 << 20,
            elapsed: Duration::from_millis(500),
            run_id: "abc".into(),
        };
        assert_eq!(
            r.to_string(),
            "run abc: 1000 spans in 20 messages (3.0 MiB) in 0.50s, 2000 spans/s"
        );
    }
}
