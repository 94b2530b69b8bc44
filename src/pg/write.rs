//! The batch transaction: a batch's spans, events, trace summaries and its
//! Kafka offset commit together or not at all.
//!
//! Exactly-once rests on two things. The offset row fences writers: a batch
//! commits only if the stored offset is still the one its worker last saw, so
//! a zombie worker (after a rebalance, say) cannot write. And every insert is
//! idempotent (`ON CONFLICT DO NOTHING` on natural keys), with `traces` built
//! only from the spans actually inserted, so a replayed message changes
//! nothing.

use std::sync::Arc;

use deadpool_postgres::{Object, Pool, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::Statement;

use crate::error::{is_missing_partition, Error, Result};
use crate::metric;
use crate::model::Decoded;
use crate::pg::dedupe::Rows;
use crate::pg::offsets::{self, PartitionKey};
use crate::pg::partitions::Partitions;
use crate::pg::pool::TxConnection;
use crate::pg::{copy, pool, span_metrics, traces};

const OFFSETS_ADVANCE: &str = include_str!("../../sql/offsets_advance.sql");
const OFFSETS_CLAIM: &str = include_str!("../../sql/offsets_claim.sql");
const COPY_SPANS: &str = include_str!("../../sql/copy_spans.sql");
const COPY_EVENTS: &str = include_str!("../../sql/copy_events.sql");
const SPANS_MOVE: &str = include_str!("../../sql/spans_move.sql");
const EVENTS_MOVE: &str = include_str!("../../sql/events_move.sql");
const SPANS_COPY_DIRECT: &str = include_str!("../../sql/spans_copy_direct.sql");
const EVENTS_COPY_DIRECT: &str = include_str!("../../sql/events_copy_direct.sql");
const TRACES_COPY_STAGE: &str = include_str!("../../sql/traces_copy_stage.sql");
const TRACES_UPSERT: &str = include_str!("../../sql/traces_upsert.sql");
const COPY_LOGS: &str = include_str!("../../sql/copy_logs.sql");
const LOGS_MOVE: &str = include_str!("../../sql/logs_move.sql");
const LOGS_COPY_DIRECT: &str = include_str!("../../sql/logs_copy_direct.sql");
const SPAN_METRICS_COPY_STAGE: &str = include_str!("../../sql/span_metrics_copy_stage.sql");
const SPAN_METRICS_UPSERT: &str = include_str!("../../sql/span_metrics_upsert.sql");
const DEAD_LETTERS_RECORD: &str = include_str!("../../sql/dead_letters_record.sql");
const DEAD_LETTERS_REPLAYED: &str = include_str!("../../sql/dead_letters_replayed.sql");

/// One dead letter whose offset a batch transaction moves past: recorded in
/// the `dead_letters` ledger by that transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub offset: i64,
    pub id: String,
    /// Empty when the message had no valid tenant.
    pub tenant: String,
    pub stage: String,
    pub reason: String,
    pub error: String,
    pub sqlstate: Option<String>,
}

/// Who records dead letters: the committing instance and the spool that holds them.
#[derive(Debug, Clone, Copy)]
pub struct Recorder<'a> {
    pub instance: &'a str,
    pub spool_id: &'a str,
}

/// One batch of one Kafka partition, ready to write.
#[derive(Debug, Clone, Copy)]
pub struct WriteBatch<'a> {
    pub key: PartitionKey<'a>,
    /// What this worker read at assignment or wrote at its last commit (None: no row existed).
    pub expected: Option<i64>,
    /// The batch's last offset + 1; for a replay, the dead letter's offset.
    pub next_offset: i64,
    /// A replay of the dead letter at `key` and `next_offset`: its ledger row
    /// is marked in the same transaction. Never fenced.
    pub replayed: bool,
    /// The decoded messages of the batch, in offset order (a subset during poison bisection).
    pub messages: &'a [&'a Decoded],
    /// The dead letters among the batch's messages, for the ledger.
    pub dead_letters: &'a [LedgerEntry],
    pub recorder: Recorder<'a>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub spans_inserted: u64,
    /// Spans of the batch not inserted: already stored, or repeated within the batch.
    pub spans_duplicate: u64,
    pub events_inserted: u64,
    /// Links of the inserted spans.
    pub links_inserted: u64,
    /// `traces` rows inserted or updated.
    pub traces_touched: u64,
    pub logs_inserted: u64,
    /// Log records of the batch already stored (a replayed message).
    pub logs_duplicate: u64,
}

