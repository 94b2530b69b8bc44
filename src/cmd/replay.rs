//! `spansink replay`: re-ingest dead letters once their cause is fixed.
//!
//! Dead letters come from the DLQ topic or from a spool directory and go
//! through the same decode and write path as live traffic, under the current
//! configuration (a rule relaxed since, such as a wider acceptance window, now
//! lets them in). Writes are idempotent, so replaying twice changes nothing.
//! Replay moves no partition offset.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;

use crate::blocking;
use crate::config::{parse_duration, DbArgs, IngestArgs, KafkaArgs};
use crate::decode;
use crate::error::{Class, Error, Result};
use crate::model::Decoded;
use crate::otlp::spansink::v1::DeadLetter;
use crate::pg::partitions::Partitions;
use crate::pg::write::{WriteStats, Writer};
use crate::retry::{self, Policy};

const REPLAY_RETRY: Policy = Policy::new(Duration::from_millis(100), Duration::from_secs(10));

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    /// Read dead letters from this spool directory instead of the DLQ topic.
    #[arg(long, env = "SPANSINK_REPLAY_FROM_SPOOL")]
    pub from_spool: Option<PathBuf>,
    /// The DLQ topic to read when not replaying a spool.
    #[arg(long, env = "SPANSINK_DLQ_TOPIC", default_value = "spansink.dlq")]
    pub dlq_topic: String,
    /// Only dead letters from this source topic.
    #[arg(long, env = "SPANSINK_REPLAY_SOURCE_TOPIC")]
    pub source_topic: Option<String>,
    /// Only dead letters of this tenant.
    #[arg(long, env = "SPANSINK_REPLAY_TENANT")]
    pub tenant: Option<String>,
    /// Only dead letters with this reason (e.g. timestamp_out_of_window).
    #[arg(long, env = "SPANSINK_REPLAY_REASON")]
    pub reason: Option<String>,
    /// Only messages whose Kafka timestamp is at or after this RFC 3339 time.
    #[arg(long, env = "SPANSINK_REPLAY_SINCE", value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// Only messages whose Kafka timestamp is before this RFC 3339 time.
    #[arg(long, env = "SPANSINK_REPLAY_UNTIL", value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// Only source offsets at or above this.
    #[arg(long, env = "SPANSINK_REPLAY_FROM_OFFSET")]
    pub from_offset: Option<i64>,
    /// Only source offsets at or below this.
    #[arg(long, env = "SPANSINK_REPLAY_TO_OFFSET")]
    pub to_offset: Option<i64>,
    /// Decode and report, write nothing.
    #[arg(long, env = "SPANSINK_REPLAY_DRY_RUN")]
    pub dry_run: bool,
    /// Give up reading the DLQ topic after this long without reaching its end.
    #[arg(long, env = "SPANSINK_REPLAY_READ_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub read_timeout: Duration,
}

fn parse_time(s: &str) -> std::result::Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (example: 2026-11-27T08:00:00Z)"))
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead letters that decoded and were written (or would be, in a dry run).
    pub replayed: usize,
    /// Spans those writes inserted; duplicates were already stored.
    pub spans_inserted: u64,
    pub spans_duplicate: u64,
    /// Log records those writes inserted; duplicates were already stored.
    pub logs_inserted: u64,
    pub logs_duplicate: u64,
    /// Dead letters that still fail, by reason.
    pub failed_again: BTreeMap<String, usize>,
    /// Dead letters the filters left out.
    pub skipped: usize,
    pub dry_run: bool,
}

impl ReplayReport {
    pub fn failed_again_total(&self) -> usize {
        self.failed_again.values().sum()
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        };
        writeln!(f, "replay{mode}")?;
        writeln!(
            f,
            "  replayed:     {} (spans inserted {}, already stored {}; log records inserted {}, already stored {})",
            self.replayed, self.spans_inserted, self.spans_duplicate, self.logs_inserted, self.logs_duplicate
        )?;
        writeln!(f, "  failed again: {}", self.failed_again_total())?;
        for (reason, n) in &self.failed_again {
            writeln!(f, "    {reason}: {n}")?;
        }
        write!(f, "  skipped:      {}", self.skipped)
    }
}

pub async fn run(args: &ReplayArgs) -> Result<ReplayReport> {
    args.db.validate()?;
    args.ingest.validate()?;
    let letters = match &args.from_spool {
        Some(dir) => read_spool(dir.clone()).await?,
        None => {
            // The reader joins no group and commits nothing: only the brokers matter.
            args.kafka.check(crate::kafka::Client::Loadgen)?;
            crate::poison::reader::read_topic(
                &args.kafka.settings(),
                &args.dlq_topic,
                args.read_timeout,
            )
            .await?
        }
    };
    let pool = crate::pg::pool::connect(&args.db.settings()).await?;
    let writer = Writer::new(
        pool.clone(),
        Arc::new(Partitions::new()),
        crate::pg::pool::Canceller::new(&args.db.settings())?,
    );
    let report = replay(args, &writer, letters).await?;
    Ok(report)
}

