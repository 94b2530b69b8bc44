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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::batch::{Batch, BatchLimits, Received};
use crate::blocking;
use crate::decode::Encoding;
use crate::decode::{self, Limits};
use crate::error::{Error, Reason};
use crate::health::Health;
use crate::kafka::commit::{self, Ownership};
use crate::kafka::consume::Consumer;
use crate::kafka::lag::Lag;
use crate::kafka::rebalance::{Context, TopicPartition};
use crate::metric;
use crate::model::{DecodedTraces, Sanitized};
use crate::pg::offsets::PartitionKey;
use crate::pg::write::{WriteStats, Writer};
use crate::poison::breaker::{Admission, Breakers, Probe};
use crate::poison::crashguard::{CrashGuard, InFlight};
use crate::poison::isolate;
use crate::poison::spool::Spool;
use crate::retry::{self, Policy};
use crate::shutdown::Stopper;

/// Gaps this small are what transaction markers leave; larger ones come from
/// compaction, retention or a reset, and are worth a warning.
const KNOWN_GAP: i64 = 2;

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

/// The memory budget for batches, in KiB (semaphore permits are u32).
#[derive(Debug)]
pub struct Budget {
    semaphore: Arc<Semaphore>,
    kib: u32,
}

impl Budget {
    pub fn new(bytes: usize) -> Self {
        let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Budget {
            semaphore: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    fn permits_for(&self, bytes: usize) -> u32 {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        kib.clamp(1, self.kib)
    }

    fn record(&self) {
        let free = self.semaphore.available_permits() as f64;
        let used = (f64::from(self.kib) - free).max(0.0) * 1024.0;
        metrics::gauge!(metric::INFLIGHT_BYTES).set(used);
    }
}

/// Counts the live workers of each partition: the coordinator's promise is at
/// most one, and this is where a broken promise would show.
#[derive(Debug, Default)]
pub struct LiveWorkers {
    live: Mutex<HashMap<TopicPartition, usize>>,
}

/// One live worker; dropping it (the task ended or was aborted) ends it.
#[derive(Debug)]
pub struct Alive<'a> {
    workers: &'a LiveWorkers,
    partition: TopicPartition,
}

impl LiveWorkers {
    fn enter(&self, topic: &str, partition: i32) -> Alive<'_> {
        let key = (topic.to_string(), partition);
        let n = {
            let mut live = self.lock();
            let n = live.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        if n > 1 {
            metrics::counter!(metric::PARTITION_WORKER_OVERLAPS).increment(1);
            tracing::error!(
                topic,
                partition,
                live = n,
                "two workers of one partition are alive: a bug; its offsets are still fenced"
            );
        }
        Self::publish(&key, n);
        Alive {
            workers: self,
            partition: key,
        }
    }