impl std::ops::AddAssign for WriteStats {
    fn add_assign(&mut self, other: WriteStats) {
        // Destructured without `..`: a new field cannot be left out of the sum.
        let WriteStats {
            spans_inserted,
            spans_duplicate,
            events_inserted,
            links_inserted,
            traces_touched,
            logs_inserted,
            logs_duplicate,
        } = other;
        self.spans_inserted += spans_inserted;
        self.spans_duplicate += spans_duplicate;
        self.events_inserted += events_inserted;
        self.links_inserted += links_inserted;
        self.traces_touched += traces_touched;
        self.logs_inserted += logs_inserted;
        self.logs_duplicate += logs_duplicate;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Committed(WriteStats),
    /// The stored offset was not `expected`, or the batch would not move it
    /// forward: nothing was written. `stored == Some(next_offset)` means that
    /// an earlier attempt of this very batch committed.
    Fenced {
        stored: Option<i64>,
    },
}

/// What became of a batch whose write failed with a transient error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The COMMIT went through; only its acknowledgement was lost.
    AlreadyCommitted,
    /// Nothing was written: retry the batch.
    NotCommitted,
    /// Another writer moved the offset: this worker must stop.
    Fenced { stored: Option<i64> },
}

pub struct Writer {
    pool: Pool,
    partitions: Arc<Partitions>,
    canceller: pool::Canceller,
}

impl Writer {
    pub fn new(pool: Pool, partitions: Arc<Partitions>, canceller: pool::Canceller) -> Self {
        Writer {
            pool,
            partitions,
            canceller,
        }
    }

    /// Writes the batch and moves its partition's offset, in one transaction.
    ///
    /// Errors are classified by `Error::class`. After a transient one, ask
    /// [`Writer::resolve_after_failure`] whether the batch committed anyway.
    pub async fn write(&self, batch: &WriteBatch<'_>) -> Result<WriteOutcome> {
        let rows = Rows::dedupe(batch.messages);
        self.partitions
            .ensure_days(&self.pool, &rows.days())
            .await?;
        let result = self.write_tx(batch, &rows, true).await;
        if let Err(Error::Postgres(e)) = &result {
            if is_missing_partition(e) {
                // A partition the cache believed in is gone; the retry asks again.
                self.partitions.forget();
            }
        }
        result
    }

