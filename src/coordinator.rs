//! Partition ownership, in one place.
//!
//! The coordinator is the only owner of partition state. The rebalance
//! callback sends it events and waits for the answer
//! ([`crate::kafka::rebalance`]); it reads start offsets from PostgreSQL, and
//! starts, drains and stops workers. One event is handled at a time, to the
//! end, so every transition of a partition is one step of one task:
//!
//! ```text
//!             assign                        revoke                   ended
//!  (none) ─────────────► Starting ──► Consuming ────────► Draining ─────────► Stopped
//!                        offsets read,      │ lost                   (joined, or aborted
//!                        queue split        └──────────► Lost ─────► at the drain deadline
//!                                           ownership withdrawn,     and awaited)
//!                                           aborted at once
//! ```
//!
//! A partition has at most one live worker: a new worker starts only after
//! the previous one's task has ended and its partition queue has been dropped
//! (dropping that handle clears the callback on librdkafka's shared queue, so
//! an old handle dropped after a new split would silence the new worker).
//! On a lost assignment the worker is stopped at once; a statement it was
//! running is cancelled and its connection discarded (see `pg::write`), and
//! the offset fence makes whatever it may still commit harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::decode::Source;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::kafka::commit::{remove_partition_series, Ownership};
use crate::kafka::consume::Consumer;
use crate::kafka::rebalance::{RebalanceEvent, TopicPartition};
use crate::metric;
use crate::pg::offsets::{self, PartitionKey};
use crate::retry;
use crate::shutdown::Stopper;
use crate::worker::{Assigned, PartitionWorker, Shared};

/// Where a partition is in its life on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Assigned: its previous worker is being awaited and its offset read.
    Starting,
    /// Its worker runs.
    Consuming,
    /// Revoked: its worker finishes its batch, commits and ends.
    Draining,
    /// Lost to another member: its worker is stopped at once.
    Lost,
    /// Its worker has ended; the partition is no longer this instance's.
    Stopped,
}

/// A partition with a worker.
struct Running {
    stop: CancellationToken,
    owned: Ownership,
    task: JoinHandle<()>,
}

pub struct Coordinator {
    consumer: Arc<Consumer>,
    events: UnboundedReceiver<RebalanceEvent>,
    shared: Arc<Shared>,
    pool: Pool,
    topics: HashMap<String, Source>,
    running: HashMap<TopicPartition, Running>,
    drain_timeout: Duration,
    health: Arc<Health>,
    stopper: Stopper,
}

pub struct CoordinatorConfig {
    pub consumer: Arc<Consumer>,
    pub events: UnboundedReceiver<RebalanceEvent>,
    pub shared: Arc<Shared>,
    pub pool: Pool,
    pub topics: HashMap<String, Source>,
    pub drain_timeout: Duration,
    pub health: Arc<Health>,
    pub stopper: Stopper,
}

impl Coordinator {
    pub fn new(c: CoordinatorConfig) -> Self {
        Coordinator {
            consumer: c.consumer,
            events: c.events,
            shared: c.shared,
            pool: c.pool,
            topics: c.topics,
            running: HashMap::new(),
            drain_timeout: c.drain_timeout,
            health: c.health,
            stopper: c.stopper,
        }
    }

