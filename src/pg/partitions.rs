//! Daily partitions of `spans` and `span_events`, created ahead of time and on
//! demand.
//!
//! There is no DEFAULT partition, so a row for a day without a partition fails
//! (`error::is_missing_partition`). Days are created in their own short
//! transaction, never inside a batch's: the batch would otherwise hold its row
//! locks while waiting for the partition DDL, and two batches creating days in
//! different orders could deadlock.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;

use crate::error::Result;

const ENSURE: &str = include_str!("../../sql/partitions_ensure.sql");

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// Days per partition-creating transaction. Each table takes several locks
/// until its transaction ends; a few days at a time stays far below the
/// server's shared lock table however many days are asked for.
const DAYS_PER_TRANSACTION: usize = 8;

/// Partitions are created at most this far ahead: beyond a year they would
/// only be empty tables to plan around.
pub const MAX_AHEAD_DAYS: u32 = 366;

/// The UTC day (days since 1970-01-01) a Unix-nanosecond instant falls on.
pub fn day_of_unix_nano(ns: i64) -> i32 {
    // i64::MAX nanoseconds is about 106 752 days, so the day always fits.
    ns.div_euclid(NANOS_PER_DAY) as i32
}

/// Today's UTC day, by this machine's clock.
pub fn today() -> i32 {
    const SECS_PER_DAY: u64 = 86_400;
    let days = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs() / SECS_PER_DAY).unwrap_or(i64::MAX),
        Err(before) => {
            -i64::try_from(before.duration().as_secs().div_ceil(SECS_PER_DAY)).unwrap_or(i64::MAX)
        }
    };
    // Only a wildly wrong clock reaches the bounds.
    days.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// An in-process cache of the days known to have their partitions, so that a
/// batch asks the database only about days it has not seen.
#[derive(Debug, Default)]
pub struct Partitions {
    known: Mutex<HashSet<i32>>,
}

impl Partitions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes sure that each day has its partitions. Only days missing from
    /// the cache reach the database, in transactions of their own.
    pub async fn ensure_days(&self, pool: &Pool, days: &[i32]) -> Result<()> {
        let missing = self.missing(days);
        if missing.is_empty() {
            return Ok(());
        }
        let client = pool.get().await?;
        let stmt = client.prepare_cached(ENSURE).await?;
        for chunk in missing.chunks(DAYS_PER_TRANSACTION) {
            // One statement in autocommit mode: the function's transaction-level
            // advisory lock is released as soon as it returns.
            let created: i32 = client.query_one(&stmt, &[&chunk]).await?.try_get(0)?;
            if created > 0 {
                tracing::info!(days = ?chunk, tables = created, "created daily partitions");
            }
            self.lock_known().extend(chunk);
        }
        Ok(())
    }

    /// Creates the partitions of today and the `ahead_days` days after it
    /// (at most [`MAX_AHEAD_DAYS`]), so that batches seldom wait for DDL at
    /// midnight.
    pub async fn ensure_ahead(&self, pool: &Pool, today: i32, ahead_days: u32) -> Result<()> {
        let ahead = ahead_days.min(MAX_AHEAD_DAYS) as i32;
        let days: Vec<i32> = (0..=ahead).map_while(|d| today.checked_add(d)).collect();
        self.ensure_days(pool, &days).await
    }

    /// Empties the cache: after a "no partition of relation" error, what it
    /// says is wrong (a partition was dropped, by retention say), and the
    /// retry must ask the database again.
    pub fn forget(&self) {
        self.lock_known().clear();
    }

    fn missing(&self, days: &[i32]) -> Vec<i32> {
        let known = self.lock_known();
        let mut missing: Vec<i32> = days
            .iter()
            .copied()
            .filter(|d| !known.contains(d))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        // The set is always valid, even if a holder panicked.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_and_round_down() {
        assert_eq!(day_of_unix_nano(0), 0);
        assert_eq!(day_of_unix_nano(NANOS_PER_DAY - 1), 0);
        assert_eq!(day_of_unix_nano(NANOS_PER_DAY), 1);
        assert_eq!(day_of_unix_nano(-1), -1);
        // 2024-01-02T03:04:05Z is day 19724.
        assert_eq!(day_of_unix_nano(1_704_164_645_000_000_000), 19_724);
        assert!(day_of_unix_nano(i64::MAX) > 0 && day_of_unix_nano(i64::MIN) < 0);
    }

    #[test]
    fn today_is_a_recent_day() {
        // 2024-01-01 is day 19723; a clock reading before it is wrong anyway.
        assert!(today() > 19_723);
    }

    #[test]
    fn only_unknown_days_are_missing() {
        let p = Partitions::new();
        p.lock_known().insert(5);
        assert_eq!(p.missing(&[7, 5, 6, 7]), vec![6, 7]);
        p.forget();
        assert_eq!(p.missing(&[5]), vec![5]);
    }
}
