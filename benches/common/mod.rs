//! What the micro-benchmarks work on: loadgen's messages of 100 spans, and
//! the limits `spansink run` applies by default.

use std::time::SystemTime;

use spansink::cmd::loadgen::encode;
use spansink::decode::{self, Encoding};
use spansink::loadgen::{Generator, TrafficSpec};

pub const SPANS_PER_MESSAGE: usize = 100;
pub const MESSAGES: usize = 50;

/// [`MESSAGES`] messages, encoded; the same ones for every benchmark.
pub fn payloads(encoding: Encoding) -> Vec<Vec<u8>> {
    let mut generator = Generator::new(TrafficSpec {
        tenants: "acme:1".parse().expect("tenants"),
        spans_per_message: SPANS_PER_MESSAGE,
        seed: 1,
        run_id: "bench".into(),
        error_ratio: 0.05,
    });
    (0..MESSAGES)
        .map(|_| encode(encoding, &generator.next_message(SystemTime::now()).request))
        .collect()
}

pub fn limits() -> decode::Limits {
    spansink::config::run_defaults()
        .expect("defaults")
        .ingest
        .limits()
}
