//! Every metric spansink exports, declared once: name, help text, unit in the
//! name, and histogram buckets. Code elsewhere records through the constants
//! here, so that a dashboard can trust that a name it finds here exists.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, Result};

// Consumption, per topic and partition.
pub const MESSAGES_CONSUMED: &str = "spansink_messages_consumed_total";
pub const BYTES_CONSUMED: &str = "spansink_consumed_bytes_total";
// Rows written, per topic.
pub const SPANS_WRITTEN: &str = "spansink_spans_written_total";
pub const SPANS_DUPLICATE: &str = "spansink_spans_duplicate_total";
pub const SPAN_EVENTS_WRITTEN: &str = "spansink_span_events_written_total";
pub const SPAN_LINKS_WRITTEN: &str = "spansink_span_links_written_total";
pub const LOG_RECORDS_WRITTEN: &str = "spansink_log_records_written_total";
pub const LOG_RECORDS_DUPLICATE: &str = "spansink_log_records_duplicate_total";
pub const BATCHES_COMMITTED: &str = "spansink_batches_committed_total";
pub const BATCH_SPLITS: &str = "spansink_batch_splits_total";
pub const BATCH_WRITE_PATH: &str = "spansink_batch_write_path_total";
pub const BATCH_MESSAGES: &str = "spansink_batch_messages";
pub const BATCH_SPANS: &str = "spansink_batch_spans";
pub const PG_TRANSACTION_SECONDS: &str = "spansink_pg_transaction_duration_seconds";
pub const END_TO_END_LATENCY_SECONDS: &str = "spansink_end_to_end_latency_seconds";
// Offsets and the consumer group.
pub const ASSIGNED_PARTITIONS: &str = "spansink_assigned_partitions";
pub const PAUSED_PARTITIONS: &str = "spansink_paused_partitions";
pub const STOPPED_PARTITIONS: &str = "spansink_stopped_partitions";
pub const PARTITION_WORKERS: &str = "spansink_partition_workers";
pub const PARTITION_WORKER_OVERLAPS: &str = "spansink_partition_worker_overlaps_total";
pub const REBALANCES: &str = "spansink_rebalances_total";
pub const OFFSET_FENCE_CONFLICTS: &str = "spansink_offset_fence_conflicts_total";
pub const OFFSET_GAPS: &str = "spansink_offset_gaps_total";
pub const MESSAGES_BELOW_STORED_OFFSET: &str = "spansink_messages_below_stored_offset_total";
pub const KAFKA_COMMIT_FAILURES: &str = "spansink_kafka_commit_failures_total";
pub const INFLIGHT_BYTES: &str = "spansink_inflight_bytes";
pub const FETCHING_PARTITIONS: &str = "spansink_fetching_partitions";
pub const FETCH_SLOTS: &str = "spansink_fetch_slots";
pub const PARTITION_PAUSED: &str = "spansink_partition_paused";
pub const PARTITION_STUCK: &str = "spansink_partition_stuck";
pub const CONSUMER_LAG_MESSAGES: &str = "spansink_consumer_lag_messages";
pub const CONSUMER_LAG_SECONDS: &str = "spansink_consumer_lag_seconds";
// Failures.
pub const TRANSIENT_RETRIES: &str = "spansink_transient_retries_total";
pub const PANICS: &str = "spansink_panics_total";
pub const SANITIZED_VALUES: &str = "spansink_sanitized_values_total";
// The poison path.
pub const DEAD_LETTERS: &str = "spansink_dead_letters_total";
pub const DLQ_PUBLISHED: &str = "spansink_dlq_published_total";
pub const DLQ_PUBLISH_FAILURES: &str = "spansink_dlq_publish_failures_total";
pub const DLQ_OVERSIZE: &str = "spansink_dlq_oversize_total";
pub const SPOOL_ENTRIES: &str = "spansink_spool_entries";
pub const SPOOL_BYTES: &str = "spansink_spool_bytes";
pub const SPOOL_OLDEST_AGE_SECONDS: &str = "spansink_spool_oldest_entry_age_seconds";
pub const SPOOL_CAPACITY_ENTRIES: &str = "spansink_spool_capacity_entries";
pub const SPOOL_CAPACITY_BYTES: &str = "spansink_spool_capacity_bytes";
pub const SPOOL_QUARANTINED: &str = "spansink_spool_quarantined_total";
pub const SPOOL_SUPERSEDED: &str = "spansink_spool_superseded_total";
pub const CRASH_GUARD_RANGES: &str = "spansink_crash_guard_ranges_total";
pub const BREAKER_STATE: &str = "spansink_circuit_breaker_state";
pub const BREAKER_TRIPS: &str = "spansink_circuit_breaker_trips_total";
pub const BREAKER_OPEN_PARTITIONS: &str = "spansink_circuit_breaker_open_partitions";
pub const BREAKER_HELD: &str = "spansink_circuit_breaker_held";
// Process.
pub const BUILD_INFO: &str = "spansink_build_info";
pub const READY: &str = "spansink_ready";
pub const PG_POOL_CONNECTIONS: &str = "spansink_pg_pool_connections";
pub const PG_POOL_WAITING: &str = "spansink_pg_pool_waiting";
// Retention.
pub const RETENTION_PARTITIONS_DROPPED: &str = "spansink_retention_partitions_dropped_total";
pub const RETENTION_ROWS_DELETED: &str = "spansink_retention_rows_deleted_total";
pub const RETENTION_LAST_SUCCESS: &str = "spansink_retention_last_success_timestamp_seconds";

