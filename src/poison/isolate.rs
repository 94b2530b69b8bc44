//! Isolation down to the message.
//!
//! A batch that fails permanently is bisected: its halves are written again,
//! each in its own transaction that moves the partition's offset exactly over
//! the messages it holds, until every poison message stands alone. Each
//! committed piece is atomic with its offset, in offset order, so the fence and
//! the crash guarantees of a whole batch hold for every piece. The good messages
//! commit; k poison messages in a batch of n cost O(k log n) extra round trips.
//!
//! Durable order for each poison message: it is written to the spool (file and
//! directory fsynced) before any transaction moves the offset past it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;

use crate::batch::Received;
use crate::blocking;
use crate::error::{Class, Error, Reason};
use crate::health::Health;
use crate::metric;
use crate::model::Decoded;
use crate::otlp::spansink::v1::{DeadLetter, Header};
use crate::pg::offsets::PartitionKey;
use crate::pg::write::{
    AfterFailure, LedgerEntry, Recorder, WriteBatch, WriteOutcome, WriteStats, Writer,
};
use crate::poison::breaker::{Breakers, Probe};
use crate::poison::record::{dead_letter_id, truncate_error};
use crate::poison::spool::Spool;
use crate::retry::{self, Policy};

/// What a partition worker lends to one batch's isolation.
pub struct Ctx<'a> {
    pub writer: &'a Writer,
    pub key: PartitionKey<'a>,
    pub spool: &'a Arc<Spool>,
    pub instance: &'a str,
    pub stop: &'a CancellationToken,
    pub health: &'a Health,
    pub breakers: &'a Breakers,
    /// The batch is the half-open breaker's probe.
    pub probe: Option<&'a Probe>,
    pub retry: Policy,
    /// The sessions' `statement_timeout`; zero when there is none.
    pub statement_timeout: Duration,
}

#[derive(Debug)]
pub enum Outcome {
    /// Every message is committed or dead-lettered; the offset is past the batch.
    Done {
        stats: WriteStats,
        /// Indexes of the dead-lettered messages, with their reason.
        dead: Vec<(usize, Reason)>,
        /// The batch committed, but only an acknowledgement-less retry proved it.
        unconfirmed: bool,
    },
    /// Another writer moved the offset: drop the batch, resume from `stored`.
    Fenced {
        stored: Option<i64>,
    },
    /// The circuit breaker opened: what committed stands, nothing more is
    /// dead-lettered, and the partition resumes from the offset now stored.
    Halted,
    /// Asked to stop mid-way; what committed is committed, the rest is not.
    Stopped,
    Fatal(Error),
}

/// What became of one range's transaction, retried while failures are transient.
enum RangeOutcome {
    Committed(WriteStats, bool),
    Poison(Error),
    /// A statement outlasted `statement_timeout`.
    TooSlow(Error),
    Fenced(Option<i64>),
    Stopped,
    Fatal(Error),
}

/// Writes `messages` (whose decodings are `decoded`) so that every message is
/// either committed or dead-lettered, moving `expected` along.
pub async fn commit(
    ctx: &Ctx<'_>,
    expected: &mut Option<i64>,
    messages: &[Received],
    decoded: &[Result<Decoded, Error>],
) -> Outcome {
    let mut b = Bisection::new(messages.len());
    // Known poison (decode and validation) is spooled first, before any
    // transaction can move the offset past it.
    for (i, d) in decoded.iter().enumerate() {
        if let Err(e) = d {
            if let Err(stop) = b.dead_letter(ctx, messages, i, e, Attempts::once()).await {
                return stop;
            }
        }
    }
    // Ranges in offset order: left halves before right halves.
    let mut pending = vec![(0usize, messages.len())];
    while let Some((lo, hi)) = pending.pop() {
        if ctx.stop.is_cancelled() {
            return Outcome::Stopped;
        }
        let rows: Vec<&Decoded> = (lo..hi)
            .filter(|i| b.ledger[*i].is_none())
            .filter_map(|i| decoded[i].as_ref().ok())
            .collect();
        let dead_letters: Vec<LedgerEntry> = b.ledger[lo..hi].iter().flatten().cloned().collect();
        let next_offset = messages[hi - 1].offset + 1;
        let next = match write_range(ctx, *expected, &rows, &dead_letters, next_offset).await {
            RangeOutcome::Committed(s, lost_ack) => {
                *expected = Some(next_offset);
                add(&mut b.stats, s);
                b.unconfirmed |= lost_ack;
                Ok(())
            }
            RangeOutcome::Poison(err) => {
                b.refused(ctx, messages, (lo, hi), err, &mut pending).await
            }
            RangeOutcome::TooSlow(err) => {
                b.too_slow(ctx, messages, (lo, hi), err, &mut pending).await
            }
            // Dead letters spooled for this batch and not committed stay in the
            // spool: the forwarder publishes only what the ledger holds.
            RangeOutcome::Fenced(stored) => Err(Outcome::Fenced { stored }),
            RangeOutcome::Stopped => Err(Outcome::Stopped),
            RangeOutcome::Fatal(e) => Err(Outcome::Fatal(e)),
        };
        if let Err(outcome) = next {
            return outcome;
        }
    }
    b.dead.sort_unstable_by_key(|(i, _)| *i);
    Outcome::Done {
        stats: b.stats,
        dead: b.dead,
        unconfirmed: b.unconfirmed,
    }
}

