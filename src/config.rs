//! The flags shared by the subcommands, and their conversion into each
//! layer's own settings. Every flag has `env = "SPANSINK_..."`; invalid values
//! fail at start with a message that names the setting. The command line
//! itself (`Cli`, `Command`) is in `cmd`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use crate::decode::Encoding;
use crate::error::{Error, Result};
pub use crate::kafka::Setting as KafkaSetting;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, env = "SPANSINK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in tracing's EnvFilter syntax (default: info; warn for the demo,
    /// whose summary is its output).
    #[arg(long, global = true, env = "SPANSINK_LOG")]
    pub log: Option<String>,
}

/// The database when neither `--database-url` nor `DATABASE_URL` names one.
pub const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL [default: $DATABASE_URL, else the local server].
    /// It may hold a password: its value is never printed.
    #[arg(long, env = "SPANSINK_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the PostgreSQL connection URL (a mounted secret), instead
    /// of --database-url. Leading and trailing whitespace is ignored.
    #[arg(
        long,
        env = "SPANSINK_DATABASE_URL_FILE",
        value_name = "PATH",
        value_parser = read_database_url_file,
        conflicts_with = "database_url"
    )]
    pub database_url_file: Option<Secret>,
    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "SPANSINK_PG_POOL_SIZE", default_value_t = 16)]
    pub pg_pool_size: usize,
    /// How long a batch waits for a pooled connection before that counts as a transient failure.
    #[arg(long, env = "SPANSINK_PG_POOL_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub pg_pool_timeout: Duration,
    /// statement_timeout for every spansink statement (0 disables).
    #[arg(long, env = "SPANSINK_PG_STATEMENT_TIMEOUT", value_parser = parse_duration, default_value = "120s")]
    pub pg_statement_timeout: Duration,
    /// Days of partitions created ahead of today, besides those created on demand.
    #[arg(long, env = "SPANSINK_PARTITIONS_AHEAD_DAYS", default_value_t = 2)]
    pub partitions_ahead_days: u32,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
}

/// How long stored data is kept. Off unless set.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Drop the daily partitions of spans, span_events, span_metrics and logs
    /// whose whole UTC day is older than this, and delete traces that ended
    /// before it (e.g. 30d). Off by default: nothing is ever removed.
    #[arg(long, env = "SPANSINK_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Delete dead-letter ledger rows recorded longer ago than this (at least
    /// 7d: a spool tells its dead letters apart by them). Off by default.
    #[arg(long, env = "SPANSINK_DEAD_LETTER_RETENTION", value_parser = parse_duration)]
    pub dead_letter_retention: Option<Duration>,
    /// How often `run` applies retention, when a retention is set.
    #[arg(long, env = "SPANSINK_RETENTION_INTERVAL", value_parser = parse_duration, default_value = "1h")]
    pub retention_interval: Duration,
}

impl RetentionArgs {
    pub fn validate(&self) -> Result<()> {
        if self
            .retention
            .is_some_and(|r| r < Duration::from_secs(86_400))
        {
            return Err(Error::config(
                "--retention",
                "must be at least 1d: partitions are whole days",
            ));
        }
        let floor = crate::pg::retention::MIN_DEAD_LETTER_RETENTION;
        if self.dead_letter_retention.is_some_and(|r| r < floor) {
            return Err(Error::config(
                "--dead-letter-retention",
                "must be at least 7d: spools tell their dead letters apart by the ledger",
            ));
        }
        if self.retention_interval.is_zero() {
            return Err(Error::config("--retention-interval", "must be above zero"));
        }
        Ok(())
    }

    pub fn settings(&self) -> crate::pg::retention::Settings {
        crate::pg::retention::Settings {
            horizon: self.retention,
            dead_letter_horizon: self.dead_letter_retention,
        }
    }

    pub fn enabled(&self) -> bool {
        self.retention.is_some() || self.dead_letter_retention.is_some()
    }
}

#[derive(Debug, Clone, Args)]
pub struct RetentionCmdArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// An `--encoding` or the encoding of a `NAME:ENCODING` topic.
pub fn parse_encoding(s: &str) -> std::result::Result<Encoding, String> {
    s.parse()
        .map_err(|_| format!("unknown encoding {s:?}: use otlp_proto or otlp_json"))
}

/// A topic and the encoding its producers use: `NAME` or `NAME:ENCODING`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub encoding: Encoding,
}