    /// Writes rows with no partition offset: `spansink replay` re-ingests dead
    /// letters this way, marking the dead letter at `source` as replayed in the
    /// ledger in the same transaction. Idempotent like every write, so
    /// replaying twice changes nothing.
    pub async fn write_replayed(
        &self,
        messages: &[&Decoded],
        source: Option<(PartitionKey<'_>, i64)>,
    ) -> Result<WriteStats> {
        let rows = Rows::dedupe(messages);
        self.partitions
            .ensure_days(&self.pool, &rows.days())
            .await?;
        let (key, offset) = source.map_or(
            (
                PartitionKey {
                    group: "",
                    topic: "",
                    partition: -1,
                },
                None,
            ),
            |(key, offset)| (key, Some(offset)),
        );
        let unfenced = WriteBatch {
            key,
            expected: None,
            next_offset: offset.unwrap_or(0),
            replayed: offset.is_some(),
            messages,
            dead_letters: &[],
            recorder: Recorder {
                instance: "",
                spool_id: "",
            },
        };
        let result = self.write_tx(&unfenced, &rows, false).await;
        if let Err(Error::Postgres(e)) = &result {
            if is_missing_partition(e) {
                self.partitions.forget();
            }
        }
        match result? {
            WriteOutcome::Committed(stats) => Ok(stats),
            WriteOutcome::Fenced { .. } => {
                Err(Error::Internal("an unfenced write reported a fence".into()))
            }
        }
    }

    /// After a transient failure: did the batch commit anyway (lost COMMIT acknowledgement)?
    pub async fn resolve_after_failure(
        &self,
        key: &PartitionKey<'_>,
        expected: Option<i64>,
        next_offset: i64,
    ) -> Result<AfterFailure> {
        let client = self.pool.get().await?;
        let stored = offsets::read_settled(&**client, key).await?;
        Ok(if stored == Some(next_offset) {
            AfterFailure::AlreadyCommitted
        } else if stored == expected {
            AfterFailure::NotCommitted
        } else {
            AfterFailure::Fenced { stored }
        })
    }

    async fn write_tx(
        &self,
        batch: &WriteBatch<'_>,
        rows: &Rows<'_>,
        fenced: bool,
    ) -> Result<WriteOutcome> {
        let client = self.pool.get().await?;
        // Prepared before BEGIN: a failure here leaves no transaction behind.
        let stmts = Statements::prepare(&client).await?;
        let mut conn = TxConnection::new(client, self.canceller.clone());
        let attempt = transact(conn.client(), &stmts, batch, rows, fenced).await;
        if attempt.clean {
            conn.release();
        }
        attempt.result
    }
}

/// The statements of a batch, prepared once per connection and cached with it.
struct Statements {
    advance: Statement,
    claim: Statement,
    copy_spans: Statement,
    copy_events: Statement,
    spans_move: Statement,
    events_move: Statement,
    spans_direct: Statement,
    events_direct: Statement,
    traces_stage: Statement,
    traces_upsert: Statement,
    copy_logs: Statement,
    logs_move: Statement,
    logs_direct: Statement,
    metrics_stage: Statement,
    metrics_upsert: Statement,
    record_dead_letters: Statement,
}

impl Statements {
    async fn prepare(client: &Object) -> Result<Self> {
        match Self::prepare_all(client).await {
            // The staging tables are missing: the connection opened before the
            // schema existed. If creating them finds no schema either, the
            // second failure is the real one (fatal: not migrated).
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                pool::create_staging(client).await?;
                Ok(Self::prepare_all(client).await?)
            }
            other => Ok(other?),
        }
    }

    async fn prepare_all(client: &Object) -> std::result::Result<Self, tokio_postgres::Error> {
        // Issued together: the client pipelines them in one round trip.
        let (advance, claim, copy_spans, copy_events, spans_move, events_move) = futures::try_join!(
            client.prepare_cached(OFFSETS_ADVANCE),
            client.prepare_cached(OFFSETS_CLAIM),
            client.prepare_cached(COPY_SPANS),
            client.prepare_cached(COPY_EVENTS),
            client.prepare_cached(SPANS_MOVE),
            client.prepare_cached(EVENTS_MOVE),
        )?;
        let (spans_direct, events_direct, traces_stage, traces_upsert, record_dead_letters) = futures::try_join!(
            client.prepare_cached(SPANS_COPY_DIRECT),
            client.prepare_cached(EVENTS_COPY_DIRECT),
            client.prepare_cached(TRACES_COPY_STAGE),
            client.prepare_cached(TRACES_UPSERT),
            client.prepare_cached(DEAD_LETTERS_RECORD),
        )?;
        let (copy_logs, logs_move, logs_direct, metrics_stage, metrics_upsert) = futures::try_join!(
            client.prepare_cached(COPY_LOGS),
            client.prepare_cached(LOGS_MOVE),
            client.prepare_cached(LOGS_COPY_DIRECT),
            client.prepare_cached(SPAN_METRICS_COPY_STAGE),
            client.prepare_cached(SPAN_METRICS_UPSERT),
        )?;
        Ok(Statements {
            advance,
            claim,
            copy_spans,
            copy_events,
            spans_move,
            events_move,
            spans_direct,
            events_direct,
            traces_stage,
            traces_upsert,
            copy_logs,
            logs_move,
            logs_direct,
            metrics_stage,
            metrics_upsert,
            record_dead_letters,
        })
    }
}

/// The result of one transaction, and whether its connection is fit for reuse.
struct Attempt {
    result: Result<WriteOutcome>,
    /// The transaction ended with an acknowledged COMMIT or ROLLBACK.
    clean: bool,
}

impl Attempt {
    fn failed(e: impl Into<Error>, clean: bool) -> Self {
        Attempt {
            result: Err(e.into()),
            clean,
        }
    }
}

