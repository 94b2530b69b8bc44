//! Retention: whole daily partitions of `spans`, `span_events`,
//! `span_metrics` and `logs` are dropped once their day is past the horizon;
//! rows are never deleted from them. `traces`, one row per trace and not
//! partitioned by day (its key would have to include the day), is expired by
//! a DELETE in block-range batches behind the same horizon. The dead-letter
//! ledger has its own horizon.
//!
//! A session advisory lock lets one replica run at a time; the others skip
//! the round. Partitions are detached CONCURRENTLY (writers of other days are
//! not blocked) and then dropped, so a run interrupted anywhere is finished by
//! the next one.

use std::time::{Duration, SystemTime};

use tokio_postgres::Client;

use crate::error::Result;
use crate::metric;

const LOCK: &str = include_str!("../../sql/retention_lock.sql");
const UNLOCK: &str = include_str!("../../sql/retention_unlock.sql");
const PARTITIONS: &str = include_str!("../../sql/retention_partitions.sql");
const TRACES_BLOCKS: &str = include_str!("../../sql/retention_traces_blocks.sql");
const TRACES: &str = include_str!("../../sql/retention_traces.sql");
const DEAD_LETTERS: &str = include_str!("../../sql/retention_dead_letters.sql");

/// Blocks of `traces` per DELETE: 8 MB, a short transaction.
const TRACE_BLOCKS_PER_BATCH: i64 = 1024;

/// Ledger rows per DELETE.
const DEAD_LETTERS_PER_BATCH: i64 = 10_000;

/// The ledger is what lets a spool tell its dead letters apart from messages
/// stored since: a row deleted while its entry still waits in a spool would
/// get the entry discarded unpublished. No spool holds an entry this long
/// without the spool-age alert firing for days.
pub const MIN_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Spans, events, span metrics, logs and traces older than this go.
    pub horizon: Option<Duration>,
    /// Dead-letter ledger rows older than this go.
    pub dead_letter_horizon: Option<Duration>,
}

/// What one run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Dropped daily tables, by parent (`spans`, ...).
    pub partitions_dropped: Vec<String>,
    pub traces_deleted: u64,
    pub dead_letters_deleted: u64,
}

/// One retention round; `None` when another replica holds the lock.
pub async fn run_once(
    client: &Client,
    settings: Settings,
    now: SystemTime,
) -> Result<Option<Report>> {
    let locked: bool = client.query_one(LOCK, &[]).await?.try_get(0)?;
    if !locked {
        tracing::debug!("another instance is applying retention");
        return Ok(None);
    }
    let result = expire(client, settings, now).await;
    // The lock is the session's: release it even after a failure, or this
    // pooled connection would hold it until it closes.
    let unlocked = client.query_one(UNLOCK, &[]).await;
    let report = result?;
    unlocked?;
    Ok(Some(report))
}

async fn expire(client: &Client, settings: Settings, now: SystemTime) -> Result<Report> {
    let mut report = Report::default();
    if let Some(horizon) = settings.horizon {
        let cutoff = now.checked_sub(horizon).unwrap_or(SystemTime::UNIX_EPOCH);
        drop_partitions(client, cutoff, &mut report).await?;
        report.traces_deleted = delete_traces(client, cutoff).await?;
    }
    if let Some(horizon) = settings.dead_letter_horizon {
        let cutoff = now.checked_sub(horizon).unwrap_or(SystemTime::UNIX_EPOCH);
        loop {
            let n = client
                .execute(DEAD_LETTERS, &[&cutoff, &DEAD_LETTERS_PER_BATCH])
                .await?;
            report.dead_letters_deleted += n;
            if n < DEAD_LETTERS_PER_BATCH as u64 {
                break;
            }
        }
    }
    metrics::counter!(metric::RETENTION_ROWS_DELETED, "table" => "traces")
        .increment(report.traces_deleted);
    metrics::counter!(metric::RETENTION_ROWS_DELETED, "table" => "dead_letters")
        .increment(report.dead_letters_deleted);
    Ok(report)
}

async fn drop_partitions(client: &Client, cutoff: SystemTime, report: &mut Report) -> Result<()> {
    for row in client.query(PARTITIONS, &[&cutoff]).await? {
        let partition: String = row.try_get("partition")?;
        let parent: Option<String> = row.try_get("parent")?;
        let pending: Option<bool> = row.try_get("detach_pending")?;
        // Names come from the catalog, already quoted by regclass's output.
        if let Some(parent) = &parent {
            let how = if pending == Some(true) {
                "FINALIZE"
            } else {
                "CONCURRENTLY"
            };
            client
                .batch_execute(&format!(
                    "ALTER TABLE {parent} DETACH PARTITION {partition} {how}"
                ))
                .await?;
        }
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {partition}"))
            .await?;
        let table = parent.unwrap_or_else(|| partition.clone());
        tracing::info!(partition, "retention dropped a daily partition");
        metrics::counter!(metric::RETENTION_PARTITIONS_DROPPED, "table" => parent_name(&table))
            .increment(1);
        report.partitions_dropped.push(partition);
    }
    Ok(())
}

/// The table a daily partition belongs to, for the metric's label.
fn parent_name(table: &str) -> &'static str {
    let base = table.trim_matches('"');
    ["span_events", "span_metrics", "spans", "logs"]
        .into_iter()
        .find(|p| {
            base == *p
                || base
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with("_p"))
        })
        .unwrap_or("other")
}

async fn delete_traces(client: &Client, cutoff: SystemTime) -> Result<u64> {
    let blocks: i64 = client.query_one(TRACES_BLOCKS, &[]).await?.try_get(0)?;
    let mut deleted = 0;
    let mut first = 0i64;
    // Each range in its own transaction (autocommit): short locks, and what
    // one range freed is reusable by the upserts at once.
    while first <= blocks {
        let last = first + TRACE_BLOCKS_PER_BATCH;
        deleted += client.execute(TRACES, &[&first, &last, &cutoff]).await?;
        first = last;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_labelled_by_their_table() {
        assert_eq!(parent_name("spans"), "spans");
        assert_eq!(parent_name("span_events_p20260101"), "span_events");
        assert_eq!(parent_name("\"span_metrics\""), "span_metrics");
        assert_eq!(parent_name("logs_p20260101"), "logs");
    }
}
