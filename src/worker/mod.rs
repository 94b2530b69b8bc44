//! One assigned partition's worker: receive → decode → batch → write → commit.
//!
//! A partition is processed in order, one batch at a time; partitions run in
//! parallel. The worker knows the offset PostgreSQL holds for its partition
//! (`expected`), and every batch moves it with a fence in the same transaction
//! as the batch's rows. Only after that commit does it commit to Kafka.
//!
//! The coordinator starts a worker once the partition's previous worker has
//! ended, and it is the only one: [`LiveWorkers`] counts them and reports any
//! overlap.

mod budget;
mod receive;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::TopicPartitionList;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::batch::{Batch, BatchLimits, Received};
use crate::blocking;
use crate::decode::Source;
use crate::decode::{self, Limits};
use crate::error::{Error, Reason};
use crate::health::Health;
use crate::kafka::commit::{self, Ownership};
use crate::kafka::consume::{self, Consumer};
use crate::kafka::lag::Lag;
use crate::kafka::rebalance::{Context, TopicPartition};
use crate::metric;
use crate::model::{Decoded, Origin, Sanitized};
use crate::pg::offsets::PartitionKey;
use crate::pg::write::{WriteStats, Writer};
use crate::poison::breaker::{Admission, Breakers, Probe};
use crate::poison::crashguard::{CrashGuard, InFlight};
use crate::poison::isolate;
use crate::poison::spool::Spool;
use crate::retry::{self, Policy};
use crate::shutdown::Stopper;

pub use budget::{Alive, Budget, FetchSlot, FetchSlots, LiveWorkers};

/// Gaps this small are what transaction markers leave; larger ones come from
/// compaction, retention or a reset, and are worth a warning.
const KNOWN_GAP: i64 = 2;

/// How long a partition keeps its fetch slot, batch after batch, while others
/// wait for one. Each turn ends by dropping what was prefetched (at most one
/// partition's prefetch, about a batch), so turns last several batches and
/// refetching stays a small share of fetching.
const SLOT_TURN: Duration = Duration::from_secs(2);

/// How long a partition may receive nothing before it counts as idle and
/// lets a waiting one fetch, when it has nothing left to fetch (or holds a
/// batch it can write now): several local fetch round trips.
const IDLE_TURN: Duration = Duration::from_millis(50);

/// How long a partition that has messages left to fetch waits for one
/// before it lets a waiting one fetch: past a broker's long poll
/// (`fetch.wait.max.ms`) and a slow round trip.
const FETCH_TURN: Duration = Duration::from_secs(1);

/// How long a resumed partition that has messages left to fetch waits for
/// its first one before it wakes librdkafka's fetcher
/// ([`crate::kafka::pause::wake_fetcher`]): past the default long poll (100
/// ms) of a fetch already in flight and a local round trip.
const WAKE_AFTER: Duration = Duration::from_millis(150);

/// How a worker decodes and batches.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub group: String,
    pub tenant_header: String,
    pub default_tenant: String,
    pub limits: Limits,
    pub batch: BatchLimits,
    pub retry: Policy,
    /// The sessions' `statement_timeout` (`--pg-statement-timeout`); zero: none.
    pub statement_timeout: Duration,
}

/// What every worker uses, shared.
pub struct Shared {
    pub settings: WorkerSettings,
    pub writer: Arc<Writer>,
    pub spool: Arc<Spool>,
    pub crash_guard: Arc<CrashGuard>,
    pub breakers: Arc<Breakers>,
    pub budget: Budget,
    pub fetch_slots: FetchSlots,
    pub lag: Arc<Lag>,
    pub health: Arc<Health>,
    /// Names this instance in dead letters and the ledger.
    pub instance: String,
    /// Poked after a commit that dead-lettered something, so the forwarder publishes it.
    pub dlq_wake: Arc<Notify>,
    pub stopper: Stopper,
    pub live: LiveWorkers,
}