/// Buckets, each chosen for what its histogram measures.
const BATCH_MESSAGE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];
const BATCH_SPAN_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0,
];
/// A batch transaction: milliseconds when healthy, seconds under lock contention.
const PG_TX_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// From the Kafka timestamp to the commit: linger plus write when caught up,
/// minutes to hours when catching up on a backlog.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// How a metric is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric's declaration: what `/metrics` says of it in `# HELP` and `# TYPE`.
#[derive(Debug, Clone, Copy)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

/// Every metric, with its help text.
pub const DESCRIBED: &[Described] = &[
    Described {
        name: BATCH_WRITE_PATH,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Batch transactions by write path: direct (COPY into the tables; every span new) or staged (a span was already stored: COPY into staging, then ON CONFLICT DO NOTHING).",
    },
    Described {
        name: MESSAGES_CONSUMED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Kafka messages received, per topic and partition.",
    },
    Described {
        name: BYTES_CONSUMED,
        kind: Kind::Counter,
        unit: Unit::Bytes,
        help: "Kafka message payload bytes received, per topic and partition.",
    },
    Described {
        name: SPANS_WRITTEN,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Spans inserted into PostgreSQL (new rows only), per topic.",
    },
    Described {
        name: SPANS_DUPLICATE,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Spans already stored and skipped (replays and duplicates), per topic.",
    },
    Described {
        name: SPAN_EVENTS_WRITTEN,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Span events inserted into PostgreSQL, per topic.",
    },
    Described {
        name: SPAN_LINKS_WRITTEN,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Span links stored with newly inserted spans, per topic.",
    },
    Described {
        name: LOG_RECORDS_WRITTEN,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Log records inserted into PostgreSQL, per topic.",
    },
    Described {
        name: LOG_RECORDS_DUPLICATE,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Log records not inserted because they were already stored (a replayed or redelivered message), per topic.",
    },
    Described {
        name: BATCHES_COMMITTED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Batch transactions committed, per topic.",
    },
    Described {
        name: BATCH_SPLITS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Batches split in two, per topic and cause: poison (a message PostgreSQL refuses) or too_slow (a statement outlasted --pg-statement-timeout).",
    },
    Described {
        name: BATCH_MESSAGES,
        kind: Kind::Histogram,
        unit: Unit::Count,
        help: "Kafka messages per committed batch.",
    },
    Described {
        name: BATCH_SPANS,
        kind: Kind::Histogram,
        unit: Unit::Count,
        help: "Spans per committed batch.",
    },
    Described {
        name: PG_TRANSACTION_SECONDS,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "Duration of one batch's PostgreSQL transaction, commit included.",
    },
    Described {
        name: END_TO_END_LATENCY_SECONDS,
        kind: Kind::Histogram,
        unit: Unit::Seconds,
        help: "From a message's Kafka timestamp to its PostgreSQL commit.",
    },
    Described {
        name: ASSIGNED_PARTITIONS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Partitions assigned to this instance.",
    },
    Described {
        name: PAUSED_PARTITIONS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Assigned partitions whose fetching is paused (waiting for a fetch slot or memory, a full spool, an open breaker, or a stopped partition).",
    },
    Described {
        name: STOPPED_PARTITIONS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Partitions stopped by a permanent failure, waiting for an operator.",
    },
    Described {
        name: REBALANCES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Consumer group rebalance callbacks, by kind (assign, revoke, lost).",
    },
    Described {
        name: OFFSET_FENCE_CONFLICTS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Batches rolled back because another writer moved the partition's offset.",
    },
    Described {
        name: OFFSET_GAPS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Batches that started above the stored offset (transaction markers, compaction, retention).",
    },
    Described {
        name: MESSAGES_BELOW_STORED_OFFSET,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Messages received below the stored offset and skipped as already committed.",
    },
    Described {
        name: KAFKA_COMMIT_FAILURES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Advisory Kafka offset commits that failed (PostgreSQL holds the truth).",
    },
    Described {
        name: INFLIGHT_BYTES,
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        help: "Bytes reserved by batches being built and written: payloads and what they decode to.",
    },
    Described {
        name: FETCHING_PARTITIONS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Partitions holding a fetch slot: fetching and building batches, the others paused.",
    },
    Described {
        name: FETCH_SLOTS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Partitions that may fetch and build batches at once: one per 8 MiB of --max-inflight-bytes.",
    },
    Described {
        name: PARTITION_PAUSED,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "1 while a partition's fetching is paused, per topic and partition.",
    },
    Described {
        name: CONSUMER_LAG_MESSAGES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Messages between the stored offset and the partition's end, per topic and partition.",
    },
    Described {
        name: CONSUMER_LAG_SECONDS,
        kind: Kind::Gauge,
        unit: Unit::Seconds,
        help: "Age of the oldest message not yet committed, per topic and partition.",
    },
    Described {
        name: TRANSIENT_RETRIES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Retries after a transient failure, by kind.",
    },
    Described {
        name: PANICS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Panics caught while decoding or writing.",
    },
    Described {
        name: SANITIZED_VALUES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Values changed so that PostgreSQL accepts them, by kind (nul, nonfinite_float).",
    },
    Described {
        name: DEAD_LETTERS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Messages dead-lettered (durably spooled), by topic, stage and reason.",
    },
    Described {
        name: DLQ_PUBLISHED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Dead letters acknowledged by the DLQ topic's broker.",
    },
    Described {
        name: DLQ_PUBLISH_FAILURES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "DLQ publish attempts that failed and will be retried.",
    },
    Described {
        name: DLQ_OVERSIZE,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Dead letters the DLQ topic refused for their size: a marker was published instead and the record kept in the spool's oversize/ directory.",
    },
    Described {
        name: SPOOL_ENTRIES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Dead letters in the local spool, waiting for the DLQ.",
    },
    Described {
        name: SPOOL_BYTES,
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        help: "Bytes of dead letters in the local spool.",
    },
    Described {
        name: SPOOL_OLDEST_AGE_SECONDS,
        kind: Kind::Gauge,
        unit: Unit::Seconds,
        help: "Age of the oldest spool entry; 0 when the spool is empty.",
    },
    Described {
        name: SPOOL_CAPACITY_ENTRIES,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "The spool's entry limit; consumption pauses when it is reached.",
    },
    Described {
        name: SPOOL_CAPACITY_BYTES,
        kind: Kind::Gauge,
        unit: Unit::Bytes,
        help: "The spool's byte limit; consumption pauses when it is reached.",
    },
    Described {
        name: SPOOL_QUARANTINED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Torn or corrupt spool entries moved to the quarantine folder.",
    },
    Described {
        name: SPOOL_SUPERSEDED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Spool entries discarded because the dead-letter ledger does not hold them for this spool: never committed (the message is consumed again), stored by another instance, or dead-lettered from another spool.",
    },
    Described {
        name: CRASH_GUARD_RANGES,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Batches processed one message at a time because the process died with their range in flight.",
    },
    Described {
        name: BREAKER_STATE,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Poison-rate circuit breaker per topic: 0 closed, 1 half-open, 2 open.",
    },
    Described {
        name: BREAKER_TRIPS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Times the poison-rate circuit breaker opened, per topic.",
    },
    Described {
        name: BREAKER_OPEN_PARTITIONS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Partitions whose own breaker is not closed (poison confined to them), per topic.",
    },
    Described {
        name: BREAKER_HELD,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "1 while an operator holds the topic's breakers closed (POST /breaker/close).",
    },
    Described {
        name: PARTITION_STUCK,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "1 while a partition's messages cannot be fetched (its worker has waited a minute while the partition's end is beyond librdkafka's fetch position: a message larger than the consumer may receive).",
    },
    Described {
        name: PARTITION_WORKERS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Live workers per assigned partition: never more than 1.",
    },
    Described {
        name: PARTITION_WORKER_OVERLAPS,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Times a partition worker started while another one of the same partition was alive; always 0 unless there is a bug.",
    },
    Described {
        name: BUILD_INFO,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Always 1; labels carry the version and git sha.",
    },
    Described {
        name: READY,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "1 when /readyz reports ready.",
    },
    Described {
        name: PG_POOL_CONNECTIONS,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "PostgreSQL pool connections, by state (in_use, idle).",
    },
    Described {
        name: PG_POOL_WAITING,
        kind: Kind::Gauge,
        unit: Unit::Count,
        help: "Tasks waiting for a PostgreSQL pool connection.",
    },
    Described {
        name: RETENTION_PARTITIONS_DROPPED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Daily partitions dropped by retention, per table (spans, span_events, span_metrics, logs).",
    },
    Described {
        name: RETENTION_ROWS_DELETED,
        kind: Kind::Counter,
        unit: Unit::Count,
        help: "Rows deleted by retention, per table (traces, dead_letters).",
    },
    Described {
        name: RETENTION_LAST_SUCCESS,
        kind: Kind::Gauge,
        unit: Unit::Seconds,
        help: "When this instance last completed a retention round (Unix time); 0 until it has.",
    },
];