fn parse_topic_spec(s: &str) -> std::result::Result<TopicSpec, String> {
    // `--traces-topic ''`: no trace topics, for a logs-only deployment.
    if s.is_empty() {
        return Ok(TopicSpec {
            name: String::new(),
            encoding: Encoding::OtlpProto,
        });
    }
    let (name, encoding) = match s.rsplit_once(':') {
        Some((n, e)) => (n, parse_encoding(e)?),
        None => (s, Encoding::OtlpProto),
    };
    let valid = !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(format!("{name:?} is not a valid Kafka topic name"));
    }
    Ok(TopicSpec {
        name: name.to_string(),
        encoding,
    })
}

/// One `--kafka key=value` pass-through setting for librdkafka.
pub fn parse_kafka_setting(s: &str) -> std::result::Result<KafkaSetting, String> {
    s.parse()
}

/// A value read from a secret file: it is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn read_secret_file(path: &str) -> std::result::Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))
}

/// `--database-url-file`: the file's text, trimmed, since secret files
/// usually end with a newline.
fn read_database_url_file(path: &str) -> std::result::Result<Secret, String> {
    let text = read_secret_file(path)?;
    let url = text.trim();
    if url.is_empty() {
        return Err(format!("{path}: the file is empty"));
    }
    Ok(Secret(url.to_string()))
}

/// `--kafka-file`: librdkafka settings, one `key=value` a line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaFile(pub Vec<KafkaSetting>);

/// Blank lines and lines starting with `#` are skipped; whitespace around a
/// line is not part of its value. A malformed line is named by its number
/// only: it may be a bare password.
fn read_kafka_file(path: &str) -> std::result::Result<KafkaFile, String> {
    let text = read_secret_file(path)?;
    let mut settings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let setting = line
            .parse::<KafkaSetting>()
            .map_err(|_| format!("{path}: line {} is not key=value", n + 1))?;
        settings.push(setting);
    }
    Ok(KafkaFile(settings))
}

pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 500ms, 30s, 7d)"))
}