/// One partition as its worker is given it.
pub struct Assigned {
    pub consumer: Arc<Consumer>,
    pub queue: StreamPartitionQueue<Context>,
    pub topic: String,
    pub partition: i32,
    pub source: Source,
    /// What PostgreSQL held when the partition was assigned.
    pub stored: Option<i64>,
    pub owned: Ownership,
    pub stop: CancellationToken,
    /// Cancelled once librdkafka holds the assignment (paused).
    pub assigned: CancellationToken,
}

enum Flow {
    Continue,
    Stop,
}

pub struct PartitionWorker {
    shared: Arc<Shared>,
    consumer: Arc<Consumer>,
    queue: StreamPartitionQueue<Context>,
    topic: String,
    partition: i32,
    source: Source,
    owned: Ownership,
    /// The partition's offset in PostgreSQL as this worker last read or wrote it.
    expected: Option<i64>,
    stop: CancellationToken,
    assigned: CancellationToken,
    /// A message received while the budget was exhausted, held for the next batch.
    carry: Option<Received>,
    paused: bool,
    /// Held while the partition may fetch; released whenever it pauses.
    slot: Option<FetchSlot>,
    /// When the slot was taken: a holder gives it up after a turn if others wait.
    slot_since: Instant,
    /// When the turn began or the last message arrived, whichever is later.
    quiet_since: Instant,
    /// Whether this turn has woken librdkafka's fetcher already.
    woken: bool,
    labels: [(&'static str, String); 2],
    /// Counted for every message: registered once rather than looked up by
    /// their labels each time.
    consumed: metrics::Counter,
    consumed_bytes: metrics::Counter,
}

impl PartitionWorker {
    pub fn new(shared: Arc<Shared>, assigned: Assigned) -> Self {
        let labels = [
            ("topic", assigned.topic.clone()),
            ("partition", assigned.partition.to_string()),
        ];
        let consumed = metrics::counter!(metric::MESSAGES_CONSUMED, &labels);
        let consumed_bytes = metrics::counter!(metric::BYTES_CONSUMED, &labels);
        PartitionWorker {
            shared,
            consumer: assigned.consumer,
            queue: assigned.queue,
            topic: assigned.topic,
            partition: assigned.partition,
            source: assigned.source,
            owned: assigned.owned,
            expected: assigned.stored,
            stop: assigned.stop,
            assigned: assigned.assigned,
            carry: None,
            paused: false,
            slot: None,
            slot_since: Instant::now(),
            quiet_since: Instant::now(),
            woken: false,
            labels,
            consumed,
            consumed_bytes,
        }
    }

    pub async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let _alive = shared.live.enter(&self.topic, self.partition);
        // Assignment leaves the partition paused ([`crate::kafka::rebalance`]);
        // it fetches once this worker has a fetch slot.
        tokio::select! {
            _ = self.assigned.cancelled() => {}
            _ = self.stop.cancelled() => {}
        }
        self.set_paused(true);
        loop {
            // Asked before fetching: a probe is a batch of one message. Fetching
            // starts once the partition holds a fetch slot.
            let Some(probe) = self.wait_for_breaker().await else {
                break;
            };
            let mut limits = self.shared.settings.batch;
            if probe.is_some() {
                limits.max_messages = 1;
            }
            let batch = self.collect(&limits).await;
            if !batch.is_empty() {
                let flow = self.process(batch, probe).await;
                // The batch, and the budget it held, is gone.
                self.shared.budget.record();
                if let Flow::Stop = flow {
                    break;
                }
                self.end_turn_if_others_wait(SLOT_TURN).await;
            }
            if self.stop.is_cancelled() {
                break;
            }
        }
        self.final_commit().await;
        tracing::debug!(topic = %self.topic, partition = self.partition, "worker stopped");
    }

    /// Fetches only while holding a fetch slot: waits for one, paused, when
    /// none is free. `false` when asked to stop meanwhile.
    async fn fetch(&mut self) -> bool {
        if self.slot.is_none() {
            let slots = Arc::clone(&self.shared);
            let slot = match slots.fetch_slots.try_take() {
                Some(slot) => slot,
                None => {
                    self.set_paused(true);
                    self.shared.lag.turn_over(&self.topic, self.partition);
                    let taken = tokio::select! {
                        slot = slots.fetch_slots.take() => slot,
                        _ = self.stop.cancelled() => None,
                    };
                    let Some(slot) = taken else { return false };
                    slot
                }
            };
            self.slot = Some(slot);
            self.slot_since = Instant::now();
            self.quiet_since = self.slot_since;
            self.woken = false;
        }
        self.set_paused(false);
        true
    }

    /// Gives the fetch slot up, pausing, when another partition waits for one
    /// and this one has had it for `turn`: slots go round, so every partition
    /// fetches however many there are. The next [`Self::fetch`] queues again.
    ///
    /// Under a backlog nearly every batch is closed by the budget, with the
    /// message that did not fit carried into the next one. That message is
    /// handed back to librdkafka ([`Self::hand_back_carry`]) rather than
    /// waited out: a turn that ended only after a batch with nothing carried
    /// would last until the partition ran dry, and the partitions behind it
    /// would wait for the whole backlog of those ahead.
    async fn end_turn_if_others_wait(&mut self, turn: Duration) {
        if self.slot.is_none()
            || self.slot_since.elapsed() < turn
            || !self.shared.fetch_slots.contended()
        {
            return;
        }
        self.set_paused(true);
        if self.carry.is_some() {
            self.hand_back_carry().await;
        }
    }

    /// Seeks the paused partition back to its carried message, which is then
    /// fetched again in its next turn, so that a partition waiting for a turn
    /// holds nothing outside the budget. The pause comes first: it moves
    /// librdkafka's next fetch to just past the carried message, and the seek
    /// then moves it back. If the seek fails, the message stays in hand and
    /// goes first in the next batch, as one carried out of a pause does.
    async fn hand_back_carry(&mut self) {
        let Some(offset) = self.carry.as_ref().map(|c| c.offset) else {
            return;
        };
        match self.seek(rdkafka::Offset::Offset(offset)).await {
            Ok(()) => {
                self.carry = None;
                // The seek made what was prefetched stale; free it now.
                self.drop_stale_prefetch();
            }
            Err(e) => {
                tracing::debug!(error = %e, offset, "cannot hand the carried message back; it waits in hand");
            }
        }
    }

    /// With nothing in hand and nothing received for a while, the turn goes
    /// to a waiting partition: soon when this one has nothing left to fetch,
    /// later when a fetch may still be on its way.
    async fn end_idle_turn_if_others_wait(&mut self) {
        let quiet = self.quiet_since.elapsed();
        if quiet < IDLE_TURN || !self.shared.fetch_slots.contended() {
            return;
        }
        if quiet >= FETCH_TURN || !self.lagging() {
            self.end_turn_if_others_wait(Duration::ZERO).await;
        }
    }

    /// Once a turn, a partition that has received nothing since it resumed,
    /// though it has messages left to fetch, wakes librdkafka's fetcher,
    /// which may otherwise sleep through the first second of the turn.
    fn wake_fetcher_if_stalled(&mut self) {
        let nothing_yet = self.quiet_since == self.slot_since;
        if self.woken
            || self.slot.is_none()
            || !nothing_yet
            || self.slot_since.elapsed() < WAKE_AFTER
            || !self.lagging()
        {
            return;
        }
        self.woken = true;
        tracing::debug!(topic = %self.topic, partition = self.partition, "nothing fetched since the partition resumed; waking the fetcher");
        crate::kafka::pause::wake_fetcher(&self.consumer, &self.topic, self.partition);
    }

    /// Whether the partition has messages beyond what PostgreSQL holds, as far
    /// as its last fetch knows.
    fn lagging(&self) -> bool {
        self.shared
            .lag
            .lagging_as_fetched(&self.consumer, &self.topic, self.partition)
    }

    fn set_paused(&mut self, paused: bool) {
        if self.paused == paused {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, paused, "cannot change the partition's fetch state");
            return;
        }
        self.paused = paused;
        if paused {
            // What the partition prefetched is fetched again on resume, and
            // the slot is free for another.
            self.slot = None;
            if self.carry.is_none() {
                self.drop_stale_prefetch();
            }
        }
        let delta = if paused { 1.0 } else { -1.0 };
        metrics::gauge!(metric::PAUSED_PARTITIONS).increment(delta);
        metrics::gauge!(metric::PARTITION_PAUSED, &self.labels).set(if paused { 1.0 } else { 0.0 });
    }