fn describe() {
    for d in DESCRIBED {
        match d.kind {
            Kind::Counter => describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => describe_histogram!(d.name, d.unit, d.help),
        }
    }
}

/// Installs the global recorder with real Prometheus histograms (the exporter
/// renders summaries unless buckets are configured) and declares every metric.
pub fn install() -> Result<PrometheusHandle> {
    let setting =
        |e: metrics_exporter_prometheus::BuildError| Error::config("metrics", e.to_string());
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(BATCH_MESSAGES.into()), BATCH_MESSAGE_BUCKETS)
        .map_err(setting)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SPANS.into()), BATCH_SPAN_BUCKETS)
        .map_err(setting)?
        .set_buckets_for_metric(Matcher::Full(PG_TRANSACTION_SECONDS.into()), PG_TX_BUCKETS)
        .map_err(setting)?
        .set_buckets_for_metric(
            Matcher::Full(END_TO_END_LATENCY_SECONDS.into()),
            LATENCY_BUCKETS,
        )
        .map_err(setting)?
        .install_recorder()
        .map_err(setting)?;
    describe();
    init_process();
    metrics::gauge!(BUILD_INFO, "version" => crate::VERSION, "git_sha" => crate::GIT_SHA).set(1.0);
    Ok(handle)
}

