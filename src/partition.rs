//! One assigned partition's worker: receive → decode → batch → write → commit.
//!
//! A partition is processed in order, one batch at a time; partitions run in
//! parallel. The worker knows the offset PostgreSQL holds for its partition
//! (`expected`), and every batch moves it with a fence in the same transaction
//! as the batch's rows. Only after that commit does it commit to Kafka.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::batch::{Batch, BatchLimits, Pending};
use crate::config::Encoding;
use crate::decode::{self, Limits};
use crate::error::{Error, Reason};
use crate::kafka::commit::Lease;
use crate::kafka::consume::Consumer;
use crate::kafka::rebalance::Context;
use crate::metrics as m;
use crate::model::{DecodedTraces, Sanitized};
use crate::pg::offsets::PartitionKey;
use crate::pg::write::WriteStats;
use crate::pipeline::Pipeline;
use crate::poison::breaker::Verdict;
use crate::poison::isolate;
use crate::retry::Backoff;

/// Gaps this small are what transaction markers leave; larger ones come from
/// compaction, retention or a reset, and are worth a warning.
const KNOWN_GAP: i64 = 2;

/// Runs a blocking spool or crash-guard call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Panic(e.to_string())))
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub group: String,
    pub tenant_header: String,
    pub default_tenant: String,
    pub limits: Limits,
    pub batch: BatchLimits,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Test-only fault injection: abort the process on a payload holding these bytes.
    pub fault_abort_marker: Option<String>,
}

enum Flow {
    Continue,
    Stop,
}