    /// Frees what the partition had prefetched ([`crate::kafka::pause`]).
    /// Called with no message carried.
    fn drop_stale_prefetch(&mut self) {
        match crate::kafka::pause::drop_stale(&self.queue) {
            // Not stale after all: it was delivered, so librdkafka's position
            // is past it, and it must reach a batch like any message received.
            Some(Ok(msg)) => self.carry = self.admit(&msg),
            Some(Err(e)) => self.note_fetch_error(&e),
            None => {}
        }
    }

    fn key(&self) -> PartitionKey<'_> {
        PartitionKey {
            group: &self.shared.settings.group,
            topic: &self.topic,
            partition: self.partition,
        }
    }

    /// Continues from what PostgreSQL holds: after a lost fence (another
    /// writer moved the offset) or a breaker that opened mid-batch. Drops what
    /// was fetched beyond it.
    async fn rewind(&mut self, stored: Option<i64>) -> Flow {
        self.carry = None;
        self.expected = stored;
        if let Some(next) = stored {
            self.shared
                .lag
                .record_commit(&self.topic, self.partition, next, None);
        }
        match self.seek(consume::start_offset(stored)).await {
            Ok(()) => Flow::Continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot rewind to the stored offset");
                self.stop_partition(stored, "cannot rewind to the stored offset")
                    .await
            }
        }
    }

    /// Moves librdkafka's next fetch of this partition to `offset`, on a
    /// blocking thread: the call waits for librdkafka's answer.
    async fn seek(&self, offset: rdkafka::Offset) -> crate::error::Result<()> {
        let consumer = self.consumer.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        blocking::run("seek", move || {
            Ok(consumer.seek(&topic, partition, offset, Duration::from_secs(10))?)
        })
        .await
    }

    /// The worker cannot go on without skipping: the partition stops, loudly,
    /// paused until revocation or shutdown, its offset where PostgreSQL has it.
    /// The next owner (or a restart) resumes there.
    async fn stop_partition(&mut self, stored: Option<i64>, why: &str) -> Flow {
        tracing::error!(stored = ?stored, why, "partition stopped; it resumes at the stored offset after a rebalance or restart");
        metrics::gauge!(metric::STOPPED_PARTITIONS).increment(1.0);
        self.set_paused(true);
        self.stop.cancelled().await;
        metrics::gauge!(metric::STOPPED_PARTITIONS).decrement(1.0);
        self.set_paused(false);
        Flow::Stop
    }

    /// On stop, a synchronous commit, so the group's offset is current before the
    /// partition is handed over or the consumer closes.
    async fn final_commit(&mut self) {
        if self.paused {
            self.set_paused(false);
        }
        let Some(next) = self.expected else { return };
        let (consumer, owned, topic, partition) = (
            self.consumer.clone(),
            self.owned.clone(),
            self.topic.clone(),
            self.partition,
        );
        let committed = blocking::run("final offset commit", move || {
            commit::commit(&consumer, &owned, &topic, partition, next, CommitMode::Sync);
            Ok(())
        })
        .await;
        if let Err(e) = committed {
            self.shared.stopper.fail(e);
        }
    }
}
