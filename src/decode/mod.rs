//! OTLP proto/JSON → domain rows (placeholder).

use std::time::Duration;

/// Limits against input that could exhaust the process, and the acceptance window.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_value_depth: usize,
    pub max_attributes: usize,
    pub accept_past: Duration,
    pub accept_future: Duration,
}