#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "SPANSINK_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// A librdkafka setting passed through, such as security.protocol, sasl.* or ssl.*.
    /// Repeatable; in the environment, separate several with ';'. Values may be
    /// secrets: they are never printed.
    #[arg(long = "kafka", env = "SPANSINK_KAFKA", value_name = "KEY=VALUE", value_parser = parse_kafka_setting, value_delimiter = ';', hide_env_values = true)]
    pub kafka: Vec<KafkaSetting>,
    /// A file of librdkafka settings, one KEY=VALUE a line ('#' starts a comment
    /// line), for secrets such as sasl.password; --kafka wins over it.
    #[arg(long = "kafka-file", env = "SPANSINK_KAFKA_FILE", value_name = "PATH", value_parser = read_kafka_file)]
    pub kafka_file: Option<KafkaFile>,
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Trace topics to consume, as NAME or NAME:ENCODING (otlp_proto, otlp_json). Repeatable;
    /// '' for none (logs only).
    #[arg(long = "traces-topic", env = "SPANSINK_TRACES_TOPICS", value_parser = parse_topic_spec, value_delimiter = ',', default_value = "otlp_spans:otlp_proto")]
    pub traces_topics: Vec<TopicSpec>,
    /// Log topics to consume, as NAME or NAME:ENCODING. Repeatable. None by
    /// default: the OTel Collector's exporter writes logs to otlp_logs.
    #[arg(long = "logs-topic", env = "SPANSINK_LOGS_TOPICS", value_parser = parse_topic_spec, value_delimiter = ',')]
    pub logs_topics: Vec<TopicSpec>,
    /// Consumer group id; also the key of this pipeline's rows in ingest_offsets.
    #[arg(long, env = "SPANSINK_GROUP_ID", default_value = "spansink")]
    pub group_id: String,
    /// Kafka header that carries the tenant id.
    #[arg(long, env = "SPANSINK_TENANT_HEADER", default_value = "X-Scope-OrgID")]
    pub tenant_header: String,
    /// Tenant for messages without the header. Empty: such messages are refused.
    #[arg(long, env = "SPANSINK_DEFAULT_TENANT", default_value = "anonymous")]
    pub default_tenant: String,
    /// A batch closes at this many messages.
    #[arg(long, env = "SPANSINK_BATCH_MAX_MESSAGES", default_value_t = 500)]
    pub batch_max_messages: usize,
    /// A batch closes at this many payload bytes.
    #[arg(long, env = "SPANSINK_BATCH_MAX_BYTES", default_value_t = 8 << 20)]
    pub batch_max_bytes: usize,
    /// A batch closes this long after its first message.
    #[arg(long, env = "SPANSINK_BATCH_LINGER", value_parser = parse_duration, default_value = "200ms")]
    pub batch_linger: Duration,
    /// Memory budget for messages fetched but not yet committed, across all partitions:
    /// librdkafka's prefetch, batches being built and written, and what they decode to.
    /// Partitions take turns at fetching, one turn per 8 MiB of it (see Memory in the README).
    #[arg(long, env = "SPANSINK_MAX_INFLIGHT_BYTES", default_value_t = 64 << 20)]
    pub max_inflight_bytes: usize,
    /// Messages larger than this are refused.
    #[arg(long, env = "SPANSINK_MAX_MESSAGE_BYTES", default_value_t = 16 << 20)]
    pub max_message_bytes: usize,
    /// Deepest nesting of AnyValue arrays and maps accepted.
    #[arg(long, env = "SPANSINK_MAX_VALUE_DEPTH", default_value_t = 32)]
    pub max_value_depth: usize,
    /// Most attributes in one attribute set, and most entries in one array or map value.
    #[arg(long, env = "SPANSINK_MAX_ATTRIBUTES", default_value_t = 1024)]
    pub max_attributes: usize,
    /// Most spans in one message [default: as many as fill a quarter of the
    /// batch budget once decoded]. A message over it is dead-lettered.
    #[arg(long, env = "SPANSINK_MAX_SPANS_PER_MESSAGE")]
    pub max_spans_per_message: Option<u64>,
    /// Most span events in one message [default: a quarter of the batch budget's worth].
    #[arg(long, env = "SPANSINK_MAX_EVENTS_PER_MESSAGE")]
    pub max_events_per_message: Option<u64>,
    /// Most links in one message [default: a quarter of the batch budget's worth].
    #[arg(long, env = "SPANSINK_MAX_LINKS_PER_MESSAGE")]
    pub max_links_per_message: Option<u64>,
    /// Most log records in one message [default: a quarter of the batch budget's worth].
    #[arg(long, env = "SPANSINK_MAX_LOG_RECORDS_PER_MESSAGE")]
    pub max_log_records_per_message: Option<u64>,
    /// Most attributes and array or map entries in one message, all sets
    /// together [default: a quarter of the batch budget's worth].
    #[arg(long, env = "SPANSINK_MAX_VALUES_PER_MESSAGE")]
    pub max_values_per_message: Option<u64>,
    /// Spans that started longer ago than this are refused.
    #[arg(long, env = "SPANSINK_ACCEPT_PAST", value_parser = parse_duration, default_value = "7d")]
    pub accept_past: Duration,
    /// Spans that start further in the future than this are refused.
    #[arg(long, env = "SPANSINK_ACCEPT_FUTURE", value_parser = parse_duration, default_value = "1d")]
    pub accept_future: Duration,
    /// How long a partition's worker may wait for messages the partition holds
    /// before the partition counts as stuck (readiness goes false): what a
    /// message too large to receive looks like.
    #[arg(long, env = "SPANSINK_FETCH_STUCK_AFTER", value_parser = parse_duration, default_value = "60s")]
    pub fetch_stuck_after: Duration,
    /// First delay of the retry backoff for transient failures.
    #[arg(long, env = "SPANSINK_RETRY_INITIAL", value_parser = parse_duration, default_value = "100ms")]
    pub retry_initial: Duration,
    /// Longest delay of the retry backoff.
    #[arg(long, env = "SPANSINK_RETRY_MAX", value_parser = parse_duration, default_value = "30s")]
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    /// Do not apply migrations at start.
    #[arg(long, env = "SPANSINK_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "SPANSINK_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,
    /// Listen address for the operator's endpoints (POST /breaker/close), or
    /// "off". Loopback by default; anywhere else needs --admin-token-file.
    #[arg(long, env = "SPANSINK_ADMIN_ADDR", default_value = "127.0.0.1:9465", value_parser = parse_admin_addr)]
    pub admin_addr: AdminAddr,
    /// A file holding the token that admin requests must present as
    /// `Authorization: Bearer <token>`.
    #[arg(long, env = "SPANSINK_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How long in-flight batches may take to finish and commit on SIGTERM/SIGINT
    /// or when their partitions are revoked; then they roll back.
    #[arg(long, env = "SPANSINK_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "20s")]
    pub drain_timeout: Duration,
    /// How long the last pass of the dead-letter forwarder may take at shutdown,
    /// after the partitions have drained: dead letters it cannot publish in
    /// that time stay in the spool for the next start or `spansink spool drain`.
    /// An orchestrator's grace period must cover --drain-timeout plus this.
    #[arg(long, env = "SPANSINK_SPOOL_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub spool_drain_timeout: Duration,
    #[command(flatten)]
    pub poison: PoisonArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Names this instance in dead letters and logs (default: the host name).
    #[arg(long, env = "SPANSINK_INSTANCE_ID", default_value_t = default_instance_id())]
    pub instance_id: String,
    #[command(flatten)]
    pub fault: FaultArgs,
}