async fn transact(
    client: &mut Object,
    stmts: &Statements,
    batch: &WriteBatch<'_>,
    rows: &Rows<'_>,
    fenced: bool,
) -> Attempt {
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return Attempt::failed(e, false),
    };
    match body(&tx, stmts, batch, rows, fenced).await {
        Ok(Some(stats)) => match tx.commit().await {
            Ok(()) => Attempt {
                result: Ok(WriteOutcome::Committed(stats)),
                clean: true,
            },
            // Committed or not, we cannot tell here: resolve_after_failure can.
            Err(e) => Attempt::failed(e, false),
        },
        Ok(None) => {
            if let Err(e) = tx.rollback().await {
                return Attempt::failed(e, false);
            }
            let pg: &tokio_postgres::Client = client;
            let result = offsets::read(pg, &batch.key).await;
            tracing::debug!(
                partition = ?batch.key,
                expected = ?batch.expected,
                stored = ?result.as_ref().ok(),
                "batch fenced"
            );
            Attempt {
                result: result.map(|stored| WriteOutcome::Fenced { stored }),
                clean: true,
            }
        }
        Err(e) => {
            let clean = tx.rollback().await.is_ok();
            Attempt::failed(e, clean)
        }
    }
}

/// The statements of the transaction; `None` when the batch is fenced.
async fn body(
    tx: &Transaction<'_>,
    stmts: &Statements,
    batch: &WriteBatch<'_>,
    rows: &Rows<'_>,
    fenced: bool,
) -> Result<Option<WriteStats>> {
    // First, so that a fenced batch does no work, and so that the offset row
    // lock serialises the writers of one partition from here on.
    if fenced && !fence(tx, stmts, batch).await? {
        return Ok(None);
    }
    if !batch.dead_letters.is_empty() {
        record_dead_letters(tx, stmts, batch).await?;
    }
    if batch.replayed {
        let k = &batch.key;
        tx.execute(
            DEAD_LETTERS_REPLAYED,
            &[&k.group, &k.topic, &k.partition, &batch.next_offset],
        )
        .await?;
    }
    let mut stats = write_rows(tx, stmts, rows, batch.key.partition).await?;
    stats.spans_duplicate = (rows.total_spans as u64).saturating_sub(stats.spans_inserted);
    stats.logs_duplicate = (rows.logs.len() as u64).saturating_sub(stats.logs_inserted);
    crate::fault::panic_on_span(rows.spans.iter().map(|s| s.name.as_str()));
    Ok(Some(stats))
}

const SAVEPOINT: &str = "SAVEPOINT spansink_direct";
const RELEASE: &str = "RELEASE SAVEPOINT spansink_direct";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT spansink_direct";

/// The batch's rows. Direct first: COPY straight into the tables and one
/// upsert each of the traces and the span_metrics buckets the batch's spans
/// make, which is exact when none of them is stored yet, as in all but a
/// replay. A span or log record already stored makes the COPY fail with a
/// unique violation; the batch then goes again, from the savepoint, down the
/// staged path, whose `ON CONFLICT DO NOTHING` counts exactly what it
/// inserts. `shard` is the Kafka partition: the span_metrics shard.
async fn write_rows(
    tx: &Transaction<'_>,
    stmts: &Statements,
    rows: &Rows<'_>,
    shard: i32,
) -> Result<WriteStats> {
    if rows.is_empty() {
        return Ok(WriteStats::default());
    }
    tx.batch_execute(SAVEPOINT).await?;
    match write_direct(tx, stmts, rows, shard).await {
        Ok(stats) => {
            tx.batch_execute(RELEASE).await?;
            metrics::counter!(metric::BATCH_WRITE_PATH, "path" => "direct").increment(1);
            Ok(stats)
        }
        Err(Error::Postgres(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute(ROLLBACK_TO).await?;
            metrics::counter!(metric::BATCH_WRITE_PATH, "path" => "staged").increment(1);
            write_staged(tx, stmts, rows, shard).await
        }
        Err(e) => Err(e),
    }
}

async fn write_direct(
    tx: &Transaction<'_>,
    stmts: &Statements,
    rows: &Rows<'_>,
    shard: i32,
) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    if !rows.spans.is_empty() {
        stats.spans_inserted = copy::copy_spans(tx, &stmts.spans_direct, &rows.spans).await?;
        stats.links_inserted = rows.spans.iter().map(|s| u64::from(s.link_count)).sum();
        let traces = traces::fold(rows.spans.iter().copied());
        traces::copy_traces(tx, &stmts.traces_stage, &traces).await?;
        stats.traces_touched = tx.execute(&stmts.traces_upsert, &[]).await?;
        let buckets = span_metrics::fold(rows.spans.iter().copied());
        span_metrics::copy_metrics(tx, &stmts.metrics_stage, &buckets).await?;
        tx.execute(&stmts.metrics_upsert, &[&shard]).await?;
    }
    if !rows.events.is_empty() {
        stats.events_inserted = copy::copy_events(tx, &stmts.events_direct, &rows.events).await?;
    }
    if !rows.logs.is_empty() {
        stats.logs_inserted = copy::copy_logs(tx, &stmts.logs_direct, &rows.logs).await?;
    }
    Ok(stats)
}

