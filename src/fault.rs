//! Test-only fault injection, armed in one place.
//!
//! The end-to-end tests need a process that panics while writing a batch, or
//! dies outright while decoding a message, on input they choose. Those faults
//! are set once at start from hidden flags (`--fault-*`, see
//! `config::FaultArgs`) and read where they strike; nothing else carries
//! them. Unarmed, each check is one atomic load.

use std::sync::OnceLock;

/// The faults a process may be started with.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Panic after a batch's rows are written, before COMMIT, when the batch
    /// holds a span of this name.
    pub panic_on_span_name: Option<String>,
    /// Abort the process while decoding a payload that holds this text.
    pub abort_on_payload: Option<String>,
}

static ARMED: OnceLock<Faults> = OnceLock::new();

/// Arms the faults for the life of the process; only the first call counts.
pub fn arm(faults: Faults) {
    if faults.panic_on_span_name.is_some() || faults.abort_on_payload.is_some() {
        tracing::warn!(?faults, "fault injection armed: this process is under test");
        let _ = ARMED.set(faults);
    }
}

/// Panics if one of `names` is the armed span name.
pub fn panic_on_span<'a>(mut names: impl Iterator<Item = &'a str>) {
    let Some(name) = ARMED.get().and_then(|f| f.panic_on_span_name.as_deref()) else {
        return;
    };
    if names.any(|n| n == name) {
        panic!("fault injection: batch holds a span named {name:?}");
    }
}

/// Aborts the process if `payload` holds the armed marker.
pub fn abort_on_payload(payload: &[u8], offset: i64) {
    let Some(marker) = ARMED.get().and_then(|f| f.abort_on_payload.as_deref()) else {
        return;
    };
    if !marker.is_empty()
        && payload
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    {
        tracing::error!(offset, "fault injection: aborting the process");
        std::process::abort();
    }
}
