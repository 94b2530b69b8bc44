//! Wires the stages: one consumer, one worker per assigned partition.
//!
//! The main loop only polls the consumer's main queue, which serves rebalances
//! and errors and keeps `max.poll.interval.ms` satisfied even while every
//! partition is paused. Messages flow through per-partition queues, split off at
//! assignment, to [`crate::partition`] workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{Encoding, KafkaArgs};
use crate::error::{Class, Error, Result};
use crate::health::Health;
use crate::kafka::commit::{Assignments, TopicPartition};
use crate::kafka::consume::{self, Consumer};
use crate::kafka::lag::Lag;
use crate::kafka::rebalance::Context;
use crate::metrics as m;
use crate::partition::{PartitionWorker, WorkerSettings};
use crate::pg::offsets::{self, PartitionKey};
use crate::pg::write::Writer;
use crate::poison::breaker::Breakers;
use crate::poison::crashguard::CrashGuard;
use crate::poison::spool::Spool;
use crate::retry::Backoff;

pub struct Pipeline {
    pub settings: Arc<WorkerSettings>,
    topics: HashMap<String, Encoding>,
    pool: deadpool_postgres::Pool,
    pub writer: Arc<Writer>,
    consumer: OnceLock<Weak<Consumer>>,
    pub assignments: Assignments,
    /// The in-flight budget for batches, in KiB (semaphore permits are u32).
    pub budget: Arc<Semaphore>,
    pub budget_kib: u32,
    shutdown: CancellationToken,
    fatal: Mutex<Option<Error>>,
    pub health: Arc<Health>,
    runtime: Handle,
    drain_timeout: Duration,
    pub lag: Lag,
    pub spool: Arc<Spool>,
    pub crash_guard: Arc<CrashGuard>,
    pub breakers: Arc<Breakers>,
    /// Names this instance in dead letters.
    pub instance: String,
    /// Poked after a commit that spooled a dead letter, so the drainer publishes it.
    pub dlq_wake: Arc<Notify>,
}

pub struct PipelineConfig {
    pub settings: WorkerSettings,
    pub topics: HashMap<String, Encoding>,
    pub pool: deadpool_postgres::Pool,
    pub writer: Arc<Writer>,
    pub inflight_budget_bytes: usize,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
    pub drain_timeout: Duration,
    pub spool: Arc<Spool>,
    pub crash_guard: Arc<CrashGuard>,
    pub breakers: Arc<Breakers>,
    pub instance: String,
    pub dlq_wake: Arc<Notify>,
}

impl Pipeline {
    pub fn new(config: PipelineConfig) -> Arc<Self> {
        let budget_kib = u32::try_from(config.inflight_budget_bytes / 1024)
            .unwrap_or(u32::MAX)
            .max(1);
        Arc::new(Pipeline {
            settings: Arc::new(config.settings),
            topics: config.topics,
            pool: config.pool,
            writer: config.writer,
            consumer: OnceLock::new(),
            assignments: Assignments::default(),
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            shutdown: config.shutdown,
            fatal: Mutex::new(None),
            health: config.health,
            runtime: Handle::current(),
            drain_timeout: config.drain_timeout,
            lag: Lag::default(),
            spool: config.spool,
            crash_guard: config.crash_guard,
            breakers: config.breakers,
            instance: config.instance,
            dlq_wake: config.dlq_wake,
        })
    }

