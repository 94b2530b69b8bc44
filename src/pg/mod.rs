//! PostgreSQL: the connection pool, schema migrations, daily partitions, the
//! Kafka offsets stored beside the data, and the batch transaction that writes
//! both exactly once.
//!
//! Every SQL statement lives in `sql/` (migrations in `migrations/`) and is
//! embedded at build time.

pub mod copy;
pub mod dedupe;
pub mod migrate;
pub mod offsets;
pub mod partitions;
pub mod pool;
pub mod retention;
pub mod span_metrics;
pub mod tenant;
pub mod tls;
pub mod traces;
pub mod write;

pub use deadpool_postgres::Pool;
pub use migrate::migrate;
pub use offsets::PartitionKey;
pub use partitions::{day_of_unix_nano, Partitions};
pub use pool::{connect, ping};
pub use write::{AfterFailure, WriteBatch, WriteOutcome, WriteStats, Writer};