/// `spansink run`'s arguments with every default (and the `SPANSINK_*`
/// environment), as if started with no flags: the limits the bench and its
/// micro-benchmarks decode with.
pub fn run_defaults() -> Result<RunArgs> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        run: RunArgs,
    }
    <Defaults as clap::Parser>::try_parse_from(["spansink"])
        .map(|d| d.run)
        .map_err(|e| Error::config("defaults", e.to_string()))
}

/// Test-only fault injection (see `crate::fault`): hidden from `--help`.
#[derive(Debug, Clone, Default, Args)]
pub struct FaultArgs {
    /// Panic while writing a batch that holds a span of this name.
    #[arg(long, env = "SPANSINK_FAULT_PANIC_SPAN_NAME", hide = true)]
    pub fault_panic_span_name: Option<String>,
    /// Abort the process when decoding a payload that holds this text.
    #[arg(long, env = "SPANSINK_FAULT_ABORT_MARKER", hide = true)]
    pub fault_abort_marker: Option<String>,
}

impl FaultArgs {
    pub fn faults(&self) -> crate::fault::Faults {
        crate::fault::Faults {
            panic_on_span_name: self.fault_panic_span_name.clone(),
            abort_on_payload: self.fault_abort_marker.clone(),
        }
    }
}

/// Where the admin endpoints listen, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

fn parse_admin_addr(s: &str) -> std::result::Result<AdminAddr, String> {
    if s == "off" {
        return Ok(AdminAddr(None));
    }
    s.parse()
        .map(|a| AdminAddr(Some(a)))
        .map_err(|e| format!("{s:?}: {e} (an address such as 127.0.0.1:9465, or off)"))
}

/// The host name, for dead letters' `instance` header.
pub fn default_instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "spansink".to_string())
}

/// The poison path: spool, DLQ topic, crash guard, circuit breaker.
#[derive(Debug, Clone, Args)]
pub struct PoisonArgs {
    /// Directory of the poison spool (dead letters waiting for the DLQ topic).
    #[arg(long, env = "SPANSINK_SPOOL_DIR", default_value = "spool")]
    pub spool_dir: PathBuf,
    /// Spool entries at which consumption pauses (nothing is dropped).
    #[arg(long, env = "SPANSINK_SPOOL_MAX_ENTRIES", default_value_t = 10_000)]
    pub spool_max_entries: usize,
    /// Spool bytes at which consumption pauses (nothing is dropped).
    #[arg(long, env = "SPANSINK_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Dead-letter topic.
    #[arg(long, env = "SPANSINK_DLQ_TOPIC", default_value = "spansink.dlq")]
    pub dlq_topic: String,
    /// How long one DLQ publish may wait for the broker before it is retried later.
    #[arg(long, env = "SPANSINK_DLQ_MESSAGE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub dlq_message_timeout: Duration,
    /// Process deaths on the same offset range before it is processed one message
    /// at a time, and on one message before it is dead-lettered unread.
    #[arg(long, env = "SPANSINK_CRASH_THRESHOLD", default_value_t = 3)]
    pub crash_threshold: u32,
    /// Share of poison among recent messages above which the circuit breaker opens.
    #[arg(long, env = "SPANSINK_BREAKER_THRESHOLD", default_value_t = 0.5)]
    pub breaker_threshold: f64,
    /// Recent messages the circuit breaker looks at, per topic.
    #[arg(long, env = "SPANSINK_BREAKER_WINDOW", default_value_t = 1000)]
    pub breaker_window: usize,
    /// The circuit breaker never opens on fewer messages than this.
    #[arg(long, env = "SPANSINK_BREAKER_MIN_MESSAGES", default_value_t = 100)]
    pub breaker_min_messages: usize,
    /// How long an open circuit breaker waits before letting a probe batch through.
    #[arg(long, env = "SPANSINK_BREAKER_COOLDOWN", value_parser = parse_duration, default_value = "60s")]
    pub breaker_cooldown: Duration,
}

