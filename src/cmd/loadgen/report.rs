//! What a run produced, as the command prints it. Apart so that the numbers
//! `spansink demo` and the tests check have one definition.

use std::fmt;
use std::time::Duration;

/// What a run produced. Every message counted here was acknowledged by the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadgenReport {
    pub messages: usize,
    pub spans: usize,
    /// Payload bytes before compression.
    pub bytes: u64,
    pub elapsed: Duration,
    pub run_id: String,
}

impl LoadgenReport {
    pub fn spans_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.spans as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for LoadgenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run {}: {} spans in {} messages ({:.1} MiB) in {:.2}s, {:.0} spans/s",
            self.run_id,
            self.spans,
            self.messages,
            self.bytes as f64 / (1024.0 * 1024.0),
            self.elapsed.as_secs_f64(),
            self.spans_per_second(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_reads_well() {
        let r = LoadgenReport {
            messages: 20,
            spans: 1000,
            bytes: 3 << 20,
            elapsed: Duration::from_millis(500),
            run_id: "abc".into(),
        };
        assert_eq!(
            r.to_string(),
            "run abc: 1000 spans in 20 messages (3.0 MiB) in 0.50s, 2000 spans/s"
        );
    }
}
