//! Moves dead letters from the spool to the DLQ topic, once PostgreSQL has
//! committed them as dead letters of this spool.
//!
//! The pipeline spools a poison message, then commits PostgreSQL: the good
//! rows, the moved offset and the message's row in the `dead_letters` ledger,
//! naming the spool that holds it. Only then is the dead letter final: until
//! the commit, a crash, a lost fence or a revocation sends the message through
//! the pipeline again, maybe on another replica with its own spool, maybe
//! (after an upgrade) with success. So an entry is published only when the
//! ledger holds it under this spool's id, and removed only once the broker
//! acknowledged it. A crash between the two publishes it again on the next
//! pass: a DLQ consumer drops the copy by its `spansink.dlq.id`.
//!
//! The offset and the ledger are read in one statement (one snapshot): with
//! two reads, a commit landing between them would look like "committed, but
//! not as a dead letter", and the entry would be wrongly discarded.
//!
//! | ledger row            | stored offset past it | the entry                        |
//! |-----------------------|-----------------------|----------------------------------|
//! | this spool's          | (yes)                 | published                        |
//! | another spool's       | (yes)                 | discarded: that spool publishes  |
//! | none                  | yes                   | discarded: stored, or skipped, without it |
//! | none                  | no                    | waits: its batch may be committing |
//!
//! At start, and for `spansink spool drain` (the spool's lock says no batch of
//! it is in flight), waiting entries are discarded too: their batch never
//! committed, so their message will be consumed, and judged, again
//! ([`Forwarder::recover`]). Entries written before the ledger existed are
//! recorded in it then if their offset is already past, so an upgrade
//! discards nothing.
//!
//! A dead letter the DLQ topic refuses for itself (its size) is published as a
//! marker, with spansink's headers and no value, and its entry moved to the
//! spool's `oversize/`, whole: it never blocks the others.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::blocking;
use crate::error::{Class, Error, Result};
use crate::metric;
use crate::otlp::spansink::v1::DeadLetter;
use crate::poison::dlq::{self, DlqPublisher, PendingDelivery};
use crate::poison::isolate::ledger_entry;
use crate::poison::spool::{EntryInfo, Spool};
use crate::retry::Backoff;
use crate::shutdown::Stopper;

const SETTLED: &str = include_str!("../../sql/dead_letters_settled.sql");
const ADOPT: &str = include_str!("../../sql/dead_letters_adopt.sql");

/// How often the forwarder looks at the spool when nothing wakes it: entries
/// whose commit landed without a poke (after a restart, say) wait no longer.
const TICK: Duration = Duration::from_secs(5);
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Dead letters handed to the producer before the oldest one's acknowledgement
/// is awaited: enough to hide the round trip, few enough that an outage fails
/// a bounded number of them.
const IN_FLIGHT: usize = 32;
/// Entries whose fate one statement reads.
const CHECK_CHUNK: usize = 1000;

/// What one pass did. Entries a halted pass did not reach are in no count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardReport {
    /// Acknowledged by the broker and removed from the spool.
    pub published: usize,
    /// Not yet committed in PostgreSQL: left for a later pass.
    pub pending: usize,
    /// Could not be read or published: left for a later pass.
    pub failed: usize,
    /// Committed without being a dead letter of this spool: removed.
    pub discarded: usize,
    /// Refused by the DLQ topic for their size: a marker published, the entry
    /// moved to `oversize/`.
    pub oversize: usize,
}

/// What PostgreSQL says of one spooled dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Publish,
    /// Another spool holds it as a dead letter, or it was committed without
    /// being one; `why` says which.
    Discard(&'static str),
    /// Not committed yet.
    Wait,
}

fn fate(d: &DeadLetter, my_spool: &str, stored: Option<i64>, ledger: Option<&str>) -> Fate {
    match ledger {
        Some(spool) if spool == my_spool => Fate::Publish,
        Some(_) => Fate::Discard("dead-lettered by another instance, whose spool publishes it"),
        None if stored.is_some_and(|next| d.offset < next) => {
            Fate::Discard("committed without it: stored by another instance, or passed over")
        }
        None => Fate::Wait,
    }
}

