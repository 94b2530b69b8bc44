//! Realistic synthetic OTLP traces: the traffic of `spansink loadgen`, `spansink
//! demo` and the integration tests.
//!
//! Each message holds whole traces of a small web shop: an HTTP request enters a
//! front service, which calls two or three back-end services over HTTP, and they
//! query their databases. Attributes follow the OpenTelemetry semantic conventions
//! and between them use every kind of `AnyValue`, so that a decoder is exercised
//! on everything it must store. The output depends only on the seed and on the
//! `now` given, so a failing run can be replayed exactly.
//!
//! One file a job: `tenants` (who sends), `shop` (the services and what they
//! serve), `trace` (the call tree and timing of a trace), `spans` (what each
//! kind of span says), `message` (spans grouped into a request), `attrs`
//! (attribute value constructors) and `json` (the OTLP/JSON encoding).

mod attrs;
pub mod json;
mod message;
mod shop;
mod spans;
mod tenants;
mod trace;

use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::otlp::ExportTraceServiceRequest;

use message::MessageBuilder;
use trace::{TRACE_SPANS_MAX, TRACE_SPANS_MIN};

pub use tenants::TenantMix;

/// The resource attribute that tags every span of one generator run.
pub const RUN_ID_ATTRIBUTE: &str = "loadgen.run_id";

/// What to generate.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    pub tenants: TenantMix,
    /// Spans in each message; whole traces are cut to fit.
    pub spans_per_message: usize,
    pub seed: u64,
    /// Written to every resource as `loadgen.run_id`, so that a run's spans can be counted.
    pub run_id: String,
    /// The share of spans with status ERROR, from 0 to 1.
    pub error_ratio: f64,
}

impl TrafficSpec {
    /// Checks the spec; errors name the command-line flag of the setting.
    pub fn validate(&self) -> Result<()> {
        if self.tenants.entries().is_empty() {
            return Err(Error::config("--tenants", "at least one tenant is needed"));
        }
        if self.spans_per_message == 0 {
            return Err(Error::config("--spans-per-message", "must be at least 1"));
        }
        if self.run_id.is_empty() {
            return Err(Error::config("--run-id", "is empty"));
        }
        if !(0.0..=1.0).contains(&self.error_ratio) {
            return Err(Error::config("--error-ratio", "must be between 0 and 1"));
        }
        Ok(())
    }
}

/// One Kafka message's worth of traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedMessage {
    pub tenant: String,
    /// The hex id of the message's first trace: every trace lives in exactly one
    /// message, so keying by it keeps a trace on one partition.
    pub key: Vec<u8>,
    pub request: ExportTraceServiceRequest,
    pub span_count: usize,
}

/// A seeded, reproducible source of OTLP trace messages.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    spec: TrafficSpec,
    total_weight: u64,
}

impl Generator {
    pub fn new(mut spec: TrafficSpec) -> Self {
        // Keep the generator total even for an unvalidated spec.
        spec.error_ratio = if spec.error_ratio.is_nan() {
            0.0
        } else {
            spec.error_ratio.clamp(0.0, 1.0)
        };
        spec.spans_per_message = spec.spans_per_message.max(1);
        let total_weight = spec.tenants.total_weight();
        Generator {
            rng: StdRng::seed_from_u64(spec.seed),
            spec,
            total_weight,
        }
    }

    pub fn spec(&self) -> &TrafficSpec {
        &self.spec
    }

    /// One message of `spec.spans_per_message` spans.
    pub fn next_message(&mut self, now: SystemTime) -> GeneratedMessage {
        self.next_message_of(self.spec.spans_per_message, now)
    }

    /// One message of exactly `spans` spans (at least one), so that a run can
    /// produce an exact total.
    pub fn next_message_of(&mut self, spans: usize, now: SystemTime) -> GeneratedMessage {
        let now_ns = unix_nanos(now);
        let tenant = self.pick_tenant();
        let mut batch = MessageBuilder::default();
        let mut left = spans.max(1);
        while left > 0 {
            let size = self
                .rng
                .random_range(TRACE_SPANS_MIN..=TRACE_SPANS_MAX)
                .min(left);
            self.build_trace(size, now_ns, &mut batch);
            left -= size;
        }
        let key = batch.first_trace.map(hex::encode).unwrap_or_default();
        let span_count = batch.span_count;
        GeneratedMessage {
            tenant,
            key: key.into_bytes(),
            request: self.finish(batch),
            span_count,
        }
    }

    fn pick_tenant(&mut self) -> String {
        if self.total_weight == 0 {
            return String::new();
        }
        let point = self.rng.random_range(0..self.total_weight);
        self.spec.tenants.at(point).to_string()
    }

    /// Random bytes that are not all zero: OTLP reserves all-zero ids as invalid.
    fn nonzero<const N: usize>(&mut self) -> [u8; N] {
        let mut id = [0u8; N];
        while id.iter().all(|&b| b == 0) {
            self.rng.fill(&mut id[..]);
        }
        id
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
