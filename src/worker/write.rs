//! Writing a batch: the crash guard first, then decoding, the transaction
//! with its fence, isolation of poison, and the Kafka commit after it.

use super::*;

impl PartitionWorker {
    /// Writes one batch: every message ends committed or dead-lettered, in order;
    /// transient failures are retried, never skipped.
    pub(super) async fn process(&mut self, batch: Batch, probe: Option<Probe>) -> Flow {
        let (Some(first), Some(next_offset)) = (batch.first_offset(), batch.next_offset()) else {
            return Flow::Continue;
        };
        let span = tracing::info_span!("batch", topic = %self.topic, partition = self.partition,
            first_offset = first, last_offset = next_offset - 1, tenants = batch.tenant_count());
        self.write(batch, first, next_offset, probe)
            .instrument(span)
            .await
    }

    pub(super) async fn write(
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
    pub(super) async fn write_one_by_one(
        &mut self,
        messages: &[Received],
        probe: Option<&Probe>,
    ) -> Flow {
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
    pub(super) async fn guard_begin(&self, first: i64, last: i64) -> Option<InFlight> {
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
    pub(super) async fn write_messages(
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

    pub(super) async fn commit_decoded(
        &mut self,
        messages: &[Received],
        decoded: Vec<Result<Decoded, Error>>,
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
    pub(super) fn decode(&self, message: &Received) -> Result<Decoded, Error> {
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
        let (payload, source, limits) = (&message.payload, self.source, &settings.limits);
        let origin = Origin {
            topic: &self.topic,
            partition: self.partition,
            offset: message.offset,
            timestamp_ms: message.timestamp_ms,
        };
        // Decoding reads only its inputs: nothing it could leave half-changed.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode::decode_scanned(payload, source, tenant, &origin, limits, SystemTime::now())
        }))
        .unwrap_or_else(|panic| {
            metrics::counter!(metric::PANICS).increment(1);
            Err(Error::Panic(crate::error::panic_message(&panic)))
        })
    }

    pub(super) fn record_write(
        &self,
        messages: &[Received],
        decoded: &[Result<Decoded, Error>],
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
        metrics::counter!(metric::LOG_RECORDS_WRITTEN, &topic).increment(stats.logs_inserted);
        metrics::counter!(metric::LOG_RECORDS_DUPLICATE, &topic).increment(stats.logs_duplicate);
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
            logs = stats.logs_inserted,
            took_ms = took.as_millis() as u64,
            "batch committed"
        );
    }

    /// The whole batch is committed (or dead-lettered): latency, lag, Kafka.
    pub(super) fn advance_past(&mut self, batch: &Batch, next_offset: i64) {
        let now_ms = crate::clock::now_millis();
        let mut newest = None;
        // Looked up once per batch, recorded once per message.
        let latency = metrics::histogram!(metric::END_TO_END_LATENCY_SECONDS);
        for ts in self.plausible_timestamps(batch, now_ms) {
            latency.record(crate::clock::age_seconds(now_ms, ts));
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
    pub(super) fn plausible_timestamps<'b>(
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
    pub(super) fn oldest_plausible(&self, batch: &Batch) -> Option<i64> {
        self.plausible_timestamps(batch, crate::clock::now_millis())
            .min()
    }
}