async fn write_staged(
    tx: &Transaction<'_>,
    stmts: &Statements,
    rows: &Rows<'_>,
    shard: i32,
) -> Result<WriteStats> {
    let mut stats = WriteStats::default();
    if !rows.spans.is_empty() {
        copy::copy_spans(tx, &stmts.copy_spans, &rows.spans).await?;
        // Also stages the inserted spans' span_metrics buckets.
        let moved = tx.query_one(&stmts.spans_move, &[]).await?;
        stats.spans_inserted = count(moved.try_get("spans_inserted")?);
        stats.links_inserted = count(moved.try_get("links_inserted")?);
        stats.traces_touched = count(moved.try_get("traces_touched")?);
        tx.execute(&stmts.metrics_upsert, &[&shard]).await?;
    }
    if !rows.events.is_empty() {
        copy::copy_events(tx, &stmts.copy_events, &rows.events).await?;
        stats.events_inserted = tx.execute(&stmts.events_move, &[]).await?;
    }
    if !rows.logs.is_empty() {
        copy::copy_logs(tx, &stmts.copy_logs, &rows.logs).await?;
        stats.logs_inserted = tx.execute(&stmts.logs_move, &[]).await?;
    }
    Ok(stats)
}

/// Claims the batch's offset range: true when this transaction now holds it.
async fn fence(tx: &Transaction<'_>, stmts: &Statements, batch: &WriteBatch<'_>) -> Result<bool> {
    let k = &batch.key;
    let changed = match batch.expected {
        Some(expected) => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &k.group,
                &k.topic,
                &k.partition,
                &expected,
                &batch.next_offset,
            ];
            tx.execute(&stmts.advance, &params).await?
        }
        None => {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&k.group, &k.topic, &k.partition, &batch.next_offset];
            tx.execute(&stmts.claim, &params).await?
        }
    };
    Ok(changed == 1)
}

/// The ledger rows of the dead letters this transaction moves the offset past.
async fn record_dead_letters(
    tx: &Transaction<'_>,
    stmts: &Statements,
    batch: &WriteBatch<'_>,
) -> Result<()> {
    let d = batch.dead_letters;
    let column = |f: fn(&LedgerEntry) -> &str| d.iter().map(f).collect::<Vec<&str>>();
    let offsets: Vec<i64> = d.iter().map(|e| e.offset).collect();
    let sqlstates: Vec<Option<&str>> = d.iter().map(|e| e.sqlstate.as_deref()).collect();
    let k = &batch.key;
    let r = &batch.recorder;
    tx.execute(
        &stmts.record_dead_letters,
        &[
            &k.group,
            &k.topic,
            &k.partition,
            &r.spool_id,
            &r.instance,
            &offsets,
            &column(|e| &e.id),
            &column(|e| &e.tenant),
            &column(|e| &e.stage),
            &column(|e| &e.reason),
            &column(|e| &e.error),
            &sqlstates,
        ],
    )
    .await?;
    Ok(())
}

/// `count(*)` is never negative.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if a write can run on a multi-threaded runtime's task.
    fn _write_future_is_send(w: &Writer, b: &WriteBatch<'_>) {
        fn assert_send<T: Send>(_: T) {}
        assert_send(w.write(b));
    }
}
