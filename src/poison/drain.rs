//! Moves dead letters from the spool to the DLQ topic, once PostgreSQL has
//! committed past them.
//!
//! The pipeline spools a poison message, commits PostgreSQL (the good rows and
//! the moved offset), then Kafka. Only then is the dead letter final: until
//! the commit, a crash, a lost fence or a revocation sends the message through
//! the pipeline again, maybe on another replica, maybe (after an upgrade) with
//! success. So an entry is published only when its offset is below its
//! partition's offset stored in PostgreSQL, and removed only once the broker
//! acknowledged it. A crash between the two publishes it again on the next
//! pass: a DLQ consumer drops the copy by its `spansink.dlq.id`.
//!
//! Entries at or above the stored offset wait while the instance runs (their
//! batch may be committing right now), and are discarded at the next start
//! ([`Drainer::discard_superseded`]), when no batch is in flight: their
//! message will be consumed again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics as m;
use crate::otlp::spansink::v1::DeadLetter;
use crate::pg::offsets::{self, PartitionKey};
use crate::poison::dlq::{self, DlqPublisher, PendingDelivery};
use crate::poison::spool::{EntryInfo, Spool};
use crate::retry::Backoff;

/// How often the drainer looks at the spool when nothing wakes it: entries
/// whose commit landed without a poke (after a restart, say) wait no longer.
const TICK: Duration = Duration::from_secs(5);
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The last pass at shutdown: long enough for a healthy broker, short enough
/// not to hold up the exit when it is down (the entries stay spooled).
const FINAL_PASS_TIMEOUT: Duration = Duration::from_secs(5);
/// Dead letters handed to the producer before the oldest one's acknowledgement
/// is awaited: enough to hide the round trip, few enough that an outage fails
/// a bounded number of them.
const IN_FLIGHT: usize = 32;

/// What one pass did. Entries a halted pass did not reach are in no count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Acknowledged by the broker and removed from the spool.
    pub published: usize,
    /// Not yet committed in PostgreSQL: left for a later pass.
    pub pending: usize,
    /// Could not be read or published: left for a later pass.
    pub failed: usize,
}

pub struct Drainer {
    spool: Arc<Spool>,
    publisher: Arc<DlqPublisher>,
    pool: Pool,
}

impl Drainer {
    pub fn new(spool: Arc<Spool>, publisher: Arc<DlqPublisher>, pool: Pool) -> Self {
        Drainer {
            spool,
            publisher,
            pool,
        }
    }

    /// At start, before consuming: entries at or above their partition's stored
    /// offset (or of a partition with nothing stored) are removed and counted
    /// (`SPOOL_SUPERSEDED`) with a log line naming each. Their batch never
    /// committed, so their message will be consumed, and judged, again.
    ///
    /// An entry that cannot be read for a reason other than damage fails the
    /// call: keeping it could publish it later although it was superseded.
    pub async fn discard_superseded(&self) -> Result<usize> {
        let mut stored = StoredOffsets::new(&self.pool);
        let mut discarded = 0;
        for entry in self.entries().await? {
            let Some(d) = self.read(&entry.id).await? else {
                continue;
            };
            if stored.is_committed(&d).await? {
                continue;
            }
            self.remove(&entry.id).await?;
            discarded += 1;
            metrics::counter!(m::SPOOL_SUPERSEDED).increment(1);
            tracing::info!(
                id = %d.id,
                topic = %d.topic,
                partition = d.partition,
                offset = d.offset,
                stored_offset = ?stored.known(&d),
                "discarded a superseded dead letter: its batch never committed, the message will be consumed again"
            );
        }
        Ok(discarded)
    }

    /// One pass: publish every committed entry (oldest first), remove it on ack.
    ///
    /// A failed delivery is counted in the report; a broker-wide failure (the
    /// DLQ being down) also stops the pass from handing over more entries.
    /// `Err` means the pass could not run: the spool or PostgreSQL failed.
    pub async fn drain_once(&self) -> Result<DrainReport> {
        self.pass(&CancellationToken::new()).await
    }

