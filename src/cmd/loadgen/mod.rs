//! `spansink loadgen`: produces realistic OTLP trace traffic to Kafka.
//!
//! Every message is confirmed by the broker before the run reports success, and
//! the producer is idempotent, so the report's span count is exactly what the
//! topic received: a run can be checked against what spansink stored.
//!
//! The topic's setup is in `topic`, the producing loop in `produce`, its rate
//! limiter in `pacer` and what a run reports in `report`.

mod pacer;
mod produce;
mod report;
mod topic;

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

use crate::config::{parse_kafka_setting, Encoding, KafkaSetting};
use crate::error::{Error, Result};
use crate::kafka::{Client, Settings};
use crate::loadgen::{Generator, TenantMix, TrafficSpec};

use produce::validate_produce;

pub use produce::{encode, produce};
pub use report::LoadgenReport;
pub use topic::ensure_topic;

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
}