/// How often one message may outlast the statement timeout alone before it
/// is dead-lettered as `statement_timeout`.
pub const MAX_SLOW_TRIES: u32 = 3;

/// What one batch's isolation has learnt so far, by message index.
struct Bisection {
    /// The dead-lettered messages, with their reason.
    dead: Vec<(usize, Reason)>,
    /// The ledger rows of the dead letters: a range's transaction records
    /// those of its own messages.
    ledger: Vec<Option<LedgerEntry>>,
    attempts: Vec<Option<Attempts>>,
    slow_tries: Vec<u32>,
    stats: WriteStats,
    unconfirmed: bool,
}

type Step = std::result::Result<(), Outcome>;

impl Bisection {
    fn new(n: usize) -> Self {
        Bisection {
            dead: Vec::new(),
            ledger: vec![None; n],
            attempts: vec![None; n],
            slow_tries: vec![0; n],
            stats: WriteStats::default(),
            unconfirmed: false,
        }
    }

    /// The messages of `lo..hi` not yet dead-lettered.
    fn undecided(&self, (lo, hi): (usize, usize)) -> Vec<usize> {
        (lo..hi).filter(|i| self.ledger[*i].is_none()).collect()
    }

    async fn dead_letter(
        &mut self,
        ctx: &Ctx<'_>,
        messages: &[Received],
        i: usize,
        err: &Error,
        tried: Attempts,
    ) -> Step {
        self.ledger[i] = Some(spool(ctx, &messages[i], err, tried).await?);
        self.dead.push((i, err.reason().unwrap_or(Reason::Panic)));
        Ok(())
    }

    /// PostgreSQL refused the range for its data: halve it until the message
    /// at fault stands alone, then dead-letter it and write the rest again.
    async fn refused(
        &mut self,
        ctx: &Ctx<'_>,
        messages: &[Received],
        range: (usize, usize),
        err: Error,
        pending: &mut Vec<(usize, usize)>,
    ) -> Step {
        metrics::counter!(metric::BATCH_SPLITS, "topic" => ctx.key.topic.to_string(), "cause" => "poison")
            .increment(1);
        let good = self.undecided(range);
        for i in &good {
            self.attempts[*i] = Some(Attempts::again(self.attempts[*i]));
        }
        match good.as_slice() {
            // Only already-spooled poison left and still refused: the offset and
            // ledger transaction cannot be the message's fault.
            [] => return Err(Outcome::Fatal(err)),
            [only] => {
                if let Some(held_back) = crate::logcap::allow("isolated a poison message") {
                    tracing::warn!(offset = messages[*only].offset, error = %err, held_back, "isolated a poison message");
                }
                let tried = self.attempts[*only].unwrap_or_else(Attempts::once);
                self.dead_letter(ctx, messages, *only, &err, tried).await?;
                // The same range again, now without it: its offset moves on.
                pending.push(range);
            }
            _ => split(&good, range, pending),
        }
        Ok(())
    }

