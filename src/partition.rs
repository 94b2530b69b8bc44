//! One assigned partition's worker: receive → decode → batch → write → commit.
//!
//! A partition is processed in order, one batch at a time; partitions run in
//! parallel. The worker knows the offset PostgreSQL holds for its partition
//! (`expected`), and every batch moves it with a fence in the same transaction
//! as the batch's rows. Only after that commit does it commit to Kafka.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt as _;
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
use crate::error::{Class, Error};
use crate::kafka::commit::Lease;
use crate::kafka::consume::Consumer;
use crate::kafka::rebalance::Context;
use crate::metrics as m;
use crate::model::{DecodedTraces, Sanitized};
use crate::pg::offsets::PartitionKey;
use crate::pg::write::{AfterFailure, WriteBatch, WriteOutcome, WriteStats};
use crate::pipeline::Pipeline;
use crate::retry::Backoff;

/// Gaps this small are what transaction markers leave; larger ones come from
/// compaction, retention or a reset, and are worth a warning.
const KNOWN_GAP: i64 = 2;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub group: String,
    pub tenant_header: String,
    pub default_tenant: String,
    pub limits: Limits,
    pub batch: BatchLimits,
    pub retry_initial: Duration,
    pub retry_max: Duration,
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
        let (tenant, decoded) = match tenant {
            Ok(t) => {
                let decoded = decode_guarded(payload, self.encoding, &t, &settings.limits);
                (Some(t), decoded)
            }
            Err(e) => (None, Err(e)),
        };
        Some(Pending {
            offset,
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            headers,
            payload: payload.to_vec(),
            tenant,
            decoded,
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

    /// Writes one batch: retried while failures are transient, never skipped.
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

        if let Some(bad) = batch.messages.iter().find(|p| p.decoded.is_err()) {
            let offset = bad.offset;
            let err = match &bad.decoded {
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            };
            let reason = bad.decoded.as_ref().err().and_then(Error::reason);
            return self
                .halt(offset, reason.map_or("unknown", |r| r.as_str()), &err)
                .await;
        }
        let decoded: Vec<&DecodedTraces> = batch
            .messages
            .iter()
            .filter_map(|p| p.decoded.as_ref().ok())
            .collect();

        let mut backoff = Backoff::new(
            self.pipeline.settings.retry_initial,
            self.pipeline.settings.retry_max,
        );
        loop {
            let started = Instant::now();
            let write = WriteBatch {
                key: self.key(),
                expected: self.expected,
                next_offset,
                messages: &decoded,
            };
            let result = AssertUnwindSafe(self.pipeline.writer.write(&write))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(Error::Panic(panic_message(&panic))));
            let err = match result {
                Ok(WriteOutcome::Committed(stats)) => {
                    self.committed(&batch, next_offset, stats, started.elapsed());
                    return Flow::Continue;
                }
                Ok(WriteOutcome::Fenced { stored }) if stored == Some(next_offset) => {
                    // An earlier attempt of this very batch committed; its
                    // acknowledgement was lost while the server finished it.
                    self.committed(
                        &batch,
                        next_offset,
                        WriteStats::default(),
                        started.elapsed(),
                    );
                    return Flow::Continue;
                }
                Ok(WriteOutcome::Fenced { stored }) => return self.fenced(stored).await,
                Err(e) => e,
            };
            match err.class() {
                Class::Transient => {
                    metrics::counter!(m::TRANSIENT_RETRIES, "kind" => err.transient_kind())
                        .increment(1);
                    self.pipeline
                        .health
                        .set_pg_down(err.transient_kind().starts_with("pg_"));
                    tracing::warn!(error = %err, "transient failure; backing off and retrying the batch");
                    if backoff.wait(&self.stop).await.is_err() {
                        // Stopping: nothing of this batch committed, and no offset moved.
                        return Flow::Stop;
                    }
                    let key = self.key();
                    match self
                        .pipeline
                        .writer
                        .resolve_after_failure(&key, self.expected, next_offset)
                        .await
                    {
                        Ok(AfterFailure::AlreadyCommitted) => {
                            // The COMMIT went through but its acknowledgement was lost.
                            tracing::info!("batch had committed before the connection dropped");
                            self.committed(
                                &batch,
                                next_offset,
                                WriteStats::default(),
                                started.elapsed(),
                            );
                            return Flow::Continue;
                        }
                        Ok(AfterFailure::Fenced { stored }) => return self.fenced(stored).await,
                        Ok(AfterFailure::NotCommitted) | Err(_) => continue,
                    }
                }
                Class::Poison => {
                    if matches!(err, Error::Panic(_)) {
                        metrics::counter!(m::PANICS).increment(1);
                    }
                    let reason = err.reason().map_or("unknown", |r| r.as_str());
                    return self.halt(first, reason, &err.to_string()).await;
                }
                Class::Fatal => {
                    self.pipeline.fail(err);
                    return Flow::Stop;
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

    fn committed(&mut self, batch: &Batch, next_offset: i64, stats: WriteStats, took: Duration) {
        self.expected = Some(next_offset);
        self.pipeline.health.set_pg_down(false);
        let topic = [("topic", self.lease.topic.clone())];
        metrics::counter!(m::BATCHES_COMMITTED, &topic).increment(1);
        metrics::counter!(m::SPANS_WRITTEN, &topic).increment(stats.spans_inserted);
        metrics::counter!(m::SPANS_DUPLICATE, &topic).increment(stats.spans_duplicate);
        metrics::counter!(m::SPAN_EVENTS_WRITTEN, &topic).increment(stats.events_inserted);
        metrics::counter!(m::SPAN_LINKS_WRITTEN, &topic).increment(stats.links_inserted);
        metrics::histogram!(m::BATCH_MESSAGES).record(batch.len() as f64);
        metrics::histogram!(m::BATCH_SPANS).record(batch.span_count() as f64);
        metrics::histogram!(m::PG_TRANSACTION_SECONDS).record(took.as_secs_f64());
        let now_ms = unix_millis(SystemTime::now());
        let mut sanitized = Sanitized::default();
        for p in &batch.messages {
            if let Some(ts) = p.timestamp_ms {
                let latency = (now_ms - ts).max(0) as f64 / 1000.0;
                metrics::histogram!(m::END_TO_END_LATENCY_SECONDS).record(latency);
            }
            if let Ok(d) = &p.decoded {
                sanitized.add(d.sanitized);
            }
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
            messages = batch.len(),
            spans = stats.spans_inserted,
            duplicates = stats.spans_duplicate,
            took_ms = took.as_millis() as u64,
            "batch committed"
        );
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
                self.halt(
                    stored.unwrap_or(0),
                    "seek_failed",
                    "cannot rewind after a lost fence",
                )
                .await
            }
        }
    }

    /// A permanent failure: the partition stops, loudly, and never skips. It
    /// waits, paused, for revocation or shutdown; the offset stays where it is.
    async fn halt(&mut self, offset: i64, reason: &str, error: &str) -> Flow {
        tracing::error!(
            offset,
            reason,
            error,
            "partition stopped: a message cannot be written; it is not skipped"
        );
        metrics::counter!(m::PERMANENT_FAILURES, "reason" => reason.to_string()).increment(1);
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

/// Decodes one message; a panic in the decoder makes that message poison, not the process.
fn decode_guarded(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    limits: &Limits,
) -> Result<DecodedTraces, Error> {
    std::panic::catch_unwind(|| {
        decode::decode_traces(payload, encoding, tenant, limits, SystemTime::now())
    })
    .unwrap_or_else(|panic| {
        metrics::counter!(m::PANICS).increment(1);
        Err(Error::Panic(panic_message(&panic)))
    })
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

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
