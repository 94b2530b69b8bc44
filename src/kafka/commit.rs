//! Which partitions this instance owns, and the advisory Kafka offset commit.
//!
//! PostgreSQL's `ingest_offsets` is the truth. The Kafka commit exists for lag
//! tools, and it is made only for a partition this instance still owns: never
//! after a revocation has completed and never after the assignment was lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::kafka::consume::Consumer;
use crate::metrics as m;

pub type TopicPartition = (String, i32);

/// One owned partition: its worker and the token that asks it to stop.
struct Owned {
    epoch: u64,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// The partitions this instance owns. Ownership ends when a revocation removes
/// the entry, after the worker has drained.
#[derive(Default)]
pub struct Assignments {
    owned: Mutex<HashMap<TopicPartition, Owned>>,
    epochs: AtomicU64,
}

/// A worker's proof of ownership: the partition and the epoch it was assigned in.
#[derive(Debug, Clone)]
pub struct Lease {
    pub topic: String,
    pub partition: i32,
    pub epoch: u64,
}

impl Assignments {
    /// Registers a newly assigned partition; the caller spawns its worker and
    /// hands the task back with [`Assignments::attach`].
    pub fn acquire(&self, topic: &str, partition: i32, stop: CancellationToken) -> Lease {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        let mut owned = self.lock();
        if let Some(old) = owned.insert(
            (topic.to_string(), partition),
            Owned {
                epoch,
                stop,
                task: None,
            },
        ) {
            // A stale worker of an earlier assignment: it may no longer commit.
            old.stop.cancel();
            if let Some(t) = old.task {
                t.abort();
            }
        }
        metrics::gauge!(m::ASSIGNED_PARTITIONS).set(owned.len() as f64);
        Lease {
            topic: topic.to_string(),
            partition,
            epoch,
        }
    }

    pub fn attach(&self, lease: &Lease, task: JoinHandle<()>) {
        let mut owned = self.lock();
        match owned.get_mut(&(lease.topic.clone(), lease.partition)) {
            Some(o) if o.epoch == lease.epoch => o.task = Some(task),
            _ => task.abort(),
        }
    }

    /// Asks the workers of these partitions to stop, and returns their tasks so
    /// that the caller can wait for them to drain. They still own their partitions
    /// until [`Assignments::release`].
    pub fn stop(&self, partitions: &[TopicPartition]) -> Vec<JoinHandle<()>> {
        let mut owned = self.lock();
        let mut tasks = Vec::new();
        for tp in partitions {
            if let Some(o) = owned.get_mut(tp) {
                o.stop.cancel();
                tasks.extend(o.task.take());
            }
        }
        tasks
    }

    /// Ends ownership of these partitions.
    pub fn release(&self, partitions: &[TopicPartition]) {
        let mut owned = self.lock();
        for tp in partitions {
            owned.remove(tp);
            remove_partition_series(&tp.0, tp.1);
        }
        metrics::gauge!(m::ASSIGNED_PARTITIONS).set(owned.len() as f64);
    }

    pub fn all(&self) -> Vec<TopicPartition> {
        self.lock().keys().cloned().collect()
    }

    /// Commits `next_offset` to Kafka if `lease` still owns the partition.
    /// Failures are logged and counted, never retried: the next commit supersedes.
    pub fn commit(&self, consumer: &Consumer, lease: &Lease, next_offset: i64, mode: CommitMode) {
        // The lock makes "still owned" and "commit" one step with respect to release.
        let owned = self.lock();
        let still_owned = owned
            .get(&(lease.topic.clone(), lease.partition))
            .is_some_and(|o| o.epoch == lease.epoch);
        if !still_owned || consumer.assignment_lost() {
            tracing::debug!(topic = %lease.topic, partition = lease.partition, "not committing to Kafka: partition no longer owned");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        if let Err(e) =
            tpl.add_partition_offset(&lease.topic, lease.partition, Offset::Offset(next_offset))
        {
            tracing::warn!(error = %e, "cannot build commit list");
            return;
        }
        if matches!(mode, CommitMode::Sync) {
            drop(owned);
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            metrics::counter!(m::KAFKA_COMMIT_FAILURES, "topic" => lease.topic.clone())
                .increment(1);
            tracing::debug!(error = %e, topic = %lease.topic, partition = lease.partition, next_offset, "advisory Kafka commit failed");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, Owned>> {
        // A worker never panics while holding this lock; if one did, the map is
        // still consistent (every update is a single insert or remove).
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per-partition series disappear with the partition, so that two instances
/// never both report the same partition.
fn remove_partition_series(topic: &str, partition: i32) {
    let labels = [
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ];
    metrics::gauge!(m::CONSUMER_LAG_MESSAGES, &labels).set(0.0);
    metrics::gauge!(m::CONSUMER_LAG_SECONDS, &labels).set(0.0);
    metrics::gauge!(m::PARTITION_PAUSED, &labels).set(0.0);
}
