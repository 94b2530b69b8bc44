//! `spansink migrate`: apply the schema and create the upcoming partitions.

use crate::config::MigrateArgs;
use crate::error::Result;
use crate::pg;

pub async fn run(args: &MigrateArgs) -> Result<()> {
    args.db.validate()?;
    let pool = pg::pool::connect(&args.db.settings()).await?;
    apply(&pool, args.db.partitions_ahead_days).await
}

/// Migrations under their advisory lock, then today's and the coming days' partitions.
pub async fn apply(pool: &deadpool_postgres::Pool, ahead_days: u32) -> Result<()> {
    let mut client = pool.get().await?;
    let applied = pg::migrate::migrate(&mut client).await?;
    if applied.is_empty() {
        tracing::info!("schema is up to date");
    } else {
        tracing::info!(versions = ?applied, "migrations applied");
    }
    drop(client);
    pg::partitions::Partitions::new()
        .ensure_ahead(pool, pg::partitions::today(), ahead_days)
        .await
}