    /// Runs until `stop`: a pass, then a wait for `wake` or the 5 s tick; a
    /// failed pass backs off (1 s .. 30 s) instead. On stop, one last pass
    /// bounded by a short timeout.
    ///
    /// The pipeline pokes `wake` with `notify_one` after each commit that
    /// spooled something: the permit is kept if the drainer is busy, so no
    /// poke is lost. Cancel `stop` after the pipeline has stopped, so that the
    /// last pass sees its last commits.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, stop: CancellationToken) {
        let mut backoff = new_backoff();
        while !stop.is_cancelled() {
            if self.logged_pass(&stop).await {
                backoff = new_backoff();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            } else if backoff.wait(&stop).await.is_err() {
                break;
            }
        }
        let last = tokio::time::timeout(FINAL_PASS_TIMEOUT, self.drain_once()).await;
        match last {
            Ok(Ok(report)) => tracing::info!(?report, "dead-letter drainer stopped"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "dead-letter drainer stopped; entries stay spooled")
            }
            Err(_) => tracing::warn!(
                timeout = ?FINAL_PASS_TIMEOUT,
                "the last dead-letter pass timed out; entries stay spooled and are published after the restart"
            ),
        }
    }

    /// One pass for `run`; returns whether it went cleanly.
    async fn logged_pass(&self, stop: &CancellationToken) -> bool {
        match self.pass(stop).await {
            Ok(report) => {
                if report.published > 0 {
                    tracing::info!(
                        published = report.published,
                        pending = report.pending,
                        topic = self.publisher.topic(),
                        "dead letters published"
                    );
                }
                if report.failed > 0 {
                    tracing::warn!(
                        failed = report.failed,
                        published = report.published,
                        "dead letters could not be published; retrying with backoff"
                    );
                }
                report.failed == 0
            }
            Err(e) => {
                metrics::counter!(m::DLQ_PUBLISH_FAILURES, "cause" => pass_failure_cause(&e))
                    .increment(1);
                tracing::warn!(error = %e, "dead-letter pass failed; retrying with backoff");
                false
            }
        }
    }

    /// The pass itself. `stop` ends the handing over of new entries; those
    /// already in flight are still settled, so that none is left published
    /// but spooled.
    async fn pass(&self, stop: &CancellationToken) -> Result<DrainReport> {
        let mut pass = Pass::default();
        let mut stored = StoredOffsets::new(&self.pool);
        let mut halted: Option<Error> = None;
        for entry in self.entries().await? {
            if stop.is_cancelled() || pass.broker_down {
                break;
            }
            if let Err(e) = self.visit(&entry, &mut stored, &mut pass).await {
                halted = Some(e);
                break;
            }
        }
        // In flight entries are settled even after a failure, so that none
        // that the broker took stays spooled.
        while let Some(delivery) = pass.in_flight.pop_front() {
            if let Err(e) = self.settle(delivery, &mut pass).await {
                halted.get_or_insert(e);
            }
        }
        match halted {
            Some(e) => Err(e),
            None => Ok(pass.report),
        }
    }

    /// One entry: read it, check it is committed, hand it to the producer.
    /// `Err` halts the pass.
    async fn visit(
        &self,
        entry: &EntryInfo,
        stored: &mut StoredOffsets<'_>,
        pass: &mut Pass,
    ) -> Result<()> {
        let d = match self.read(&entry.id).await {
            Ok(Some(d)) => d,
            // Damaged (now quarantined by the spool) or gone.
            Ok(None) => return Ok(()),
            Err(e) => {
                pass.failure("spool");
                tracing::warn!(id = %entry.id, error = %e, "cannot read a spooled dead letter");
                return Ok(());
            }
        };
        if !stored.is_committed(&d).await? {
            pass.report.pending += 1;
            return Ok(());
        }
        loop {
            if pass.in_flight.len() >= IN_FLIGHT {
                self.settle_oldest(pass).await?;
            }
            match self.publisher.enqueue(&d) {
                Ok(delivery) => {
                    pass.in_flight.push_back(InFlight {
                        id: entry.id.clone(),
                        delivery,
                    });
                    return Ok(());
                }
                // The producer's queue frees up as deliveries complete.
                Err(e) if dlq::is_queue_full(&e) && !pass.in_flight.is_empty() => {
                    self.settle_oldest(pass).await?;
                }
                Err(e) => {
                    pass.publish_failed(&d.id, &e);
                    return Ok(());
                }
            }
        }
    }

    async fn settle_oldest(&self, pass: &mut Pass) -> Result<()> {
        match pass.in_flight.pop_front() {
            Some(delivery) => self.settle(delivery, pass).await,
            None => Ok(()),
        }
    }

    /// Waits for one acknowledgement; on success the entry leaves the spool.
    async fn settle(&self, in_flight: InFlight, pass: &mut Pass) -> Result<()> {
        let InFlight { id, delivery } = in_flight;
        match delivery.acknowledged().await {
            Ok((partition, offset)) => {
                metrics::counter!(m::DLQ_PUBLISHED).increment(1);
                pass.report.published += 1;
                tracing::debug!(%id, partition, offset, "dead letter published");
                // If this fails the entry is published again by a later pass.
                self.remove(&id).await
            }
            Err(e) => {
                pass.publish_failed(&id, &e);
                Ok(())
            }
        }
    }

    async fn entries(&self) -> Result<Vec<EntryInfo>> {
        self.blocking(|spool| spool.list()).await
    }

    /// Reads one entry; `None` when it is damaged (the spool quarantined and
    /// logged it) or no longer there.
    async fn read(&self, id: &str) -> Result<Option<DeadLetter>> {
        let id = id.to_string();
        match self.blocking(move |spool| spool.read(&id)).await {
            Ok(d) => Ok(Some(d)),
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::NotFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.blocking(move |spool| spool.remove(&id)).await
    }

    /// Runs a spool call on the blocking pool: each one touches the filesystem.
    async fn blocking<T, F>(&self, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Spool) -> Result<T> + Send + 'static,
    {
        let spool = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || call(&spool))
            .await
            .map_err(|e| {
                // A bug, not the entry's fault: retried like a disk error, never dropped.
                Error::io("spool call", io::Error::other(e.to_string()))
            })?
    }
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drainer")
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