pub struct Forwarder {
    spool: Arc<Spool>,
    publisher: Arc<DlqPublisher>,
    pool: Pool,
}

impl Forwarder {
    pub fn new(spool: Arc<Spool>, publisher: Arc<DlqPublisher>, pool: Pool) -> Self {
        Forwarder {
            spool,
            publisher,
            pool,
        }
    }

    /// Before consuming (or when draining a spool no process owns): records
    /// in the ledger the entries an earlier release spooled and committed, and
    /// removes every entry that will never be published from here: those
    /// whose batch never committed (their message will be consumed and judged
    /// again) and those committed without being this spool's dead letter. Each
    /// is counted (`SPOOL_SUPERSEDED`) and logged. Returns how many went.
    ///
    /// An entry that cannot be read for a reason other than damage fails the
    /// call: keeping it could publish it later although it was superseded.
    pub async fn recover(&self) -> Result<usize> {
        let mut letters = Vec::new();
        for entry in self.entries().await? {
            if let Some(d) = self.read(&entry.id).await? {
                letters.push(d);
            }
        }
        self.adopt_legacy(&letters).await?;
        let mut discarded = 0;
        for chunk in letters.chunks(CHECK_CHUNK) {
            for (d, fate) in chunk.iter().zip(self.fates(chunk).await?) {
                let why = match fate {
                    Fate::Publish => continue,
                    Fate::Discard(why) => why,
                    Fate::Wait => "its batch never committed: the message will be consumed again",
                };
                self.discard(d, why).await?;
                discarded += 1;
            }
        }
        Ok(discarded)
    }

    /// One pass: publish every entry the ledger holds for this spool (oldest
    /// first), remove it on ack, and remove those that will never be.
    pub async fn forward_once(&self) -> Result<ForwardReport> {
        self.pass(&CancellationToken::new()).await
    }

