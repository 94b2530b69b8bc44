//! Versioned schema migrations, embedded in the binary.
//!
//! Each migration runs in its own transaction and is recorded in
//! `schema_migrations` by that same transaction, so a failure leaves no half
//! applied version. A session advisory lock serialises migrators: several
//! replicas may start at once, and all but one find nothing left to do.

use tokio_postgres::Client;

use crate::error::Result;

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// In version order; a released migration is never edited, only followed.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "dead_letter_ledger",
        sql: include_str!("../../migrations/0002_dead_letter_ledger.sql"),
    },
    Migration {
        version: 3,
        name: "logs_span_metrics",
        sql: include_str!("../../migrations/0003_logs_span_metrics.sql"),
    },
    Migration {
        version: 4,
        name: "tenant_isolation",
        sql: include_str!("../../migrations/0004_tenant_isolation.sql"),
    },
];

const LOCK: &str = include_str!("../../sql/migrate_lock.sql");
const UNLOCK: &str = include_str!("../../sql/migrate_unlock.sql");
const HAS_TABLE: &str = include_str!("../../sql/migrate_has_table.sql");
const APPLIED: &str = include_str!("../../sql/migrate_applied.sql");
const RECORD: &str = include_str!("../../sql/migrate_record.sql");

/// Applies the migrations this database lacks and returns their versions
/// (empty when it is up to date).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    client.query_one(LOCK, &[]).await?;
    let applied = apply_pending(client).await;
    // Unlock even after a failure: the connection may go back to a pool. If
    // the connection itself broke, the server has released the lock already.
    let unlocked = client.query_one(UNLOCK, &[]).await;
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>> {
    let done = applied_versions(client).await?;
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        apply(client, m).await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
    }
    Ok(applied)
}

async fn applied_versions(client: &Client) -> Result<Vec<i32>> {
    let has_table: bool = client.query_one(HAS_TABLE, &[]).await?.try_get(0)?;
    if !has_table {
        return Ok(Vec::new());
    }
    let rows = client.query(APPLIED, &[]).await?;
    rows.iter()
        .map(|r| r.try_get::<_, i32>(0).map_err(Into::into))
        .collect()
}

async fn apply(client: &mut Client, m: &Migration) -> Result<()> {
    let tx = client.transaction().await?;
    tx.batch_execute(m.sql).await?;
    tx.execute(RECORD, &[&m.version, &m.name]).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_named() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version);
        }
        for m in MIGRATIONS {
            assert!(m.version > 0 && !m.name.is_empty() && !m.sql.trim().is_empty());
        }
    }
}