impl PoisonArgs {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.breaker_threshold) {
            return Err(Error::config(
                "--breaker-threshold",
                "must be between 0 and 1",
            ));
        }
        if self.breaker_window == 0 {
            return Err(Error::config("--breaker-window", "must be at least 1"));
        }
        if self.breaker_min_messages > self.breaker_window {
            return Err(Error::config(
                "--breaker-min-messages",
                "must not exceed --breaker-window",
            ));
        }
        if self.crash_threshold == 0 {
            return Err(Error::config("--crash-threshold", "must be at least 1"));
        }
        if self.spool_max_entries == 0 || self.spool_max_bytes == 0 {
            return Err(Error::config(
                "--spool-max-entries",
                "spool limits must be above zero",
            ));
        }
        parse_topic_spec(&self.dlq_topic).map_err(|e| Error::config("--dlq-topic", e))?;
        Ok(())
    }
}

impl KafkaArgs {
    /// What the Kafka clients are given.
    pub fn settings(&self) -> crate::kafka::Settings {
        // librdkafka keeps the last value set, so the command line's come last.
        let from_file = self.kafka_file.iter().flat_map(|f| f.0.iter());
        crate::kafka::Settings {
            brokers: self.brokers.clone(),
            overrides: from_file.chain(&self.kafka).cloned().collect(),
        }
    }

    /// Refuses the settings that `client` owns, by name.
    pub fn check(&self, client: crate::kafka::Client) -> Result<()> {
        self.settings().check(client)
    }
}

impl IngestArgs {
    pub fn validate(&self) -> Result<()> {
        let sources = self.sources();
        if sources.is_empty() {
            return Err(Error::config(
                "--traces-topic",
                "no topic to consume: give a trace or a log topic (--logs-topic)",
            ));
        }
        let mut names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::config(
                "--logs-topic",
                format!("topic {} is given twice (a topic carries one signal)", w[0]),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(Error::config("--group-id", "is empty"));
        }
        if self.tenant_header.trim().is_empty() {
            return Err(Error::config("--tenant-header", "is empty"));
        }
        if !self.default_tenant.is_empty() {
            crate::tenant::validate(&self.default_tenant)
                .map_err(|e| Error::config("--default-tenant", e.to_string()))?;
        }
        if self.batch_max_messages == 0 {
            return Err(Error::config("--batch-max-messages", "must be at least 1"));
        }
        if self.batch_max_bytes == 0 {
            return Err(Error::config("--batch-max-bytes", "must be at least 1"));
        }
        if self.max_inflight_bytes < 2 * self.batch_max_bytes {
            return Err(Error::config(
                "--max-inflight-bytes",
                format!(
                    "must be at least twice --batch-max-bytes ({})",
                    self.batch_max_bytes
                ),
            ));
        }
        if self.max_value_depth == 0 || self.max_value_depth > 64 {
            return Err(Error::config(
                "--max-value-depth",
                "must be between 1 and 64",
            ));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(Error::config(
                "--retry-max",
                "must be at least --retry-initial, which must be above zero",
            ));
        }
        Ok(())
    }

    /// librdkafka's prefetch, and the turns partitions take at fetching.
    pub fn prefetch(&self) -> crate::kafka::consume::Prefetch {
        crate::kafka::consume::Prefetch::within(self.max_inflight_bytes)
    }

    /// The memory for batches being built and written, and what they decode
    /// to: the in-flight budget less librdkafka's prefetch.
    pub fn batch_budget(&self) -> usize {
        self.max_inflight_bytes - self.prefetch().total()
    }

    /// Every consumed topic with its signal and encoding.
    pub fn sources(&self) -> Vec<(String, crate::decode::Source)> {
        let of = |topics: &[TopicSpec], signal| {
            topics
                .iter()
                .filter(|t| !t.name.is_empty())
                .map(|t| {
                    let source = crate::decode::Source {
                        signal,
                        encoding: t.encoding,
                    };
                    (t.name.clone(), source)
                })
                .collect::<Vec<_>>()
        };
        let mut all = of(&self.traces_topics, crate::decode::Signal::Traces);
        all.extend(of(&self.logs_topics, crate::decode::Signal::Logs));
        all
    }