/// Filters, decodes and writes the dead letters; the report says what became of each.
pub async fn replay(
    args: &ReplayArgs,
    writer: &Writer,
    letters: Vec<DeadLetter>,
) -> Result<ReplayReport> {
    let mut report = ReplayReport {
        dry_run: args.dry_run,
        ..ReplayReport::default()
    };
    let mut seen = std::collections::HashSet::new();
    let limits = args.ingest.limits();
    let sources = args.ingest.sources();
    for dl in letters {
        // A publish retried after a lost acknowledgement leaves the same id twice.
        if !seen.insert(dl.id.clone()) || !selected(args, &dl) {
            report.skipped += 1;
            continue;
        }
        let decoded = decode_letter(&args.ingest, &sources, &limits, &dl);
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(id = %dl.id, error = %e, "still refused");
                *report.failed_again.entry(reason_label(&e)).or_default() += 1;
                continue;
            }
        };
        if args.dry_run {
            report.replayed += 1;
            continue;
        }
        match write(writer, &decoded, &dl).await {
            Ok(stats) => {
                report.replayed += 1;
                report.spans_inserted += stats.spans_inserted;
                report.spans_duplicate += stats.spans_duplicate;
                report.logs_inserted += stats.logs_inserted;
                report.logs_duplicate += stats.logs_duplicate;
            }
            Err(e) if e.class() == Class::Poison => {
                tracing::info!(id = %dl.id, error = %e, "still refused by PostgreSQL");
                *report.failed_again.entry(reason_label(&e)).or_default() += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn reason_label(e: &Error) -> String {
    e.reason()
        .map_or_else(|| "unknown".to_string(), |r| r.as_str().to_string())
}

fn selected(args: &ReplayArgs, dl: &DeadLetter) -> bool {
    let ts = dl
        .timestamp_ms
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
    args.source_topic.as_ref().is_none_or(|t| *t == dl.topic)
        && args
            .tenant
            .as_ref()
            .is_none_or(|t| dl.tenant.as_ref() == Some(t))
        && args.reason.as_ref().is_none_or(|r| *r == dl.reason)
        && args.since.is_none_or(|s| ts.is_some_and(|t| t >= s))
        && args.until.is_none_or(|u| ts.is_some_and(|t| t < u))
        && args.from_offset.is_none_or(|o| dl.offset >= o)
        && args.to_offset.is_none_or(|o| dl.offset <= o)
}

/// The same decoding as live traffic: the source topic's signal and encoding
/// (a topic not configured now is taken for protobuf traces), the tenant from
/// the original headers, the current limits and window. Log records are keyed
/// by the dead letter's source topic, partition, offset and timestamp, as
/// they would have been when consumed, never by where the dead letter itself
/// is stored: a dead letter published twice, or replayed from both the topic
/// and a spool, stores each record once.
fn decode_letter(
    ingest: &IngestArgs,
    sources: &[(String, decode::Source)],
    limits: &decode::Limits,
    dl: &DeadLetter,
) -> Result<Decoded> {
    let source = sources.iter().find(|(name, _)| *name == dl.topic).map_or(
        decode::Source::traces(crate::config::Encoding::OtlpProto),
        |(_, s)| *s,
    );
    let header = dl
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(&ingest.tenant_header))
        .map(|h| h.value.clone().unwrap_or_default());
    let tenant = crate::tenant::resolve(header.as_deref(), &ingest.default_tenant)?;
    let origin = crate::model::Origin {
        topic: &dl.topic,
        partition: dl.partition,
        offset: dl.offset,
        timestamp_ms: dl.timestamp_ms,
    };
    decode::decode(
        &dl.payload,
        source,
        &tenant,
        &origin,
        limits,
        SystemTime::now(),
    )
}

/// Writes the rows and marks the dead letter as replayed in the ledger, in one
/// transaction.
async fn write(writer: &Writer, decoded: &Decoded, dl: &DeadLetter) -> Result<WriteStats> {
    let source = crate::pg::offsets::PartitionKey {
        group: &dl.group,
        topic: &dl.topic,
        partition: dl.partition,
    };
    // Replay runs in the foreground: Ctrl-C ends it, nothing else stops a retry.
    let never = tokio_util::sync::CancellationToken::new();
    let rows = [decoded];
    retry::until_ok("replaying a dead letter", &never, REPLAY_RETRY, |_| {
        writer.write_replayed(&rows, Some((source, dl.offset)))
    })
    .await
}

async fn read_spool(dir: PathBuf) -> Result<Vec<DeadLetter>> {
    blocking::run("reading the spool", move || {
        let spool = crate::poison::spool::Spool::open_read_only(&dir)?;
        let mut out = Vec::new();
        for entry in spool.list()? {
            match spool.read(&entry.id) {
                Ok(dl) => out.push(dl),
                Err(e) => {
                    tracing::warn!(id = %entry.id, error = %e, "unreadable spool entry left out")
                }
            }
        }
        Ok(out)
    })
    .await
}