fn new_backoff() -> Backoff {
    Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX)
}

fn pass_failure_cause(e: &Error) -> &'static str {
    match e {
        Error::Postgres(_) | Error::Pool(_) => "postgres",
        Error::Io { .. } => "spool",
        _ => "publish",
    }
}

struct InFlight {
    id: String,
    delivery: PendingDelivery,
}

#[derive(Default)]
struct Pass {
    report: DrainReport,
    in_flight: VecDeque<InFlight>,
    /// A delivery failed for a reason that is not the record's own: the DLQ
    /// is unreachable, and more entries would only fail the same way.
    broker_down: bool,
}

impl Pass {
    fn failure(&mut self, cause: &'static str) {
        self.report.failed += 1;
        metrics::counter!(m::DLQ_PUBLISH_FAILURES, "cause" => cause).increment(1);
    }

    fn publish_failed(&mut self, id: &str, e: &Error) {
        self.failure("publish");
        if dlq::is_record_specific(e) {
            tracing::error!(id, error = %e, "the DLQ refuses this dead letter; it stays spooled");
        } else {
            self.broker_down = true;
            tracing::debug!(id, error = %e, "dead letter not delivered");
        }
    }
}

/// Stored offsets read during one pass: one query per partition, and one
/// pooled connection, taken only if some entry needs it. Stored offsets only
/// move forward, so a value read earlier in the pass can hold an entry back
/// until the next pass, never publish one too early.
struct StoredOffsets<'p> {
    pool: &'p Pool,
    client: Option<Object>,
    known: HashMap<(String, String, i32), Option<i64>>,
}

impl<'p> StoredOffsets<'p> {
    fn new(pool: &'p Pool) -> Self {
        StoredOffsets {
            pool,
            client: None,
            known: HashMap::new(),
        }
    }

    /// Whether PostgreSQL has committed past the dead letter's message.
    async fn is_committed(&mut self, d: &DeadLetter) -> Result<bool> {
        let stored = self.lookup(d).await?;
        Ok(stored.is_some_and(|next| d.offset < next))
    }

    /// The stored offset already read for the dead letter's partition.
    fn known(&self, d: &DeadLetter) -> Option<i64> {
        self.known
            .get(&(d.group.clone(), d.topic.clone(), d.partition))
            .copied()
            .flatten()
    }

    async fn lookup(&mut self, d: &DeadLetter) -> Result<Option<i64>> {
        let cache_key = (d.group.clone(), d.topic.clone(), d.partition);
        if let Some(stored) = self.known.get(&cache_key) {
            return Ok(*stored);
        }
        let client = match &mut self.client {
            Some(client) => client,
            None => self.client.insert(self.pool.get().await?),
        };
        let key = PartitionKey {
            group: &d.group,
            topic: &d.topic,
            partition: d.partition,
        };
        let stored = offsets::read(&***client, &key).await?;
        self.known.insert(cache_key, stored);
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_failures_are_labelled_by_what_failed() {
        let io = Error::io("spool", io::Error::other("disk"));
        assert_eq!(pass_failure_cause(&io), "spool");
        let kafka = Error::Kafka(rdkafka::error::KafkaError::Canceled);
        assert_eq!(pass_failure_cause(&kafka), "publish");
    }

    #[test]
    fn a_cluster_failure_halts_the_pass_and_a_record_failure_does_not() {
        use rdkafka::error::{KafkaError::MessageProduction, RDKafkaErrorCode};
        let mut pass = Pass::default();
        let too_big = Error::Kafka(MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        pass.publish_failed("a-0-1", &too_big);
        assert!(!pass.broker_down);
        let timed_out = Error::Kafka(MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        pass.publish_failed("a-0-2", &timed_out);
        assert!(pass.broker_down);
        assert_eq!(pass.report.failed, 2);
    }
}