    /// Too slow, not poison: smaller pieces finish sooner. Only a message that
    /// outlasts the timeout alone, again and again, is dead-lettered.
    async fn too_slow(
        &mut self,
        ctx: &Ctx<'_>,
        messages: &[Received],
        range: (usize, usize),
        err: Error,
        pending: &mut Vec<(usize, usize)>,
    ) -> Step {
        let good = self.undecided(range);
        match good.as_slice() {
            [only] => {
                self.slow_tries[*only] += 1;
                let tries = self.slow_tries[*only];
                if tries >= MAX_SLOW_TRIES {
                    let too_slow = Error::input(
                        Reason::StatementTimeout,
                        format!(
                            "writing this message alone outlasted the statement timeout ({}) {tries} times: {} bytes ({err})",
                            humantime::format_duration(ctx.statement_timeout),
                            messages[*only].payload.len()
                        ),
                    );
                    let tried = Attempts {
                        count: tries,
                        ..self.attempts[*only].unwrap_or_else(Attempts::once)
                    };
                    self.dead_letter(ctx, messages, *only, &too_slow, tried)
                        .await?;
                }
                pending.push(range);
            }
            // The offset move alone was slow: the database is, not the data.
            [] => pending.push(range),
            _ => {
                metrics::counter!(metric::BATCH_SPLITS, "topic" => ctx.key.topic.to_string(), "cause" => "too_slow")
                    .increment(1);
                tracing::warn!(messages = good.len(), error = %err, "batch outlasted the statement timeout: splitting it");
                split(&good, range, pending);
            }
        }
        Ok(())
    }
}

/// Splits the range's undecided messages in two halves, left first.
fn split(good: &[usize], (lo, hi): (usize, usize), pending: &mut Vec<(usize, usize)>) {
    let mid = good[good.len() / 2];
    pending.push((mid, hi));
    pending.push((lo, mid));
}

fn add(total: &mut WriteStats, s: WriteStats) {
    *total += s;
}

/// Writes one range in one transaction, retried while failures are transient.
async fn write_range(
    ctx: &Ctx<'_>,
    expected: Option<i64>,
    rows: &[&Decoded],
    dead_letters: &[LedgerEntry],
    next_offset: i64,
) -> RangeOutcome {
    let written = retry::until_ok("writing a batch", ctx.stop, ctx.retry, |tries| async move {
        if tries > 0 {
            // The failed try may have committed all the same, its
            // acknowledgement lost, or another writer may have moved on.
            match ctx
                .writer
                .resolve_after_failure(&ctx.key, expected, next_offset)
                .await
            {
                Ok(AfterFailure::AlreadyCommitted) => {
                    return Ok(RangeOutcome::Committed(WriteStats::default(), true))
                }
                Ok(AfterFailure::Fenced { stored }) => return Ok(RangeOutcome::Fenced(stored)),
                Ok(AfterFailure::NotCommitted) | Err(_) => {}
            }
        }
        let batch = WriteBatch {
            key: ctx.key,
            expected,
            next_offset,
            replayed: false,
            messages: rows,
            dead_letters,
            recorder: Recorder {
                instance: ctx.instance,
                spool_id: ctx.spool.id(),
            },
        };
        let started = Instant::now();
        match guarded_write(ctx.writer, &batch).await {
            Ok(WriteOutcome::Committed(stats)) => Ok(RangeOutcome::Committed(stats, false)),
            // An earlier try of this very range committed; its acknowledgement was lost.
            Ok(WriteOutcome::Fenced { stored }) if stored == Some(next_offset) => {
                Ok(RangeOutcome::Committed(WriteStats::default(), true))
            }
            Ok(WriteOutcome::Fenced { stored }) => Ok(RangeOutcome::Fenced(stored)),
            Err(e) if timed_out(&e, started.elapsed(), ctx.statement_timeout) => {
                Ok(RangeOutcome::TooSlow(e))
            }
            Err(e) => {
                if e.class() == Class::Transient {
                    let pg = e.transient_kind().starts_with("pg_");
                    ctx.health.set_pg_unreachable(pg.then(|| e.to_string()));
                }
                Err(e)
            }
        }
    })
    .await;
    match written {
        Ok(outcome) => outcome,
        Err(Error::Shutdown) => RangeOutcome::Stopped,
        Err(e) if e.class() == Class::Poison => RangeOutcome::Poison(e),
        Err(e) => RangeOutcome::Fatal(e),
    }
}

/// A panic while writing is caught here, with the range: it is one of the
/// range's messages that made the code panic, so it is poison, isolated like
/// any other.
async fn guarded_write(
    writer: &Writer,
    batch: &WriteBatch<'_>,
) -> crate::error::Result<WriteOutcome> {
    AssertUnwindSafe(writer.write(batch))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            metrics::counter!(metric::PANICS).increment(1);
            Err(Error::Panic(crate::error::panic_message(&panic)))
        })
}