/// Series a dashboard queries for every topic exist from the start, at zero,
/// rather than appearing with the first event.
pub fn init_topic(topic: &str) {
    let t = topic.to_string();
    for name in [
        SPANS_WRITTEN,
        SPANS_DUPLICATE,
        SPAN_EVENTS_WRITTEN,
        SPAN_LINKS_WRITTEN,
        LOG_RECORDS_WRITTEN,
        LOG_RECORDS_DUPLICATE,
        BATCHES_COMMITTED,
        KAFKA_COMMIT_FAILURES,
        BREAKER_TRIPS,
        CRASH_GUARD_RANGES,
    ] {
        metrics::counter!(name, "topic" => t.clone()).increment(0);
    }
    for cause in ["poison", "too_slow"] {
        metrics::counter!(BATCH_SPLITS, "topic" => t.clone(), "cause" => cause).increment(0);
    }
    for &reason in crate::error::Reason::all() {
        metrics::counter!(DEAD_LETTERS, "topic" => t.clone(), "stage" => reason.stage().as_str(), "reason" => reason.as_str())
            .increment(0);
    }
    metrics::gauge!(BREAKER_STATE, "topic" => t.clone()).set(0.0);
    metrics::gauge!(BREAKER_OPEN_PARTITIONS, "topic" => t.clone()).set(0.0);
    metrics::gauge!(BREAKER_HELD, "topic" => t).set(0.0);
}