    /// Runs until `stop`: a pass, then a wait for `wake` or the 5 s tick; a
    /// failed pass backs off (1 s .. 30 s) instead. On stop, one last pass
    /// bounded by `final_pass`.
    ///
    /// The pipeline pokes `wake` with `notify_one` after each commit that
    /// spooled something: the permit is kept if the forwarder is busy, so no
    /// poke is lost. Cancel `stop` after the pipeline has stopped, so that the
    /// last pass sees its last commits.
    pub async fn run(
        self: Arc<Self>,
        wake: Arc<Notify>,
        stop: CancellationToken,
        final_pass: Duration,
        stopper: Stopper,
    ) {
        let mut backoff = new_backoff();
        while !stop.is_cancelled() {
            match self.logged_pass(&stop).await {
                Ok(true) => {
                    backoff = new_backoff();
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(TICK) => {}
                    }
                }
                Ok(false) => {
                    if backoff.wait(&stop).await.is_err() {
                        break;
                    }
                }
                // A bug (a panic in spool code): the process stops; entries stay spooled.
                Err(e) => {
                    stopper.fail(e);
                    break;
                }
            }
        }
        let last = tokio::time::timeout(final_pass, self.forward_once()).await;
        match last {
            Ok(Ok(report)) => tracing::info!(?report, "dead-letter forwarder stopped"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "dead-letter forwarder stopped; entries stay spooled")
            }
            Err(_) => tracing::warn!(
                timeout = ?final_pass,
                "the last dead-letter pass timed out; entries stay spooled and are published after the restart"
            ),
        }
    }

    /// One pass for `run`; returns whether it went cleanly, or the fatal
    /// error that must stop the process.
    async fn logged_pass(&self, stop: &CancellationToken) -> Result<bool> {
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
                Ok(report.failed == 0)
            }
            Err(e) if e.class() == Class::Fatal => Err(e),
            Err(e) => {
                metrics::counter!(metric::DLQ_PUBLISH_FAILURES, "cause" => pass_failure_cause(&e))
                    .increment(1);
                tracing::warn!(error = %e, "dead-letter pass failed; retrying with backoff");
                Ok(false)
            }
        }
    }

    /// The pass itself. `stop` ends the handing over of new entries; those
    /// already in flight are still settled, so that none is left published
    /// but spooled.
    async fn pass(&self, stop: &CancellationToken) -> Result<ForwardReport> {
        let mut pass = Pass::default();
        let mut halted: Option<Error> = None;
        let entries = self.entries().await?;
        'chunks: for chunk in entries.chunks(CHECK_CHUNK) {
            let mut letters = Vec::with_capacity(chunk.len());
            for entry in chunk {
                match self.read(&entry.id).await {
                    Ok(Some(d)) => letters.push(d),
                    // Damaged (now quarantined by the spool) or gone.
                    Ok(None) => {}
                    Err(e) => {
                        pass.failure("spool");
                        tracing::warn!(id = %entry.id, error = %e, "cannot read a spooled dead letter");
                    }
                }
            }
            let fates = match self.fates(&letters).await {
                Ok(fates) => fates,
                Err(e) => {
                    halted = Some(e);
                    break;
                }
            };
            for (d, fate) in letters.into_iter().zip(fates) {
                if stop.is_cancelled() || pass.broker_down {
                    break 'chunks;
                }
                let visited = match fate {
                    Fate::Publish => self.publish(d, &mut pass).await,
                    Fate::Discard(why) => {
                        pass.report.discarded += 1;
                        self.discard(&d, why).await
                    }
                    Fate::Wait => {
                        pass.report.pending += 1;
                        Ok(())
                    }
                };
                if let Err(e) = visited {
                    halted = Some(e);
                    break 'chunks;
                }
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

    /// Hands one committed entry to the producer. `Err` halts the pass.
    async fn publish(&self, d: DeadLetter, pass: &mut Pass) -> Result<()> {
        loop {
            if pass.in_flight.len() >= IN_FLIGHT {
                self.settle_oldest(pass).await?;
            }
            match self.publisher.enqueue(&d) {
                Ok(delivery) => {
                    pass.in_flight.push_back(InFlight {
                        letter: d,
                        delivery,
                    });
                    return Ok(());
                }
                // The producer's queue frees up as deliveries complete.
                Err(e) if dlq::is_queue_full(&e) && !pass.in_flight.is_empty() => {
                    self.settle_oldest(pass).await?;
                }
                Err(e) if dlq::is_record_specific(&e) => return self.set_aside(&d, &e, pass).await,
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
        let InFlight { letter, delivery } = in_flight;
        match delivery.acknowledged().await {
            Ok((partition, offset)) => {
                metrics::counter!(metric::DLQ_PUBLISHED).increment(1);
                pass.report.published += 1;
                tracing::debug!(id = %letter.id, partition, offset, "dead letter published");
                // If this fails the entry is published again by a later pass.
                self.remove(&letter.id).await
            }
            Err(e) if dlq::is_record_specific(&e) => self.set_aside(&letter, &e, pass).await,
            Err(e) => {
                pass.publish_failed(&letter.id, &e);
                Ok(())
            }
        }
    }

    /// The DLQ topic refuses this dead letter for itself (in practice its
    /// size): a marker without the value goes out instead, then the entry
    /// moves, whole, to `oversize/`. A crash in between publishes the marker
    /// again, with the same id.
    async fn set_aside(&self, d: &DeadLetter, refused: &Error, pass: &mut Pass) -> Result<()> {
        let marker = self.publisher.publish_marker(d, &refused.to_string()).await;
        if let Err(e) = &marker {
            if !dlq::is_record_specific(e) {
                // The broker is the problem, not the record: try again later.
                pass.publish_failed(&d.id, e);
                return Ok(());
            }
            tracing::error!(id = %d.id, error = %e, "the DLQ topic refuses even the marker of this dead letter");
        }
        let id = d.id.clone();
        let moved = self
            .blocking(move |spool| spool.set_aside_oversize(&id))
            .await?;
        pass.report.oversize += 1;
        metrics::counter!(metric::DLQ_OVERSIZE).increment(1);
        tracing::error!(
            id = %d.id,
            bytes = d.payload.len(),
            refused = %refused,
            kept_at = %moved.display(),
            marker_published = marker.is_ok(),
            "the DLQ topic refuses this dead letter for its size: a marker was published instead, \
             and the whole record is kept in the spool's oversize/ directory"
        );
        Ok(())
    }

    /// Reads, in one statement per chunk, what PostgreSQL says of each entry.
    async fn fates(&self, letters: &[DeadLetter]) -> Result<Vec<Fate>> {
        if letters.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SETTLED).await?;
        let groups: Vec<&str> = letters.iter().map(|d| d.group.as_str()).collect();
        let topics: Vec<&str> = letters.iter().map(|d| d.topic.as_str()).collect();
        let partitions: Vec<i32> = letters.iter().map(|d| d.partition).collect();
        let offsets: Vec<i64> = letters.iter().map(|d| d.offset).collect();
        let rows = client
            .query(&stmt, &[&groups, &topics, &partitions, &offsets])
            .await?;
        let my_spool = self.spool.id();
        letters
            .iter()
            .zip(&rows)
            .map(|(d, row)| {
                let stored: Option<i64> = row.try_get(0)?;
                let ledger: Option<&str> = row.try_get(1)?;
                Ok(fate(d, my_spool, stored, ledger))
            })
            .collect()
    }

    /// Entries spooled before the ledger existed, whose offset is already
    /// past, are recorded in it as this spool's.
    async fn adopt_legacy(&self, letters: &[DeadLetter]) -> Result<()> {
        let legacy: Vec<&DeadLetter> = letters.iter().filter(|d| d.spool_id.is_empty()).collect();
        if legacy.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(ADOPT).await?;
        for d in legacy {
            let e = ledger_entry(d);
            let adopted = client
                .execute(
                    &stmt,
                    &[
                        &d.group,
                        &d.topic,
                        &d.partition,
                        &d.offset,
                        &e.id,
                        &e.tenant,
                        &e.stage,
                        &e.reason,
                        &e.error,
                        &e.sqlstate,
                        &d.instance,
                        &self.spool.id(),
                    ],
                )
                .await?;
            if adopted > 0 {
                tracing::info!(id = %d.id, "recorded in the dead-letter ledger a dead letter spooled by an earlier release");
            }
        }
        Ok(())
    }

    async fn discard(&self, d: &DeadLetter, why: &str) -> Result<()> {
        self.remove(&d.id).await?;
        metrics::counter!(metric::SPOOL_SUPERSEDED).increment(1);
        tracing::info!(
            id = %d.id,
            topic = %d.topic,
            partition = d.partition,
            offset = d.offset,
            why,
            "discarded a spooled dead letter that will not be published from here"
        );
        Ok(())
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
        blocking::run("spool", move || call(&spool)).await
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
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
    letter: DeadLetter,
    delivery: PendingDelivery,
}

#[derive(Default)]
struct Pass {
    report: ForwardReport,
    in_flight: VecDeque<InFlight>,
    /// A delivery failed for a reason that is not the record's own: the DLQ
    /// is unreachable, and more entries would only fail the same way.
    broker_down: bool,
}

impl Pass {
    fn failure(&mut self, cause: &'static str) {
        self.report.failed += 1;
        metrics::counter!(metric::DLQ_PUBLISH_FAILURES, "cause" => cause).increment(1);
    }

    fn publish_failed(&mut self, id: &str, e: &Error) {
        self.failure("publish");
        self.broker_down = true;
        tracing::debug!(id, error = %e, "dead letter not delivered");
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
    fn a_cluster_failure_halts_the_pass() {
        use rdkafka::error::{KafkaError::MessageProduction, RDKafkaErrorCode};
        let mut pass = Pass::default();
        let timed_out = Error::Kafka(MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        pass.publish_failed("a-0-2", &timed_out);
        assert!(pass.broker_down);
        assert_eq!(pass.report.failed, 1);
    }

    #[test]
    fn the_ledger_decides_each_entry() {
        let d = DeadLetter {
            offset: 7,
            ..DeadLetter::default()
        };
        assert_eq!(fate(&d, "me", Some(8), Some("me")), Fate::Publish);
        assert!(matches!(
            fate(&d, "me", Some(8), Some("other")),
            Fate::Discard(_)
        ));
        assert!(matches!(fate(&d, "me", Some(8), None), Fate::Discard(_)));
        assert_eq!(fate(&d, "me", Some(7), None), Fate::Wait);
        assert_eq!(fate(&d, "me", None, None), Fate::Wait);
    }
}