    /// Records a fatal error and starts shutdown; `run` returns it.
    pub fn fail(&self, err: Error) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            tracing::error!(error = %err, "fatal: shutting down");
            *fatal = Some(err);
        }
        self.shutdown.cancel();
    }

    fn consumer(&self) -> Option<Arc<Consumer>> {
        self.consumer.get().and_then(Weak::upgrade)
    }

    /// Consumes until shutdown or a fatal error, then drains and leaves the group.
    pub async fn run(self: &Arc<Self>, kafka: &KafkaArgs, group_id: &str) -> Result<()> {
        let prefetch = self.budget_kib as usize * 1024;
        let config =
            consume::consumer_config(kafka, group_id, prefetch, self.settings.batch.max_bytes);
        let consumer = consume::create(&config, Context::new(self.clone()))?;
        // Set once, before subscribing: rebalance callbacks need it to split queues.
        let _ = self.consumer.set(Arc::downgrade(&consumer));

        let topics: Vec<String> = self.topics.keys().cloned().collect();
        let health = self.health.clone();
        match consume::wait_for_topics(
            &consumer,
            &topics,
            |missing| health.set_topics_missing(missing),
            &self.shutdown,
        )
        .await
        {
            Ok(()) => {}
            Err(Error::Shutdown) => return self.take_fatal(),
            Err(e) => return Err(e),
        }
        for topic in &topics {
            crate::metrics::init_topic(topic);
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| Error::config("--traces-topic", e.to_string()))?;
        tracing::info!(topics = ?topics, group = group_id, "subscribed");

        self.poll_main_queue(&consumer).await;
        self.drain(consumer).await;
        self.take_fatal()
    }

    async fn poll_main_queue(&self, consumer: &Arc<Consumer>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => self.tick(),
                received = consumer.recv() => match received {
                    Ok(msg) => {
                        // Every assigned partition has its own queue; a message here means
                        // a partition was not split. Rewind it rather than drop it.
                        let (topic, partition, offset) = (msg.topic().to_string(), msg.partition(), msg.offset());
                        drop(msg);
                        tracing::error!(topic, partition, offset, "message on the main queue; rewinding the partition");
                        let c = consumer.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            c.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(10))
                        }).await;
                    }
                    Err(e) => {
                        let err = Error::Kafka(e);
                        if err.class() == Class::Fatal {
                            self.fail(err);
                        } else {
                            tracing::warn!(error = %err, "consumer error");
                        }
                    }
                },
            }
        }
    }

    /// Once a second: liveness, readiness inputs, and gauges that must stay
    /// truthful while nothing moves.
    fn tick(&self) {
        self.health.heartbeat();
        self.health.set_spool_full(self.spool.is_full());
        self.health
            .set_breaker_open(!self.breakers.open_topics().is_empty());
        self.spool.record_metrics();
        self.lag.publish(std::time::SystemTime::now());
    }

    /// Stops every worker (each finishes its in-flight batch and commits), then
    /// closes the consumer, which leaves the group.
    async fn drain(&self, consumer: Arc<Consumer>) {
        let parts = self.assignments.all();
        let tasks = self.assignments.stop(&parts);
        if !wait_or_abort(tasks, self.drain_timeout).await {
            tracing::error!(timeout = ?self.drain_timeout, "shutdown deadline passed with batches in flight; they roll back and will be consumed again");
        }
        self.assignments.release(&parts);
        // Closing blocks while librdkafka leaves the group: off the async workers.
        let closed = tokio::task::spawn_blocking(move || drop(consumer)).await;
        if closed.is_err() {
            tracing::warn!("consumer close panicked");
        }
        tracing::info!("consumer closed");
    }

    fn take_fatal(&self) -> Result<()> {
        match self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Assignment: read each partition's offset from PostgreSQL, split its queue
    /// and start its worker, then let librdkafka assign at those offsets.
    pub fn on_assign(self: &Arc<Self>, tpl: &mut TopicPartitionList) {
        self.health.set_joined();
        let parts = partitions_of(tpl);
        metrics::counter!(m::REBALANCES, "kind" => "assign").increment(1);
        if parts.is_empty() {
            return;
        }
        let Some(consumer) = self.consumer() else {
            tracing::error!("assignment after the consumer was dropped");
            return;
        };
        let stored =
            tokio::task::block_in_place(|| self.runtime.block_on(self.read_offsets(&parts)));
        let Ok(stored) = stored else {
            return; // shutting down; nothing will be consumed
        };
        for ((topic, partition), offset) in parts.iter().zip(&stored) {
            let start = offset.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(topic, *partition, start) {
                tracing::error!(error = %e, topic, partition, "cannot set start offset");
            }
        }
        for ((topic, partition), offset) in parts.into_iter().zip(stored) {
            let Some(encoding) = self.topics.get(&topic).copied() else {
                tracing::error!(topic, "assigned a topic that was not subscribed");
                continue;
            };
            let Some(queue) = consumer.split_partition_queue(&topic, partition) else {
                tracing::error!(topic, partition, "cannot split the partition queue");
                continue;
            };
            let stop = self.shutdown.child_token();
            let lease = self.assignments.acquire(&topic, partition, stop.clone());
            self.lag.assigned(&topic, partition, offset);
            crate::metrics::init_partition(&topic, partition);
            tracing::info!(topic, partition, stored_offset = ?offset, "partition assigned");
            let worker = PartitionWorker::new(
                self.clone(),
                consumer.clone(),
                queue,
                lease.clone(),
                encoding,
                offset,
                stop,
            );
            let task = self.runtime.spawn(worker.run());
            self.assignments.attach(&lease, task);
        }
    }

    /// Revocation: ask the workers to finish their batch and commit, wait for
    /// them up to the drain timeout, and only then give the partitions up. A lost
    /// assignment gives them up first: nothing may commit for them any more.
    pub fn on_revoke(&self, tpl: &TopicPartitionList, lost: bool) {
        let parts = partitions_of(tpl);
        let kind = if lost { "lost" } else { "revoke" };
        metrics::counter!(m::REBALANCES, "kind" => kind).increment(1);
        tracing::info!(partitions = ?parts, lost, "partitions revoked");
        if lost {
            self.assignments.release(&parts);
        }
        let tasks = self.assignments.stop(&parts);
        let timeout = if lost {
            Duration::ZERO
        } else {
            self.drain_timeout
        };
        let drained =
            tokio::task::block_in_place(|| self.runtime.block_on(wait_or_abort(tasks, timeout)));
        if !drained && !lost {
            tracing::warn!(timeout = ?timeout, "revoked partitions did not drain in time; their batches roll back");
        }
        self.assignments.release(&parts);
        for (topic, partition) in &parts {
            self.lag.revoked(topic, *partition);
        }
    }

    async fn read_offsets(&self, parts: &[TopicPartition]) -> Result<Vec<Option<i64>>> {
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        loop {
            match self.try_read_offsets(parts).await {
                Ok(v) => return Ok(v),
                Err(e) if e.class() == Class::Fatal => {
                    self.fail(e);
                    return Err(Error::Shutdown);
                }
                Err(e) => {
                    metrics::counter!(m::TRANSIENT_RETRIES, "kind" => e.transient_kind())
                        .increment(1);
                    tracing::warn!(error = %e, "cannot read stored offsets; retrying");
                    backoff.wait(&self.shutdown).await?;
                }
            }
        }
    }

    async fn try_read_offsets(&self, parts: &[TopicPartition]) -> Result<Vec<Option<i64>>> {
        let client = self.pool.get().await?;
        let mut out = Vec::with_capacity(parts.len());
        for (topic, partition) in parts {
            let key = PartitionKey {
                group: &self.settings.group,
                topic,
                partition: *partition,
            };
            out.push(offsets::read(&**client, &key).await?);
        }
        Ok(out)
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// Waits for the tasks up to `timeout`, then aborts the rest. True if all finished.
async fn wait_or_abort(tasks: Vec<tokio::task::JoinHandle<()>>, timeout: Duration) -> bool {
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    let finished = tokio::time::timeout(timeout, futures::future::join_all(tasks))
        .await
        .is_ok();
    if !finished {
        aborts.iter().for_each(|a| a.abort());
    }
    finished
}