    pub fn retry_policy(&self) -> crate::retry::Policy {
        crate::retry::Policy::new(self.retry_initial, self.retry_max)
    }

    pub fn limits(&self) -> crate::decode::Limits {
        let quarter = crate::decode::ItemLimits::within(self.batch_budget() as u64 / 4);
        crate::decode::Limits {
            max_message_bytes: self.max_message_bytes,
            max_value_depth: self.max_value_depth,
            max_attributes: self.max_attributes,
            items: crate::decode::ItemLimits {
                max_spans: self.max_spans_per_message.unwrap_or(quarter.max_spans),
                max_events: self.max_events_per_message.unwrap_or(quarter.max_events),
                max_links: self.max_links_per_message.unwrap_or(quarter.max_links),
                max_logs: self.max_log_records_per_message.unwrap_or(quarter.max_logs),
                max_values: self.max_values_per_message.unwrap_or(quarter.max_values),
            },
            accept_past: self.accept_past,
            accept_future: self.accept_future,
        }
    }
}

impl DbArgs {
    /// How the pool reaches PostgreSQL.
    pub fn settings(&self) -> crate::pg::pool::Settings {
        crate::pg::pool::Settings {
            url: self.url(),
            pool_size: self.pg_pool_size,
            pool_timeout: self.pg_pool_timeout,
            statement_timeout: self.pg_statement_timeout,
        }
    }

    /// The connection URL: `--database-url` (or `SPANSINK_DATABASE_URL`), else
    /// `--database-url-file`'s, else the conventional `DATABASE_URL`, else the
    /// local server.
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| self.database_url_file.as_ref().map(|f| f.0.clone()))
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .unwrap_or_else(|| LOCAL_DATABASE_URL.to_string())
    }

    pub fn validate(&self) -> Result<()> {
        if self.pg_pool_size == 0 {
            return Err(Error::config("--pg-pool-size", "must be at least 1"));
        }
        crate::pg::tls::parse(&self.url())?;
        Ok(())
    }
}

/// Never shows the URL, which may hold a password.
impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("database_url", &"***")
            .field("database_url_file", &self.database_url_file)
            .field("pg_pool_size", &self.pg_pool_size)
            .field("pg_pool_timeout", &self.pg_pool_timeout)
            .field("pg_statement_timeout", &self.pg_statement_timeout)
            .field("partitions_ahead_days", &self.partitions_ahead_days)
            .finish()
    }
}

impl RunArgs {
    pub fn validate(&self) -> Result<()> {
        self.db.validate()?;
        self.kafka.check(crate::kafka::Client::Consumer)?;
        self.kafka.check(crate::kafka::Client::DeadLetters)?;
        self.ingest.validate()?;
        self.poison.validate()?;
        self.retention.validate()?;
        if self
            .ingest
            .sources()
            .iter()
            .any(|(name, _)| *name == self.poison.dlq_topic)
        {
            return Err(Error::config("--dlq-topic", "must not be a consumed topic"));
        }
        if self.db.pg_pool_size < 2 {
            return Err(Error::config(
                "--pg-pool-size",
                "must be at least 2: one for partitions, one for batches",
            ));
        }
        if let AdminAddr(Some(addr)) = self.admin_addr {
            if !addr.ip().is_loopback() && self.admin_token_file.is_none() {
                return Err(Error::config(
                    "--admin-token-file",
                    format!("required when --admin-addr ({addr}) listens beyond loopback"),
                ));
            }
        }
        Ok(())
    }

    /// The admin token, read from `--admin-token-file`.
    pub fn admin_token(&self) -> Result<Option<String>> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .map_err(|e| Error::config("--admin-token-file", format!("{}: {e}", path.display())))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(Error::config("--admin-token-file", "the file is empty"));
        }
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_spec_parses_name_and_encoding() {
        assert_eq!(
            parse_topic_spec("otlp_spans").unwrap(),
            TopicSpec {
                name: "otlp_spans".into(),
                encoding: Encoding::OtlpProto
            }
        );
        assert_eq!(
            parse_topic_spec("t.json:otlp_json").unwrap().encoding,
            Encoding::OtlpJson
        );
        assert!(parse_topic_spec("t:avro").unwrap_err().contains("avro"));
        assert!(parse_topic_spec("bad topic").is_err());
    }
}
