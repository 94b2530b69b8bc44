//! Receiving: filling a batch within the memory budget, pausing while the
//! spool is full or the circuit breaker is open.

use super::*;

impl PartitionWorker {
    /// Fills one batch: until it is full, its linger runs out, or the worker is
    /// asked to stop (then what was collected is still written).
    pub(super) async fn collect(&mut self, limits: &BatchLimits) -> Batch {
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
                // A partition that has nothing to fetch lets a waiting one
                // have its turn: it writes what it holds rather than linger,
                // and, holding nothing, gives its slot up.
                _ = tokio::time::sleep(IDLE_TURN), if self.slot.is_some() => {
                    if !batch.is_empty() {
                        if self.shared.fetch_slots.contended() {
                            break;
                        }
                    } else {
                        self.wake_fetcher_if_stalled();
                        self.end_idle_turn_if_others_wait().await;
                        // A message carried out of a pause goes first, in
                        // the next batch.
                        if !self.fetch().await || self.carry.is_some() {
                            break;
                        }
                    }
                    None
                }
                received = self.queue.recv() => match received {
                    Ok(msg) => {
                        self.quiet_since = Instant::now();
                        self.shared.lag.idle(&self.topic, self.partition, false);
                        self.admit(&msg)
                    }
                    Err(e) => {
                        self.note_fetch_error(&e);
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

    /// librdkafka retries a failed fetch itself; the error is worth a
    /// (rate-limited) line, whichever poll returned it.
    pub(super) fn note_fetch_error(&self, e: &rdkafka::error::KafkaError) {
        if let Some(held_back) = crate::logcap::allow("fetch error") {
            tracing::warn!(error = %e, topic = %self.topic, partition = self.partition, held_back, "fetch error");
        }
    }

    /// Copies one message out of librdkafka; `None` for a message below the
    /// stored offset, which is already committed.
    pub(super) fn admit(&self, msg: &BorrowedMessage<'_>) -> Option<Received> {
        let offset = msg.offset();
        let payload = msg.payload().unwrap_or_default();
        self.consumed.increment(1);
        self.consumed_bytes.increment(payload.len() as u64);
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
        let decoded = decode::scan(payload, self.source, &settings.limits)
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

    pub(super) fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let budget = &self.shared.budget;
        let n = budget.permits_for(bytes);
        let permit = budget.semaphore.clone().try_acquire_many_owned(n).ok();
        budget.record();
        permit
    }

    /// Waits for budget, holding nothing else of it, and keeping its fetch
    /// slot: what librdkafka prefetches meanwhile is the slot's, already
    /// counted. Giving the slot up instead would let a partition wait for a
    /// turn while holding budget, and the turns starve the batches.
    pub(super) async fn reserve_blocking(&mut self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if let Some(p) = self.try_reserve(bytes) {
            return Some(p);
        }
        let budget = Arc::clone(&self.shared);
        let n = budget.budget.permits_for(bytes);
        let permit = tokio::select! {
            p = budget.budget.semaphore.clone().acquire_many_owned(n) => p.ok(),
            _ = self.stop.cancelled() => None,
        };
        budget.budget.record();
        permit
    }

    /// While the spool is full, consumption pauses: nothing is ever dropped.
    pub(super) async fn wait_for_spool_room(&mut self) -> Flow {
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
        if self.fetch().await {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }

    /// While the topic's breaker is open, the partition pauses: nothing is
    /// dead-lettered or committed. `Some(probe)` when this batch probes the
    /// half-open breaker; `None` when asked to stop meanwhile.
    pub(super) async fn wait_for_breaker(&mut self) -> Option<Option<Probe>> {
        loop {
            match self.shared.breakers.admit(&self.topic, self.partition) {
                Admission::Proceed(probe) => {
                    return self.fetch().await.then_some(probe);
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

    pub(super) fn note_gap(&self, first: i64) {
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
}