    /// Live workers of a partition.
    pub fn count(&self, topic: &str, partition: i32) -> usize {
        self.lock()
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    fn publish(key: &TopicPartition, n: usize) {
        let labels = [("topic", key.0.clone()), ("partition", key.1.to_string())];
        metrics::gauge!(metric::PARTITION_WORKERS, &labels).set(n as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, usize>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        let mut live = self.workers.lock();
        let n = live.get(&self.partition).copied().unwrap_or(1) - 1;
        if n == 0 {
            live.remove(&self.partition);
        } else {
            live.insert(self.partition.clone(), n);
        }
        LiveWorkers::publish(&self.partition, n);
    }
}

/// What every worker uses, shared.
pub struct Shared {
    pub settings: WorkerSettings,
    pub writer: Arc<Writer>,
    pub spool: Arc<Spool>,
    pub crash_guard: Arc<CrashGuard>,
    pub breakers: Arc<Breakers>,
    pub budget: Budget,
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
    pub encoding: Encoding,
    /// What PostgreSQL held when the partition was assigned.
    pub stored: Option<i64>,
    pub owned: Ownership,
    pub stop: CancellationToken,
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
    encoding: Encoding,
    owned: Ownership,
    /// The partition's offset in PostgreSQL as this worker last read or wrote it.
    expected: Option<i64>,
    stop: CancellationToken,
    /// A message received while the budget was exhausted, held for the next batch.
    carry: Option<Received>,
    paused: bool,
    labels: [(&'static str, String); 2],
}

impl PartitionWorker {
    pub fn new(shared: Arc<Shared>, assigned: Assigned) -> Self {
        let labels = [
            ("topic", assigned.topic.clone()),
            ("partition", assigned.partition.to_string()),
        ];
        PartitionWorker {
            shared,
            consumer: assigned.consumer,
            queue: assigned.queue,
            topic: assigned.topic,
            partition: assigned.partition,
            encoding: assigned.encoding,
            owned: assigned.owned,
            expected: assigned.stored,
            stop: assigned.stop,
            carry: None,
            paused: false,
            labels,
        }
    }

    pub async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let _alive = shared.live.enter(&self.topic, self.partition);
        // A worker that ended paused would leave the partition paused: assignment
        // clears only librdkafka's own pause, not the application's.
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        if let Err(e) = self.consumer.resume(&tpl) {
            tracing::warn!(error = %e, topic = %self.topic, partition = self.partition, "cannot resume the assigned partition");
        }
        loop {
            // Asked before fetching: a probe is a batch of one message.
            let Some(probe) = self.wait_for_breaker().await else {
                break;
            };
            let mut limits = self.shared.settings.batch;
            if probe.is_some() {
                limits.max_messages = 1;
            }
            let batch = self.collect(&limits).await;
            if !batch.is_empty() {
                if let Flow::Stop = self.process(batch, probe).await {
                    break;
                }
            }
            if self.stop.is_cancelled() {
                break;
            }
        }
        self.final_commit().await;
        tracing::debug!(topic = %self.topic, partition = self.partition, "worker stopped");
    }

    /// Fills one batch: until it is full, its linger runs out, or the worker is
    /// asked to stop (then what was collected is still written).
    async fn collect(&mut self, limits: &BatchLimits) -> Batch {
        let mut batch = Batch::new();
        if let Some(p) = self.carry.take() {
            let permit = self.reserve_blocking(p.budget_bytes()).await;
            batch.push(p, permit);
        }
        while !batch.is_full(limits) {
            let linger_end = batch
                .deadline(limits)
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            if batch.is_empty() {
                self.shared.lag.idle(&self.topic, self.partition, true);
            }
            let pending = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep_until(linger_end), if !batch.is_empty() => break,
                received = self.queue.recv() => match received {
                    Ok(msg) => {
                        self.shared.lag.idle(&self.topic, self.partition, false);
                        self.admit(&msg)
                    }
                    Err(e) => {
                        if let Some(held_back) = crate::logcap::allow("fetch error") {
                            tracing::warn!(error = %e, topic = %self.topic, partition = self.partition, held_back, "fetch error");
                        }
                        None
                    }
                },
            };
            let Some(pending) = pending else { continue };
            match self.try_reserve(pending.budget_bytes()) {
                Some(permit) => batch.push(pending, Some(permit)),
                None if !batch.is_empty() => {
                    // Out of budget with a batch in hand: write it now, which frees
                    // budget, instead of waiting while holding some.
                    self.carry = Some(pending);
                    break;
                }
                None => {
                    let permit = self.reserve_blocking(pending.budget_bytes()).await;
                    batch.push(pending, permit);
                }
            }
        }
        batch
    }

    /// Copies one message out of librdkafka; `None` for a message below the
    /// stored offset, which is already committed.
    fn admit(&self, msg: &BorrowedMessage<'_>) -> Option<Received> {
        let offset = msg.offset();
        let payload = msg.payload().unwrap_or_default();
        metrics::counter!(metric::MESSAGES_CONSUMED, &self.labels).increment(1);
        metrics::counter!(metric::BYTES_CONSUMED, &self.labels).increment(payload.len() as u64);
        if let Some(expected) = self.expected {
            if offset < expected {
                metrics::counter!(metric::MESSAGES_BELOW_STORED_OFFSET, &self.labels).increment(1);
                if let Some(held_back) = crate::logcap::allow("message below the stored offset") {
                    tracing::warn!(topic = %self.topic, partition = self.partition, offset, stored = expected, held_back,
                        "message below the stored offset skipped as already committed (was the topic recreated?)");
                }
                return None;
            }
        }
        let settings = &self.shared.settings;
        let mut headers = Vec::new();
        let mut tenant_header = None;
        if let Some(hs) = msg.headers() {
            for h in hs.iter() {
                // Header names compare case-insensitively: gRPC metadata, which the
                // Collector can forward into Kafka headers, is lowercase.
                if tenant_header.is_none() && h.key.eq_ignore_ascii_case(&settings.tenant_header) {
                    tenant_header = Some(h.value.unwrap_or_default().to_vec());
                }
                headers.push((h.key.to_string(), h.value.map(<[u8]>::to_vec)));
            }
        }
        let tenant = crate::tenant::resolve(tenant_header.as_deref(), &settings.default_tenant);
        // Counted now, so that the budget covers what decoding will make of it.
        let decoded = decode::scan_traces(payload, self.encoding, &settings.limits)
            .map(|counts| counts.decoded_bytes(payload.len()));
        Some(Received {
            offset,
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            headers,
            payload: payload.to_vec(),
            tenant,
            decoded,
        })
    }

    fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let budget = &self.shared.budget;
        let n = budget.permits_for(bytes);
        let permit = budget.semaphore.clone().try_acquire_many_owned(n).ok();
        budget.record();
        permit
    }

    /// Waits for budget with fetching paused, so that librdkafka stops fetching
    /// this partition while the main queue keeps being polled.
    async fn reserve_blocking(&mut self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if let Some(p) = self.try_reserve(bytes) {
            return Some(p);
        }
        let budget = Arc::clone(&self.shared);
        let n = budget.budget.permits_for(bytes);
        self.set_paused(true);
        let permit = tokio::select! {
            p = budget.budget.semaphore.clone().acquire_many_owned(n) => p.ok(),
            _ = self.stop.cancelled() => None,
        };
        self.set_paused(false);
        budget.budget.record();
        permit
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
        let delta = if paused { 1.0 } else { -1.0 };
        metrics::gauge!(metric::PAUSED_PARTITIONS).increment(delta);
        metrics::gauge!(metric::PARTITION_PAUSED, &self.labels).set(if paused { 1.0 } else { 0.0 });
    }

    fn key(&self) -> PartitionKey<'_> {
        PartitionKey {
            group: &self.shared.settings.group,
            topic: &self.topic,
            partition: self.partition,
        }
    }