/// Whether a failure is the statement timeout: SQLSTATE 57014 after at least
/// (nearly) the timeout. The same code with a shorter run is a cancel, by an
/// operator or a shutdown: transient. Told apart by time, not by message
/// text, which `lc_messages` may translate.
fn timed_out(err: &Error, took: Duration, timeout: Duration) -> bool {
    !timeout.is_zero() && err.sqlstate() == Some("57014") && took >= timeout.mul_f64(0.9)
}

/// Writes one poison message to the spool, durably, retrying while the disk
/// is the problem (a full disk pauses; it never drops), once the circuit
/// breaker agrees that it may be dead-lettered. Returns its ledger row.
pub async fn spool(
    ctx: &Ctx<'_>,
    message: &Received,
    err: &Error,
    attempts: Attempts,
) -> std::result::Result<LedgerEntry, Outcome> {
    let tenant = message.tenant.as_deref().unwrap_or_default();
    if !ctx
        .breakers
        .poison(ctx.key.topic, ctx.key.partition, tenant, ctx.probe)
    {
        return Err(Outcome::Halted);
    }
    let dead_letter = dead_letter(ctx, message, err, attempts);
    let put = retry::until_ok(
        "writing a dead letter to the spool",
        ctx.stop,
        ctx.retry,
        |_| {
            let (spool, dl) = (Arc::clone(ctx.spool), dead_letter.clone());
            blocking::run("spool write", move || spool.put(&dl))
        },
    )
    .await;
    match put {
        Ok(_) => {}
        Err(Error::Shutdown) => return Err(Outcome::Stopped),
        Err(e) => return Err(Outcome::Fatal(e)),
    }
    let reason = err.reason().unwrap_or(Reason::Panic);
    metrics::counter!(metric::DEAD_LETTERS, "topic" => ctx.key.topic.to_string(),
        "stage" => reason.stage().as_str(), "reason" => reason.as_str())
    .increment(1);
    // Every dead letter is counted and kept; the log samples them.
    if let Some(held_back) = crate::logcap::allow("dead-lettered") {
        tracing::warn!(offset = message.offset, reason = %reason, error = %err, id = %dead_letter.id, held_back, "dead-lettered");
    }
    Ok(ledger_entry(&dead_letter))
}

/// The ledger row of a dead letter. PostgreSQL text refuses NUL, which an
/// error text quoting the input may hold.
pub fn ledger_entry(d: &DeadLetter) -> LedgerEntry {
    let text = |s: &str| s.replace('\0', "\u{fffd}");
    LedgerEntry {
        offset: d.offset,
        id: d.id.clone(),
        tenant: text(d.tenant.as_deref().unwrap_or_default()),
        stage: text(&d.stage),
        reason: text(&d.reason),
        error: text(&d.error),
        sqlstate: d.sqlstate.as_deref().map(text),
    }
}

/// How often one message was tried, and since when it fails.
#[derive(Debug, Clone, Copy)]
pub struct Attempts {
    pub count: u32,
    pub first_failure_unix_ms: i64,
}

impl Attempts {
    pub fn once() -> Self {
        Attempts {
            count: 1,
            first_failure_unix_ms: crate::clock::now_millis(),
        }
    }

    fn again(previous: Option<Attempts>) -> Self {
        match previous {
            Some(a) => Attempts {
                count: a.count + 1,
                ..a
            },
            None => Attempts::once(),
        }
    }
}

/// The dead letter for one message: the original bytes, unchanged, and why.
pub fn dead_letter(
    ctx: &Ctx<'_>,
    message: &Received,
    err: &Error,
    attempts: Attempts,
) -> DeadLetter {
    let reason = err.reason().unwrap_or(Reason::Panic);
    DeadLetter {
        id: dead_letter_id(
            ctx.key.group,
            ctx.key.topic,
            ctx.key.partition,
            message.offset,
        ),
        group: ctx.key.group.to_string(),
        topic: ctx.key.topic.to_string(),
        partition: ctx.key.partition,
        offset: message.offset,
        timestamp_ms: message.timestamp_ms,
        key: message.key.clone(),
        headers: message
            .headers
            .iter()
            .map(|(k, v)| Header {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        payload: message.payload.clone(),
        tenant: message.tenant.as_ref().ok().map(|t| t.to_string()),
        stage: reason.stage().to_string(),
        reason: reason.as_str().to_string(),
        error: truncate_error(&err.to_string()),
        sqlstate: err.sqlstate().map(str::to_string),
        attempts: attempts.count,
        first_failure_unix_ms: attempts.first_failure_unix_ms,
        instance: ctx.instance.to_string(),
        version: crate::VERSION.to_string(),
        spool_id: ctx.spool.id().to_string(),
    }
}
