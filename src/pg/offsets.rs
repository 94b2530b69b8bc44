//! Kafka positions stored in `ingest_offsets`, the source of truth for where
//! each partition resumes. They are written only by the batch transaction
//! (`write`), together with the rows they cover.
//!
//! The readers take any `tokio_postgres` client or transaction; from a pooled
//! connection, pass `&**client`.

use tokio_postgres::GenericClient;

use crate::error::Result;

const READ: &str = include_str!("../../sql/offsets_read.sql");
const READ_ALL: &str = include_str!("../../sql/offsets_read_all.sql");
const READ_SETTLED: &str = include_str!("../../sql/offsets_read_settled.sql");

/// One Kafka partition of one consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionKey<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
}

/// The stored next offset of a partition; `None` when nothing was ever stored.
pub async fn read(client: &impl GenericClient, key: &PartitionKey<'_>) -> Result<Option<i64>> {
    let row = client
        .query_opt(READ, &[&key.group, &key.topic, &key.partition])
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// The stored next offset once no transaction is moving it: waits for a writer
/// that still holds the row (a batch of a previous owner whose client is gone
/// but whose server transaction has not ended), so that its COMMIT cannot
/// overtake the answer.
pub async fn read_settled(
    client: &impl GenericClient,
    key: &PartitionKey<'_>,
) -> Result<Option<i64>> {
    let row = client
        .query_opt(READ_SETTLED, &[&key.group, &key.topic, &key.partition])
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Every stored `(partition, next_offset)` of one topic, by partition.
pub async fn read_all(
    client: &impl GenericClient,
    group: &str,
    topic: &str,
) -> Result<Vec<(i32, i64)>> {
    let rows = client.query(READ_ALL, &[&group, &topic]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