    /// Writes one batch: every message ends committed or dead-lettered, in order;
    /// transient failures are retried, never skipped.
    async fn process(&mut self, batch: Batch, probe: Option<Probe>) -> Flow {
        let (Some(first), Some(next_offset)) = (batch.first_offset(), batch.next_offset()) else {
            return Flow::Continue;
        };
        let span = tracing::info_span!("batch", topic = %self.topic, partition = self.partition,
            first_offset = first, last_offset = next_offset - 1, tenants = batch.tenant_count());
        self.write(batch, first, next_offset, probe)
            .instrument(span)
            .await
    }

    async fn write(
        &mut self,
        batch: Batch,
        first: i64,
        next_offset: i64,
        probe: Option<Probe>,
    ) -> Flow {
        self.note_gap(first);
        self.shared
            .lag
            .pending(&self.topic, self.partition, self.oldest_plausible(&batch));
        if let Flow::Stop = self.wait_for_spool_room().await {
            return Flow::Stop;
        }
        let threshold = self.shared.crash_guard.threshold();
        let Some(mut in_flight) = self.guard_begin(first, next_offset - 1).await else {
            return Flow::Stop;
        };
        let started = Instant::now();
        let crashes = in_flight.crashes();
        let flow = if crashes < threshold {
            self.write_messages(&batch.messages, &mut in_flight, probe.as_ref(), started)
                .await
        } else {
            metrics::counter!(metric::CRASH_GUARD_RANGES, "topic" => self.topic.clone())
                .increment(1);
            tracing::warn!(crashes, "the process died while this range was in flight: processing it one message at a time");
            // The batch's record stays in flight meanwhile: the first message's own
            // record takes its crash counts over, convicting only a message that
            // killed the process alone.
            self.write_one_by_one(&batch.messages, probe.as_ref()).await
        };
        drop(in_flight);
        if self.expected == Some(next_offset) {
            self.advance_past(&batch, next_offset);
        }
        flow
    }

