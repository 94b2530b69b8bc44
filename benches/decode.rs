//! Decode plus normalisation into rows, per core: how many spans a second one
//! thread turns from a Kafka payload into the rows `pg::write` copies.
//!
//! `cargo bench --bench decode`; the figures are spans per second (criterion's
//! "elements"), for `otlp_proto` and `otlp_json` messages of 100 spans built
//! by loadgen.

use std::sync::Arc;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spansink::cmd::loadgen::encode;
use spansink::decode::{self, Encoding};
use spansink::loadgen::{Generator, TrafficSpec};

/// The allocator the binary uses (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SPANS_PER_MESSAGE: usize = 100;
const MESSAGES: usize = 50;

fn payloads(encoding: Encoding) -> Vec<Vec<u8>> {
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

fn limits() -> decode::Limits {
    spansink::config::run_defaults()
        .expect("defaults")
        .ingest
        .limits()
}

fn decode_to_rows(c: &mut Criterion) {
    let tenant: Arc<str> = Arc::from("acme");
    let limits = limits();
    let mut group = c.benchmark_group("decode_to_rows");
    group.throughput(Throughput::Elements((SPANS_PER_MESSAGE * MESSAGES) as u64));
    for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
        let messages = payloads(encoding);
        group.bench_with_input(
            BenchmarkId::from_parameter(encoding),
            &messages,
            |b, messages| {
                b.iter(|| {
                    let now = SystemTime::now();
                    for m in messages {
                        let rows = decode::decode_traces(m, encoding, &tenant, &limits, now)
                            .expect("loadgen's messages decode");
                        std::hint::black_box(rows);
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decode_to_rows);
criterion_main!(benches);