    /// Serves rebalance events until shutdown, then drains every worker.
    /// Dropping the coordinator afterwards releases any callback still
    /// waiting on it.
    pub async fn run(mut self) {
        let stop = self.stopper.token().clone();
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                _ = stop.cancelled() => break,
                _ = watch.tick() => self.watch_workers().await,
            }
        }
        let all: Vec<TopicPartition> = self.running.keys().cloned().collect();
        self.end(&all, false).await;
        tracing::info!("every partition worker has ended");
    }

    async fn handle(&mut self, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Assign {
                partitions,
                reply,
                assigned,
            } => {
                self.health.set_joined();
                if let Some(offsets) = self.assign(&partitions, &assigned).await {
                    // The callback may be gone if the group moved on; nothing to undo.
                    let _ = reply.send(offsets);
                }
            }
            RebalanceEvent::Revoke {
                partitions,
                lost,
                done,
            } => {
                tracing::info!(partitions = ?partitions, lost, "partitions revoked");
                self.end(&partitions, lost).await;
                drop(done);
            }
        }
    }

    /// Starting → Consuming for each partition. `None` when asked to stop
    /// before the offsets could be read: nothing is started.
    async fn assign(
        &mut self,
        partitions: &[TopicPartition],
        assigned: &CancellationToken,
    ) -> Option<Vec<Option<i64>>> {
        let leftovers: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| self.running.contains_key(*tp))
            .cloned()
            .collect();
        if !leftovers.is_empty() {
            // Assigned again without a revocation in between: the old worker
            // ends before a new one may start.
            tracing::warn!(partitions = ?leftovers, "assigned partitions that still had workers; stopping them first");
            self.end(&leftovers, true).await;
        }
        for (topic, partition) in partitions {
            transition(topic, *partition, Phase::Starting);
        }
        let stored = self.read_offsets(partitions).await?;
        for ((topic, partition), offset) in partitions.iter().zip(&stored) {
            self.start(topic, *partition, *offset, assigned);
        }
        metrics::gauge!(metric::ASSIGNED_PARTITIONS).set(self.running.len() as f64);
        Some(stored)
    }

    fn start(
        &mut self,
        topic: &str,
        partition: i32,
        stored: Option<i64>,
        assigned: &CancellationToken,
    ) {
        let Some(source) = self.topics.get(topic).copied() else {
            tracing::error!(topic, "assigned a topic that was not subscribed");
            return;
        };
        if self.shared.live.count(topic, partition) > 0 {
            // Never: every worker of this partition was awaited. Refusing keeps the
            // promise even so; the partition then waits for the next rebalance.
            self.stopper.fail(Error::Internal(format!(
                "a worker of {topic}/{partition} is still alive at assignment"
            )));
            return;
        }
        let Some(queue) = self.consumer.split_partition_queue(topic, partition) else {
            tracing::error!(topic, partition, "cannot split the partition queue");
            return;
        };
        let stop = self.stopper.token().child_token();
        let owned = Ownership::new();
        self.shared.lag.assigned(topic, partition, stored);
        metric::init_partition(topic, partition);
        let worker = PartitionWorker::new(
            Arc::clone(&self.shared),
            Assigned {
                consumer: Arc::clone(&self.consumer),
                queue,
                topic: topic.to_string(),
                partition,
                source,
                stored,
                owned: owned.clone(),
                stop: stop.clone(),
                assigned: assigned.clone(),
            },
        );
        let task = tokio::spawn(worker.run());
        self.running.insert(
            (topic.to_string(), partition),
            Running { stop, owned, task },
        );
        tracing::info!(topic, partition, stored_offset = ?stored, "partition assigned");
        transition(topic, partition, Phase::Consuming);
    }

    /// Consuming → Draining (or Lost) → Stopped for each partition: returns
    /// once every one of their workers has ended.
    async fn end(&mut self, partitions: &[TopicPartition], lost: bool) {
        let phase = if lost { Phase::Lost } else { Phase::Draining };
        let mut ending = Vec::new();
        for tp in partitions {
            let Some(run) = self.running.remove(tp) else {
                continue;
            };
            transition(&tp.0, tp.1, phase);
            if lost {
                // Nothing may be committed for it any more, in Kafka or PostgreSQL.
                run.owned.withdraw();
                run.task.abort();
            }
            run.stop.cancel();
            ending.push((tp.clone(), run.task));
        }
        let timeout = if lost {
            Duration::ZERO
        } else {
            self.drain_timeout
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ended = Vec::with_capacity(ending.len());
        let mut late = Vec::new();
        for (tp, mut task) in ending {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(_) => ended.push(tp),
                Err(_) => late.push((tp, task)),
            }
        }
        if !late.is_empty() && !lost {
            tracing::warn!(timeout = ?timeout, partitions = late.len(), "partitions did not drain in time; their batches roll back and will be consumed again");
        }
        // Aborted or not, every task is awaited: its queue and its connection
        // are gone before anything else may happen to the partition.
        for (_, task) in &late {
            task.abort();
        }
        for (tp, task) in late {
            let _ = task.await;
            ended.push(tp);
        }
        for (topic, partition) in ended {
            self.shared.lag.revoked(&topic, partition);
            remove_partition_series(&topic, partition);
            transition(&topic, partition, Phase::Stopped);
        }
        metrics::gauge!(metric::ASSIGNED_PARTITIONS).set(self.running.len() as f64);
        // Ended workers, aborted ones too, gave their batches' budget back.
        self.shared.budget.record();
    }

    /// A worker ends on its own only after a fatal error (already reported)
    /// or a panic outside the per-message guards: a bug, which stops the process.
    async fn watch_workers(&mut self) {
        let ended: Vec<TopicPartition> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in ended {
            let Some(run) = self.running.remove(&tp) else {
                continue;
            };
            if let Err(e) = run.task.await {
                if e.is_panic() {
                    let why = crate::error::panic_message(&e.into_panic());
                    self.stopper.fail(Error::Internal(format!(
                        "the worker of {}/{} panicked: {why}",
                        tp.0, tp.1
                    )));
                }
            }
            self.shared.lag.revoked(&tp.0, tp.1);
            remove_partition_series(&tp.0, tp.1);
            transition(&tp.0, tp.1, Phase::Stopped);
        }
    }

    /// The offsets to start from, read once no transaction is moving them,
    /// retried while PostgreSQL is unavailable. `None` on shutdown or a fatal error.
    async fn read_offsets(&self, partitions: &[TopicPartition]) -> Option<Vec<Option<i64>>> {
        let stop = self.stopper.token();
        let read = retry::until_ok(
            "reading stored offsets",
            stop,
            self.shared.settings.retry,
            |_| async {
                // A read waiting on a locked row must not hold up shutdown.
                tokio::select! {
                    read = self.try_read_offsets(partitions) => read,
                    _ = stop.cancelled() => Err(Error::Shutdown),
                }
            },
        )
        .await;
        match read {
            Ok(v) => Some(v),
            Err(Error::Shutdown) => None,
            Err(e) => {
                self.stopper.fail(e);
                None
            }
        }
    }

    async fn try_read_offsets(&self, partitions: &[TopicPartition]) -> Result<Vec<Option<i64>>> {
        let client = self.pool.get().await?;
        let mut out = Vec::with_capacity(partitions.len());
        for (topic, partition) in partitions {
            let key = PartitionKey {
                group: &self.shared.settings.group,
                topic,
                partition: *partition,
            };
            out.push(offsets::read_settled(&**client, &key).await?);
        }
        Ok(out)
    }
}

fn transition(topic: &str, partition: i32, to: Phase) {
    tracing::debug!(topic, partition, phase = ?to, "partition");
}