    /// The range killed the process before: each message alone, each guarded,
    /// and a message that killed it `threshold` times is dead-lettered unread.
    async fn write_one_by_one(&mut self, messages: &[Received], probe: Option<&Probe>) -> Flow {
        for message in messages {
            if self.expected.is_some_and(|e| message.offset < e) {
                continue;
            }
            let threshold = self.shared.crash_guard.threshold();
            let Some(mut in_flight) = self.guard_begin(message.offset, message.offset).await else {
                return Flow::Stop;
            };
            let crashes = in_flight.crashes();
            let one = std::slice::from_ref(message);
            let flow = if crashes >= threshold {
                let err = Error::input(
                    Reason::CrashLoop,
                    format!("the process died {crashes} times while this message alone was being processed"),
                );
                in_flight.set_waiting(true);
                self.commit_decoded(one, vec![Err(err)], probe, Instant::now())
                    .await
            } else {
                self.write_messages(one, &mut in_flight, probe, Instant::now())
                    .await
            };
            if let Flow::Stop = flow {
                return Flow::Stop;
            }
            if self.expected.is_none_or(|e| e <= message.offset) {
                // Fenced or halted: the partition rewound; the rest comes again.
                return Flow::Continue;
            }
        }
        Flow::Continue
    }

    /// Records the range with the crash guard, retrying while the spool
    /// directory cannot be written (a full disk pauses, it never skips the
    /// guard). `None` when asked to stop meanwhile.
    async fn guard_begin(&self, first: i64, last: i64) -> Option<InFlight> {
        let settings = &self.shared.settings;
        let begun = retry::until_ok(
            "recording a range with the crash guard",
            &self.stop,
            settings.retry,
            |_| {
                let guard = self.shared.crash_guard.clone();
                let (group, topic, partition) =
                    (settings.group.clone(), self.topic.clone(), self.partition);
                blocking::run("crash guard", move || {
                    guard.begin(&group, &topic, partition, first, last)
                })
            },
        )
        .await;
        match begun {
            Ok(in_flight) => Some(in_flight),
            Err(Error::Shutdown) => None,
            Err(e) => {
                self.shared.stopper.fail(e);
                None
            }
        }
    }

    /// Decodes (the work a poison message could crash), then waits on
    /// PostgreSQL, which the crash guard does not hold against the range.
    async fn write_messages(
        &mut self,
        messages: &[Received],
        in_flight: &mut InFlight,
        probe: Option<&Probe>,
        started: Instant,
    ) -> Flow {
        let decoded: Vec<_> = messages.iter().map(|m| self.decode(m)).collect();
        in_flight.set_waiting(true);
        self.commit_decoded(messages, decoded, probe, started).await
    }

