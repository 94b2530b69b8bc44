//! spansink: OpenTelemetry traces from Kafka into PostgreSQL, exactly once.
//!
//! The main path, one module per stage:
//! `kafka::consume → decode → batch → pg::write (+ pg::offsets) → kafka::commit`.

pub mod cmd;
pub mod config;
pub mod decode;
pub mod error;
pub mod model;
pub mod otlp;
pub mod tenant;

/// The crate version, reported by `--version`, logs and the build-info metric.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
