//! The advisory Kafka offset commit.
//!
//! PostgreSQL's `ingest_offsets` is the truth; the Kafka commit exists for lag
//! tools. It is made only while the partition is owned: a revocation ends the
//! worker before the partition is given up, and a lost assignment withdraws
//! ownership before the worker is stopped, so that nothing is committed for a
//! partition another member holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::consume::Consumer;
use crate::metric;

/// Whether a worker still owns its partition; shared with the coordinator,
/// which withdraws it when the assignment is lost.
#[derive(Debug, Clone)]
pub struct Ownership(Arc<AtomicBool>);

impl Ownership {
    pub fn new() -> Self {
        Ownership(Arc::new(AtomicBool::new(true)))
    }

    pub fn withdraw(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_owned(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Default for Ownership {
    fn default() -> Self {
        Self::new()
    }
}

/// Commits `next_offset` to Kafka if the partition is still owned. Failures
/// are logged and counted, never retried: the next commit supersedes.
pub fn commit(
    consumer: &Consumer,
    owned: &Ownership,
    topic: &str,
    partition: i32,
    next_offset: i64,
    mode: CommitMode,
) {
    if !owned.is_owned() || consumer.assignment_lost() {
        tracing::debug!(
            topic,
            partition,
            "not committing to Kafka: partition no longer owned"
        );
        return;
    }
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next_offset)) {
        tracing::warn!(error = %e, "cannot build commit list");
        return;
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        metrics::counter!(metric::KAFKA_COMMIT_FAILURES, "topic" => topic.to_string()).increment(1);
        tracing::debug!(error = %e, topic, partition, next_offset, "advisory Kafka commit failed");
    }
}

/// Per-partition series disappear with the partition, so that two instances
/// never both report the same partition.
pub fn remove_partition_series(topic: &str, partition: i32) {
    let labels = [
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ];
    metrics::gauge!(metric::CONSUMER_LAG_MESSAGES, &labels).set(0.0);
    metrics::gauge!(metric::CONSUMER_LAG_SECONDS, &labels).set(0.0);
    metrics::gauge!(metric::PARTITION_PAUSED, &labels).set(0.0);
    metrics::gauge!(metric::PARTITION_WORKERS, &labels).set(0.0);
    metrics::gauge!(metric::PARTITION_STUCK, &labels).set(0.0);
}