    async fn commit_decoded(
        &mut self,
        messages: &[Received],
        decoded: Vec<Result<DecodedTraces, Error>>,
        probe: Option<&Probe>,
        started: Instant,
    ) -> Flow {
        let shared = Arc::clone(&self.shared);
        let key = self.key();
        let ctx = isolate::Ctx {
            writer: &shared.writer,
            key,
            spool: &shared.spool,
            instance: &shared.instance,
            stop: &self.stop,
            health: &shared.health,
            breakers: &shared.breakers,
            probe,
            retry: shared.settings.retry,
            statement_timeout: shared.settings.statement_timeout,
        };
        let mut expected = self.expected;
        let outcome = isolate::commit(&ctx, &mut expected, messages, &decoded).await;
        self.expected = expected;
        match outcome {
            isolate::Outcome::Done {
                stats,
                dead,
                unconfirmed,
            } => {
                let good = messages
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| dead.binary_search_by_key(i, |(d, _)| *d).is_err())
                    .map(|(_, m)| m.tenant.as_deref().unwrap_or_default());
                shared
                    .breakers
                    .good(&self.topic, self.partition, good, probe);
                if !dead.is_empty() {
                    shared.dlq_wake.notify_one();
                }
                if unconfirmed {
                    tracing::info!("a transaction had committed before its connection dropped");
                }
                self.record_write(messages, &decoded, stats, started.elapsed());
                Flow::Continue
            }
            isolate::Outcome::Fenced { stored } => {
                metrics::counter!(metric::OFFSET_FENCE_CONFLICTS, &self.labels).increment(1);
                tracing::warn!(expected = ?self.expected, stored = ?stored, "offset fence lost: another writer moved this partition; resuming from the stored offset");
                self.rewind(stored).await
            }
            isolate::Outcome::Halted => {
                // Pieces that committed stand; the rest is consumed again once the
                // breaker lets it through.
                shared.dlq_wake.notify_one();
                tracing::warn!(stored = ?self.expected, "circuit breaker open: rewinding the partition to its stored offset");
                self.rewind(self.expected).await
            }
            isolate::Outcome::Stopped => Flow::Stop,
            isolate::Outcome::Fatal(e) => {
                shared.stopper.fail(e);
                Flow::Stop
            }
        }
    }