pub struct PartitionWorker {
    pipeline: Arc<Pipeline>,
    consumer: Arc<Consumer>,
    queue: StreamPartitionQueue<Context>,
    lease: Lease,
    encoding: Encoding,
    /// The partition's offset in PostgreSQL as this worker last read or wrote it.
    expected: Option<i64>,
    stop: CancellationToken,
    /// A message received while the budget was exhausted, held for the next batch.
    carry: Option<Pending>,
    paused: bool,
    labels: [(&'static str, String); 2],
}

impl PartitionWorker {
    pub fn new(
        pipeline: Arc<Pipeline>,
        consumer: Arc<Consumer>,
        queue: StreamPartitionQueue<Context>,
        lease: Lease,
        encoding: Encoding,
        expected: Option<i64>,
        stop: CancellationToken,
    ) -> Self {
        let labels = [
            ("topic", lease.topic.clone()),
            ("partition", lease.partition.to_string()),
        ];
        PartitionWorker {
            pipeline,
            consumer,
            queue,
            lease,
            encoding,
            expected,
            stop,
            carry: None,
            paused: false,
            labels,
        }
    }

    pub async fn run(mut self) {
        loop {
            let batch = self.collect().await;
            if !batch.is_empty() {
                if let Flow::Stop = self.process(batch).await {
                    break;
                }
            }
            if self.stop.is_cancelled() {
                break;
            }
        }
        self.final_commit().await;
        tracing::debug!(topic = %self.lease.topic, partition = self.lease.partition, "worker stopped");
    }

    /// Fills one batch: until it is full, its linger runs out, or the worker is
    /// asked to stop (then what was collected is still written).
    async fn collect(&mut self) -> Batch {
        let limits = self.pipeline.settings.batch;
        let mut batch = Batch::new();
        if let Some(p) = self.carry.take() {
            let permit = self.reserve_blocking(p.payload.len()).await;
            batch.push(p, permit);
        }
        while !batch.is_full(&limits) {
            let linger_end = batch
                .deadline(&limits)
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let pending = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep_until(linger_end), if !batch.is_empty() => break,
                received = self.queue.recv() => match received {
                    Ok(msg) => self.admit(&msg),
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %self.lease.topic, partition = self.lease.partition, "fetch error");
                        None
                    }
                },
            };
            let Some(pending) = pending else { continue };
            match self.try_reserve(pending.payload.len()) {
                Some(permit) => batch.push(pending, Some(permit)),
                None if !batch.is_empty() => {
                    // Out of budget with a batch in hand: write it now, which frees
                    // budget, instead of waiting while holding some.
                    self.carry = Some(pending);
                    break;
                }
                None => {
                    let permit = self.reserve_blocking(pending.payload.len()).await;
                    batch.push(pending, permit);
                }
            }
        }
        batch
    }

    /// Copies one message out of librdkafka and decodes it; `None` for a message
    /// below the stored offset, which is already committed.
    fn admit(&self, msg: &BorrowedMessage<'_>) -> Option<Pending> {
        let offset = msg.offset();
        let payload = msg.payload().unwrap_or_default();
        metrics::counter!(m::MESSAGES_CONSUMED, &self.labels).increment(1);
        metrics::counter!(m::BYTES_CONSUMED, &self.labels).increment(payload.len() as u64);
        if let Some(expected) = self.expected {
            if offset < expected {
                metrics::counter!(m::MESSAGES_BELOW_STORED_OFFSET, &self.labels).increment(1);
                tracing::warn!(topic = %self.lease.topic, partition = self.lease.partition, offset, stored = expected,
                    "message below the stored offset skipped as already committed (was the topic recreated?)");
                return None;
            }
        }
        let settings = &self.pipeline.settings;
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
        Some(Pending {
            offset,
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            headers,
            payload: payload.to_vec(),
            tenant,
        })
    }

    fn permits_for(&self, bytes: usize) -> u32 {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        kib.clamp(1, self.pipeline.budget_kib)
    }

    fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = self.permits_for(bytes);
        let permit = self.pipeline.budget.clone().try_acquire_many_owned(n).ok();
        self.record_inflight();
        permit
    }

    /// Waits for budget with fetching paused, so that librdkafka stops fetching
    /// this partition while the main loop keeps polling.
    async fn reserve_blocking(&mut self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if let Some(p) = self.try_reserve(bytes) {
            return Some(p);
        }
        let n = self.permits_for(bytes);
        self.set_paused(true);
        let permit = tokio::select! {
            p = self.pipeline.budget.clone().acquire_many_owned(n) => p.ok(),
            _ = self.stop.cancelled() => None,
        };
        self.set_paused(false);
        self.record_inflight();
        permit
    }

    fn record_inflight(&self) {
        let free = self.pipeline.budget.available_permits() as f64;
        let used = (f64::from(self.pipeline.budget_kib) - free).max(0.0) * 1024.0;
        metrics::gauge!(m::INFLIGHT_BYTES).set(used);
    }

    fn set_paused(&mut self, paused: bool) {
        if self.paused == paused {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.lease.topic, self.lease.partition);
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
        metrics::gauge!(m::PAUSED_PARTITIONS).increment(delta);
        metrics::gauge!(m::PARTITION_PAUSED, &self.labels).set(if paused { 1.0 } else { 0.0 });
    }

    fn key(&self) -> PartitionKey<'_> {
        PartitionKey {
            group: &self.pipeline.settings.group,
            topic: &self.lease.topic,
            partition: self.lease.partition,
        }
    }

    /// Writes one batch: every message ends committed or dead-lettered, in order;
    /// transient failures are retried, never skipped.
    async fn process(&mut self, batch: Batch) -> Flow {
        let (Some(first), Some(next_offset)) = (batch.first_offset(), batch.next_offset()) else {
            return Flow::Continue;
        };
        let span = tracing::info_span!("batch", topic = %self.lease.topic, partition = self.lease.partition,
            first_offset = first, last_offset = next_offset - 1, tenants = batch.tenant_count());
        self.write(batch, first, next_offset).instrument(span).await
    }

    async fn write(&mut self, batch: Batch, first: i64, next_offset: i64) -> Flow {
        self.note_gap(first);
        self.pipeline.lag.pending(
            &self.lease.topic,
            self.lease.partition,
            batch.first_timestamp_ms(),
        );
        if let Flow::Stop = self.wait_for_spool_room().await {
            return Flow::Stop;
        }
        let threshold = self.pipeline.crash_guard.threshold();
        let Some(crashes) = self.guard_begin(first, next_offset - 1).await else {
            return Flow::Stop;
        };
        let started = Instant::now();
        let flow = if crashes < threshold {
            self.write_messages(&batch.messages, started).await
        } else {
            metrics::counter!(m::CRASH_GUARD_RANGES, "topic" => self.lease.topic.clone())
                .increment(1);
            tracing::warn!(crashes, "the process died while this range was in flight: processing it one message at a time");
            self.write_one_by_one(&batch.messages).await
        };
        // Returning at all means the process survived the batch, whatever its outcome.
        self.guard_end().await;
        if self.expected == Some(next_offset) {
            self.committed(&batch, next_offset);
        }
        flow
    }

    /// The range killed the process before: each message alone, each guarded,
    /// and a message that killed it `threshold` times is dead-lettered unread.
    async fn write_one_by_one(&mut self, messages: &[Pending]) -> Flow {
        for message in messages {
            if self.expected.is_some_and(|e| message.offset < e) {
                continue;
            }
            let threshold = self.pipeline.crash_guard.threshold();
            let Some(crashes) = self.guard_begin(message.offset, message.offset).await else {
                return Flow::Stop;
            };
            let one = std::slice::from_ref(message);
            let flow = if crashes >= threshold {
                let err = Error::input(
                    Reason::CrashLoop,
                    format!("the process died {crashes} times while this message alone was being processed"),
                );
                self.commit_decoded(one, vec![Err(err)], Instant::now())
                    .await
            } else {
                self.write_messages(one, Instant::now()).await
            };
            if let Flow::Stop = flow {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Records the range with the crash guard, retrying while the spool
    /// directory cannot be written (a full disk pauses, it never skips the
    /// guard). `None` when asked to stop meanwhile.
    async fn guard_begin(&self, first: i64, last: i64) -> Option<u32> {
        let mut backoff = Backoff::new(
            self.pipeline.settings.retry_initial,
            self.pipeline.settings.retry_max,
        );
        loop {
            let guard = self.pipeline.crash_guard.clone();
            let (group, topic, partition) = (
                self.pipeline.settings.group.clone(),
                self.lease.topic.clone(),
                self.lease.partition,
            );
            match blocking(move || guard.begin(&group, &topic, partition, first, last)).await {
                Ok(crashes) => return Some(crashes),
                Err(e) => {
                    metrics::counter!(m::TRANSIENT_RETRIES, "kind" => e.transient_kind())
                        .increment(1);
                    tracing::error!(error = %e, "cannot record the offset range in the spool directory; retrying");
                    backoff.wait(&self.stop).await.ok()?;
                }
            }
        }
    }

    /// The range is over (committed, dead-lettered, fenced or stopped): the
    /// process survived it. Not retried: a lost end costs one crash counted
    /// in excess, never a message.
    async fn guard_end(&self) {
        let guard = self.pipeline.crash_guard.clone();
        let (group, topic, partition) = (
            self.pipeline.settings.group.clone(),
            self.lease.topic.clone(),
            self.lease.partition,
        );
        if let Err(e) = blocking(move || guard.end(&group, &topic, partition)).await {
            tracing::warn!(error = %e, "cannot clear the batch's crash-guard record");
        }
    }

    async fn write_messages(&mut self, messages: &[Pending], started: Instant) -> Flow {
        let decoded: Vec<_> = messages.iter().map(|m| self.decode(m)).collect();
        self.commit_decoded(messages, decoded, started).await
    }

    async fn commit_decoded(
        &mut self,
        messages: &[Pending],
        decoded: Vec<Result<DecodedTraces, Error>>,
        started: Instant,
    ) -> Flow {
        let known_poison = decoded.iter().filter(|d| d.is_err()).count();
        if let Flow::Stop = self.wait_for_breaker(known_poison, messages.len()).await {
            return Flow::Stop;
        }
        let key = self.key();
        let ctx = isolate::Ctx {
            writer: &self.pipeline.writer,
            key,
            spool: &self.pipeline.spool,
            instance: &self.pipeline.instance,
            stop: &self.stop,
            health: &self.pipeline.health,
            retry_initial: self.pipeline.settings.retry_initial,
            retry_max: self.pipeline.settings.retry_max,
        };
        let mut expected = self.expected;
        let outcome = isolate::commit(&ctx, &mut expected, messages, &decoded).await;
        self.expected = expected;
        let topic = self.lease.topic.clone();
        match outcome {
            isolate::Outcome::Done {
                stats,
                dead,
                unconfirmed,
            } => {
                self.pipeline
                    .breakers
                    .record(&topic, dead.len(), messages.len());
                if !dead.is_empty() {
                    self.pipeline.dlq_wake.notify_one();
                }
                if unconfirmed {
                    tracing::info!("a transaction had committed before its connection dropped");
                }
                self.record_write(messages, &decoded, stats, started.elapsed());
                Flow::Continue
            }
            isolate::Outcome::Fenced { stored } => {
                self.pipeline.breakers.abandon_probe(&topic);
                self.fenced(stored).await
            }
            isolate::Outcome::Stopped => {
                self.pipeline.breakers.abandon_probe(&topic);
                Flow::Stop
            }
            isolate::Outcome::Fatal(e) => {
                self.pipeline.breakers.abandon_probe(&topic);
                self.pipeline.fail(e);
                Flow::Stop
            }
        }
    }

    /// Decodes one message; a panic in the decoder makes that message poison, not the process.
    fn decode(&self, message: &Pending) -> Result<DecodedTraces, Error> {
        let tenant = match &message.tenant {
            Ok(t) => t,
            Err(e) => {
                return Err(Error::input(
                    e.reason().unwrap_or(Reason::InvalidTenant),
                    e.to_string(),
                ))
            }
        };
        let settings = &self.pipeline.settings;
        if let Some(marker) = &settings.fault_abort_marker {
            if !marker.is_empty()
                && message
                    .payload
                    .windows(marker.len())
                    .any(|w| w == marker.as_bytes())
            {
                tracing::error!(
                    offset = message.offset,
                    "fault injection: aborting the process"
                );
                std::process::abort();
            }
        }
        let (payload, encoding, limits) = (&message.payload, self.encoding, &settings.limits);
        // Decoding reads only its inputs: nothing it could leave half-changed.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode::decode_traces(payload, encoding, tenant, limits, SystemTime::now())
        }))
        .unwrap_or_else(|panic| {
            metrics::counter!(m::PANICS).increment(1);
            Err(Error::Panic(panic_message(&panic)))
        })
    }

    /// While the spool is full, consumption pauses: nothing is ever dropped.
    async fn wait_for_spool_room(&mut self) -> Flow {
        if !self.pipeline.spool.is_full() {
            return Flow::Continue;
        }
        tracing::warn!("spool full: pausing until the DLQ drains it");
        self.set_paused(true);
        while self.pipeline.spool.is_full() {
            self.pipeline.dlq_wake.notify_one();
            tokio::select! {
                _ = self.stop.cancelled() => return Flow::Stop,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.set_paused(false);
        Flow::Continue
    }

    /// While the topic's breaker is open, nothing is dead-lettered or committed.
    async fn wait_for_breaker(&mut self, poison: usize, total: usize) -> Flow {
        loop {
            match self
                .pipeline
                .breakers
                .check(&self.lease.topic, poison, total)
            {
                Verdict::Proceed => {
                    self.set_paused(false);
                    return Flow::Continue;
                }
                Verdict::Wait(delay) => {
                    self.set_paused(true);
                    tokio::select! {
                        _ = self.stop.cancelled() => return Flow::Stop,
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
        metrics::counter!(m::OFFSET_GAPS, &self.labels).increment(1);
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
        messages: &[Pending],
        decoded: &[Result<DecodedTraces, Error>],
        stats: WriteStats,
        took: Duration,
    ) {
        self.pipeline.health.set_pg_down(false);
        let topic = [("topic", self.lease.topic.clone())];
        metrics::counter!(m::BATCHES_COMMITTED, &topic).increment(1);
        metrics::counter!(m::SPANS_WRITTEN, &topic).increment(stats.spans_inserted);
        metrics::counter!(m::SPANS_DUPLICATE, &topic).increment(stats.spans_duplicate);
        metrics::counter!(m::SPAN_EVENTS_WRITTEN, &topic).increment(stats.events_inserted);
        metrics::counter!(m::SPAN_LINKS_WRITTEN, &topic).increment(stats.links_inserted);
        metrics::histogram!(m::BATCH_MESSAGES).record(messages.len() as f64);
        let spans: usize = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .map(|d| d.spans.len())
            .sum();
        metrics::histogram!(m::BATCH_SPANS).record(spans as f64);
        metrics::histogram!(m::PG_TRANSACTION_SECONDS).record(took.as_secs_f64());
        let mut sanitized = Sanitized::default();
        for d in decoded.iter().filter_map(|d| d.as_ref().ok()) {
            sanitized.add(d.sanitized);
        }
        if sanitized.nul_replaced > 0 {
            metrics::counter!(m::SANITIZED_VALUES, "kind" => "nul")
                .increment(sanitized.nul_replaced);
        }
        if sanitized.nonfinite_floats > 0 {
            metrics::counter!(m::SANITIZED_VALUES, "kind" => "nonfinite_float")
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
    fn committed(&mut self, batch: &Batch, next_offset: i64) {
        let now_ms = unix_millis(SystemTime::now());
        let mut newest = None;
        for ts in batch.messages.iter().filter_map(|p| p.timestamp_ms) {
            let latency = (now_ms - ts).max(0) as f64 / 1000.0;
            metrics::histogram!(m::END_TO_END_LATENCY_SECONDS).record(latency);
            newest = newest.max(Some(ts));
        }
        self.pipeline
            .lag
            .committed(&self.lease.topic, self.lease.partition, next_offset, newest);
        self.pipeline.assignments.commit(
            &self.consumer,
            &self.lease,
            next_offset,
            CommitMode::Async,
        );
    }

    /// Another writer moved the partition's offset: this worker's view is stale.
    /// Drop in-flight work and continue from what PostgreSQL holds.
    async fn fenced(&mut self, stored: Option<i64>) -> Flow {
        metrics::counter!(m::OFFSET_FENCE_CONFLICTS, &self.labels).increment(1);
        tracing::warn!(expected = ?self.expected, stored = ?stored, "offset fence lost: another writer moved this partition; resuming from the stored offset");
        self.carry = None;
        self.expected = stored;
        if let Some(next) = stored {
            self.pipeline
                .lag
                .committed(&self.lease.topic, self.lease.partition, next, None);
        }
        let offset = stored.map_or(Offset::Beginning, Offset::Offset);
        let consumer = self.consumer.clone();
        let (topic, partition) = (self.lease.topic.clone(), self.lease.partition);
        let seek = tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, partition, offset, Duration::from_secs(10))
        })
        .await;
        match seek {
            Ok(Ok(())) => Flow::Continue,
            other => {
                tracing::error!(result = ?other.map(|r| r.map_err(|e| e.to_string())), "cannot rewind after a lost fence");
                self.stop_partition(stored, "cannot rewind after a lost fence")
                    .await
            }
        }
    }

    /// The worker cannot go on without skipping: the partition stops, loudly,
    /// paused until revocation or shutdown, its offset where PostgreSQL has it.
    /// The next owner (or a restart) resumes there.
    async fn stop_partition(&mut self, stored: Option<i64>, why: &str) -> Flow {
        tracing::error!(stored = ?stored, why, "partition stopped; it resumes at the stored offset after a rebalance or restart");
        metrics::gauge!(m::STOPPED_PARTITIONS).increment(1.0);
        self.set_paused(true);
        self.stop.cancelled().await;
        metrics::gauge!(m::STOPPED_PARTITIONS).decrement(1.0);
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
        let (pipeline, consumer, lease) = (
            self.pipeline.clone(),
            self.consumer.clone(),
            self.lease.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            pipeline
                .assignments
                .commit(&consumer, &lease, next, CommitMode::Sync)
        })
        .await;
    }
}

pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Milliseconds since the epoch, the unit of Kafka timestamps.
pub fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
