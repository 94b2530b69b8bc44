//! Decode plus normalisation into rows, per core: how many spans a second one
//! thread turns from a Kafka payload into the rows `pg::write` copies.
//!
//! `cargo bench --bench decode`; the figures are spans per second (criterion's
//! "elements"), for `otlp_proto` and `otlp_json` messages of 100 spans built
//! by loadgen.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use common::{limits, payloads, MESSAGES, SPANS_PER_MESSAGE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spansink::decode::{self, Encoding};

/// The allocator the binary uses (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