/// Per-partition series start at zero when the partition is assigned.
pub fn init_partition(topic: &str, partition: i32) {
    let labels = [
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ];
    metrics::counter!(MESSAGES_CONSUMED, &labels).increment(0);
    metrics::counter!(BYTES_CONSUMED, &labels).increment(0);
    metrics::counter!(OFFSET_FENCE_CONFLICTS, &labels).increment(0);
    metrics::counter!(OFFSET_GAPS, &labels).increment(0);
    metrics::counter!(MESSAGES_BELOW_STORED_OFFSET, &labels).increment(0);
    metrics::gauge!(CONSUMER_LAG_MESSAGES, &labels).set(0.0);
    metrics::gauge!(CONSUMER_LAG_SECONDS, &labels).set(0.0);
    metrics::gauge!(PARTITION_PAUSED, &labels).set(0.0);
    metrics::gauge!(PARTITION_STUCK, &labels).set(0.0);
}

/// Process-wide series, at zero until something happens.
fn init_process() {
    for name in [
        PANICS,
        DLQ_PUBLISHED,
        DLQ_PUBLISH_FAILURES,
        DLQ_OVERSIZE,
        SPOOL_QUARANTINED,
        SPOOL_SUPERSEDED,
        PARTITION_WORKER_OVERLAPS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in [
        "pg_connection",
        "pg_serialization",
        "pg_deadlock",
        "pg_resources",
        "pg_shutdown",
        "pg_pool_timeout",
        "pg_other",
        "kafka",
        "io",
    ] {
        metrics::counter!(TRANSIENT_RETRIES, "kind" => kind).increment(0);
    }
    for table in ["spans", "span_events", "span_metrics", "logs"] {
        metrics::counter!(RETENTION_PARTITIONS_DROPPED, "table" => table).increment(0);
    }
    for table in ["traces", "dead_letters"] {
        metrics::counter!(RETENTION_ROWS_DELETED, "table" => table).increment(0);
    }
    metrics::gauge!(RETENTION_LAST_SUCCESS).set(0.0);
    for kind in ["nul", "nonfinite_float"] {
        metrics::counter!(SANITIZED_VALUES, "kind" => kind).increment(0);
    }
    for kind in ["assign", "revoke", "lost"] {
        metrics::counter!(REBALANCES, "kind" => kind).increment(0);
    }
    for path in ["direct", "staged"] {
        metrics::counter!(BATCH_WRITE_PATH, "path" => path).increment(0);
    }
    for name in [
        ASSIGNED_PARTITIONS,
        PAUSED_PARTITIONS,
        STOPPED_PARTITIONS,
        INFLIGHT_BYTES,
        FETCHING_PARTITIONS,
        READY,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for name in [
        BATCH_MESSAGES,
        BATCH_SPANS,
        PG_TRANSACTION_SECONDS,
        END_TO_END_LATENCY_SECONDS,
    ] {
        // Registering the handle makes the histogram appear with zero counts.
        let _ = metrics::histogram!(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_once_with_help() {
        let mut names: Vec<&str> = DESCRIBED.iter().map(|d| d.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a metric described twice");
        assert!(DESCRIBED
            .iter()
            .all(|d| d.name.starts_with("spansink_") && !d.help.is_empty()));
    }
}
