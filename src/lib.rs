//! spansink: OpenTelemetry traces from Kafka into PostgreSQL, exactly once.
//!
//! The main path, one module per stage:
//! `kafka::consume → decode → batch → pg::write (+ pg::offsets) → kafka::commit`.

pub mod batch;
pub mod blocking;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod coordinator;
pub mod decode;
pub mod error;
pub mod fault;
pub mod health;
pub mod http;
pub mod kafka;
pub mod loadgen;
pub mod logcap;
pub mod metric;
pub mod model;
pub mod otlp;
pub mod pg;
pub mod poison;
pub mod retry;
pub mod shutdown;
pub mod tenant;
pub mod worker;

/// The crate version, reported by `--version`, logs and the build-info metric.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit spansink was built from, for the build-info metric.
pub const GIT_SHA: &str = env!("SPANSINK_GIT_SHA");