    /// Decodes one message; a panic in the decoder makes that message poison, not the process.
    fn decode(&self, message: &Received) -> Result<DecodedTraces, Error> {
        let tenant = match &message.tenant {
            Ok(t) => t,
            Err(e) => {
                return Err(Error::input(
                    e.reason().unwrap_or(Reason::InvalidTenant),
                    e.to_string(),
                ))
            }
        };
        let settings = &self.shared.settings;
        crate::fault::abort_on_payload(&message.payload, message.offset);
        if let Err(refused) = &message.decoded {
            return Err(refused.reissue());
        }
        let (payload, encoding, limits) = (&message.payload, self.encoding, &settings.limits);
        // Decoding reads only its inputs: nothing it could leave half-changed.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode::decode_scanned_traces(payload, encoding, tenant, limits, SystemTime::now())
        }))
        .unwrap_or_else(|panic| {
            metrics::counter!(metric::PANICS).increment(1);
            Err(Error::Panic(crate::error::panic_message(&panic)))
        })
    }

    /// While the spool is full, consumption pauses: nothing is ever dropped.
    async fn wait_for_spool_room(&mut self) -> Flow {
        if !self.shared.spool.is_full() {
            return Flow::Continue;
        }
        tracing::warn!("spool full: pausing until the DLQ drains it");
        self.set_paused(true);
        while self.shared.spool.is_full() {
            self.shared.dlq_wake.notify_one();
            tokio::select! {
                _ = self.stop.cancelled() => return Flow::Stop,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.set_paused(false);
        Flow::Continue
    }

    /// While the topic's breaker is open, the partition pauses: nothing is
    /// dead-lettered or committed. `Some(probe)` when this batch probes the
    /// half-open breaker; `None` when asked to stop meanwhile.
    async fn wait_for_breaker(&mut self) -> Option<Option<Probe>> {
        loop {
            match self.shared.breakers.admit(&self.topic, self.partition) {
                Admission::Proceed(probe) => {
                    self.set_paused(false);
                    return Some(probe);
                }
                Admission::Wait(delay) => {
                    self.set_paused(true);
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay.min(Duration::from_secs(1))) => {}
                    }
                }
            }
        }
    }

    fn note_gap(&self, first: i64) {
        let Some(expected) = self.expected else {
            return;
        };
        if first <= expected {
            return;
        }
        metrics::counter!(metric::OFFSET_GAPS, &self.labels).increment(1);
        let gap = first - expected;
        if gap > KNOWN_GAP {
            tracing::warn!(
                stored = expected,
                first,
                gap,
                "offset gap: compaction, retention or a reset skipped messages before this batch"
            );
        } else {
            tracing::debug!(
                stored = expected,
                first,
                gap,
                "offset gap left by transaction markers"
            );
        }
    }

    fn record_write(
        &self,
        messages: &[Received],
        decoded: &[Result<DecodedTraces, Error>],
        stats: WriteStats,
        took: Duration,
    ) {
        self.shared.health.set_pg_unreachable(None);
        let topic = [("topic", self.topic.clone())];
        metrics::counter!(metric::BATCHES_COMMITTED, &topic).increment(1);
        metrics::counter!(metric::SPANS_WRITTEN, &topic).increment(stats.spans_inserted);
        metrics::counter!(metric::SPANS_DUPLICATE, &topic).increment(stats.spans_duplicate);
        metrics::counter!(metric::SPAN_EVENTS_WRITTEN, &topic).increment(stats.events_inserted);
        metrics::counter!(metric::SPAN_LINKS_WRITTEN, &topic).increment(stats.links_inserted);
        metrics::histogram!(metric::BATCH_MESSAGES).record(messages.len() as f64);
        let spans: usize = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(|d| d.spans.len())
            .sum();
        metrics::histogram!(metric::BATCH_SPANS).record(spans as f64);
        metrics::histogram!(metric::PG_TRANSACTION_SECONDS).record(took.as_secs_f64());
        let mut sanitized = Sanitized::default();
        for d in decoded.iter().filter_map(|d| d.as_ref().ok()) {
            sanitized.add(d.sanitized);
        }
        if sanitized.nul_replaced > 0 {
            metrics::counter!(metric::SANITIZED_VALUES, "kind" => "nul")
                .increment(sanitized.nul_replaced);
        }
        if sanitized.nonfinite_floats > 0 {
            metrics::counter!(metric::SANITIZED_VALUES, "kind" => "nonfinite_float")
                .increment(sanitized.nonfinite_floats);
        }
        tracing::debug!(
            messages = messages.len(),
            spans = stats.spans_inserted,
            duplicates = stats.spans_duplicate,
            took_ms = took.as_millis() as u64,
            "batch committed"
        );
    }

    /// The whole batch is committed (or dead-lettered): latency, lag, Kafka.
    fn advance_past(&mut self, batch: &Batch, next_offset: i64) {
        let now_ms = crate::clock::now_millis();
        let mut newest = None;
        for ts in self.plausible_timestamps(batch, now_ms) {
            metrics::histogram!(metric::END_TO_END_LATENCY_SECONDS)
                .record(crate::clock::age_seconds(now_ms, ts));
            newest = newest.max(Some(ts));
        }
        self.shared
            .lag
            .record_commit(&self.topic, self.partition, next_offset, newest);
        commit::commit(
            &self.consumer,
            &self.owned,
            &self.topic,
            self.partition,
            next_offset,
            CommitMode::Async,
        );
    }

    /// The batch's Kafka timestamps that could be true: inside the acceptance
    /// window. A producer may set any timestamp (1970, the year 9999); those
    /// would put nonsense into the latency histogram and the lag in seconds.
    fn plausible_timestamps<'b>(
        &self,
        batch: &'b Batch,
        now_ms: i64,
    ) -> impl Iterator<Item = i64> + 'b {
        let limits = &self.shared.settings.limits;
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let earliest = now_ms.saturating_sub(millis(limits.accept_past));
        let latest = now_ms.saturating_add(millis(limits.accept_future));
        batch
            .messages
            .iter()
            .filter_map(|p| p.timestamp_ms)
            .filter(move |ts| (earliest..=latest).contains(ts))
    }

    /// The oldest plausible timestamp of the batch, for lag in seconds.
    fn oldest_plausible(&self, batch: &Batch) -> Option<i64> {
        self.plausible_timestamps(batch, crate::clock::now_millis())
            .min()
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
        let offset = stored.map_or(Offset::Beginning, Offset::Offset);
        let consumer = self.consumer.clone();
        let (topic, partition) = (self.topic.clone(), self.partition);
        let seek = blocking::run("seek", move || {
            Ok(consumer.seek(&topic, partition, offset, Duration::from_secs(10))?)
        })
        .await;
        match seek {
            Ok(()) => Flow::Continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot rewind to the stored offset");
                self.stop_partition(stored, "cannot rewind to the stored offset")
                    .await
            }
        }
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
