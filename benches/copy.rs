//! Binary COPY encoding, per core: how many rows a second one thread turns
//! into the bytes `pg::copy` streams to PostgreSQL, and how many bytes that is.
//!
//! `cargo bench --bench copy`; `copy_rows` reports rows per second (criterion's
//! "elements"), `copy_bytes` the same runs in MB/s of COPY stream, for the
//! spans and the span events of 50 loadgen messages of 100 spans. The rows are
//! chunked as `copy_spans` and `copy_events` chunk them, so the figures include
//! handing a chunk over, not the network or PostgreSQL.
//!
//! `fold_rows` reports spans per second folded into the rows the direct write
//! path upserts besides them, `traces` and `span_metrics` (in key order, as
//! the upserts lock them), in batches of about the size `spansink bench`'s
//! batches have.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spansink::decode::{self, Encoding};
use spansink::model::{SpanEventRow, SpanRow};
use spansink::pg::copy::{self, CopyEncoder};
use spansink::pg::{span_metrics, traces};

/// The allocator the binary uses (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rows() -> (Vec<SpanRow>, Vec<SpanEventRow>) {
    let tenant: Arc<str> = Arc::from("acme");
    let limits = common::limits();
    let (mut spans, mut events) = (Vec::new(), Vec::new());
    for payload in common::payloads(Encoding::OtlpProto) {
        let rows = decode::decode_traces(
            &payload,
            Encoding::OtlpProto,
            &tenant,
            &limits,
            SystemTime::now(),
        )
        .expect("loadgen's messages decode");
        spans.extend(rows.spans);
        events.extend(rows.events);
    }
    (spans, events)
}

/// Encodes `rows` as one COPY stream in chunks; returns the stream's length.
fn encode_all<R>(
    rows: &[R],
    encode_row: fn(&mut CopyEncoder, &R) -> spansink::error::Result<()>,
) -> u64 {
    let mut enc = CopyEncoder::with_capacity(copy::CHUNK_BYTES);
    let mut bytes = 0;
    for row in rows {
        encode_row(&mut enc, row).expect("loadgen's rows fit their columns");
        if enc.buffered() >= copy::CHUNK_BYTES {
            bytes += std::hint::black_box(enc.take()).len();
        }
    }
    bytes += std::hint::black_box(enc.finish()).len();
    bytes as u64
}

/// Spans per batch in `fold_rows`.
const FOLD_BATCH: usize = 2000;

/// Folds `spans` a batch at a time; returns the rows made.
fn fold_batches(spans: &[SpanRow], fold: impl Fn(&[SpanRow]) -> usize) -> usize {
    spans.chunks(FOLD_BATCH).map(fold).sum()
}

fn copy_encode(c: &mut Criterion) {
    let (spans, events) = rows();
    let span_bytes = encode_all(&spans, copy::encode_span);
    let event_bytes = encode_all(&events, copy::encode_event);

    let mut group = c.benchmark_group("copy_rows");
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("spans", |b| {
        b.iter(|| encode_all(&spans, copy::encode_span))
    });
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("events", |b| {
        b.iter(|| encode_all(&events, copy::encode_event))
    });
    group.finish();

    let mut group = c.benchmark_group("copy_bytes");
    group.throughput(Throughput::BytesDecimal(span_bytes));
    group.bench_function("spans", |b| {
        b.iter(|| encode_all(&spans, copy::encode_span))
    });
    group.throughput(Throughput::BytesDecimal(event_bytes));
    group.bench_function("events", |b| {
        b.iter(|| encode_all(&events, copy::encode_event))
    });
    group.finish();

    let mut group = c.benchmark_group("fold_rows");
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("traces", |b| {
        b.iter(|| fold_batches(&spans, |batch| traces::fold(batch).len()))
    });
    group.bench_function("span_metrics", |b| {
        b.iter(|| fold_batches(&spans, |batch| span_metrics::fold(batch).len()))
    });
    group.finish();
}

criterion_group!(benches, copy_encode);
criterion_main!(benches);
