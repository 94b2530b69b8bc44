//! `span_metrics`: request, error and duration figures per minute, service,
//! span name, kind and status, kept in the transaction that stores the spans.
//!
//! Both write paths stage the batch's buckets and run one upsert
//! (`sql/span_metrics_upsert.sql`). The direct path, where every span of the
//! batch is new, folds them here; the staged path aggregates the spans its
//! `INSERT … ON CONFLICT DO NOTHING` returned, in `sql/spans_move.sql`. So a
//! bucket counts each stored span once, however often it is replayed.
//! `spansink_latency_bucket` in the migration is [`bucket`] in SQL; a test
//! holds them to each other.

use foldhash::{HashMap, HashMapExt as _};
use std::sync::Arc;

use tokio_postgres::{Statement, Transaction};

use crate::error::Result;
use crate::model::SpanRow;
use crate::pg::copy::{self, CopyEncoder, Timestamptz};

/// Inclusive upper bounds of the latency buckets 1..=15, in milliseconds.
pub const BOUNDS_MS: [i64; 15] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// Underflow (the span ends before it starts), one bucket per bound, and
/// overflow (over the last bound).
pub const BUCKETS: usize = BOUNDS_MS.len() + 2;

const NANOS_PER_MINUTE: i64 = 60 * 1_000_000_000;

/// The histogram bucket of a duration.
pub fn bucket(duration_ns: i64) -> usize {
    if duration_ns < 0 {
        return 0;
    }
    1 + BOUNDS_MS
        .iter()
        .filter(|ms| duration_ns > *ms * 1_000_000)
        .count()
}

/// What makes a bucket: tenant, minute (Unix nanoseconds, whole minutes),
/// service (empty when the resource names none), span name, kind and status.
type Key<'a> = (&'a str, i64, &'a str, &'a str, i32, i32);

/// One `span_metrics` row as a batch's spans make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRow {
    pub tenant_id: Arc<str>,
    pub minute_unix_nano: i64,
    pub service_name: Arc<str>,
    pub span_name: String,
    pub span_kind: i32,
    pub status_code: i32,
    pub span_count: i64,
    pub error_count: i64,
    pub duration_sum_ns: i128,
    pub latency_buckets: [i64; BUCKETS],
}

/// The batch's buckets, in key order (the upsert's lock order).
pub fn fold<'a>(spans: impl IntoIterator<Item = &'a SpanRow>) -> Vec<MetricRow> {
    // The map holds positions, not rows: a bucket row is a few hundred bytes,
    // and every time the map grows it moves what it holds.
    let mut slots: HashMap<Key<'a>, usize> = HashMap::new();
    let mut rows: Vec<MetricRow> = Vec::new();
    let no_service: Arc<str> = Arc::from("");
    for s in spans {
        let minute = s.start_unix_nano.div_euclid(NANOS_PER_MINUTE) * NANOS_PER_MINUTE;
        let service = s.service_name.as_deref().unwrap_or("");
        let key = (
            &*s.tenant_id,
            minute,
            service,
            s.name.as_str(),
            s.kind,
            s.status_code,
        );
        let slot = *slots.entry(key).or_insert_with(|| {
            rows.push(MetricRow {
                tenant_id: Arc::clone(&s.tenant_id),
                minute_unix_nano: minute,
                service_name: s.service_name.clone().unwrap_or_else(|| no_service.clone()),
                span_name: s.name.clone(),
                span_kind: s.kind,
                status_code: s.status_code,
                span_count: 0,
                error_count: 0,
                duration_sum_ns: 0,
                latency_buckets: [0; BUCKETS],
            });
            rows.len() - 1
        });
        let m = &mut rows[slot];
        let duration = s.duration_ns();
        m.span_count += 1;
        m.error_count += i64::from(s.is_error());
        m.duration_sum_ns += i128::from(duration);
        m.latency_buckets[bucket(duration)] += 1;
    }
    // The keys are the map's, so unique: an unstable sort orders them alike.
    rows.sort_unstable_by(|a, b| key_of(a).cmp(&key_of(b)));
    rows
}

fn key_of(m: &MetricRow) -> Key<'_> {
    (
        &m.tenant_id,
        m.minute_unix_nano,
        &m.service_name,
        &m.span_name,
        m.span_kind,
        m.status_code,
    )
}

/// Fields of a row of `sql/span_metrics_copy_stage.sql`.
pub const METRIC_FIELDS: i16 = 10;

/// Streams bucket rows into the staging table; returns the rows copied.
pub async fn copy_metrics(
    tx: &Transaction<'_>,
    stmt: &Statement,
    rows: &[MetricRow],
) -> Result<u64> {
    copy::copy_rows(tx, stmt, rows, encode_metric).await
}

/// Appends one bucket row in the column order of `sql/span_metrics_copy_stage.sql`.
pub fn encode_metric(enc: &mut CopyEncoder, m: &MetricRow) -> Result<()> {
    let kind = copy::narrow::<i16, _>("span kind", m.span_kind)?;
    let status = copy::narrow::<i16, _>("span status code", m.status_code)?;
    enc.row(METRIC_FIELDS, |r| {
        r.text(&m.tenant_id)?;
        r.timestamptz(Timestamptz::from_unix_nano(m.minute_unix_nano));
        r.text(&m.service_name)?;
        r.text(&m.span_name)?;
        r.int2(kind);
        r.int2(status);
        r.int8(m.span_count);
        r.int8(m.error_count);
        r.numeric(m.duration_sum_ns);
        r.int8_array(&m.latency_buckets)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, start: i64, duration: i64, status: i32) -> SpanRow {
        SpanRow {
            name: name.into(),
            end_unix_nano: start + duration,
            status_code: status,
            service_name: Some(Arc::from("svc")),
            ..SpanRow::bare("acme", [1; 16], 1, start)
        }
    }

    #[test]
    fn buckets_have_inclusive_upper_bounds_and_both_overflows() {
        let ms = 1_000_000;
        assert_eq!(bucket(-1), 0);
        assert_eq!(bucket(0), 1);
        assert_eq!(bucket(ms), 1);
        assert_eq!(bucket(ms + 1), 2);
        assert_eq!(bucket(60_000 * ms), 15);
        assert_eq!(bucket(60_000 * ms + 1), 16);
        assert_eq!(bucket(i64::MAX), 16);
    }

    #[test]
    fn spans_fold_into_minute_buckets_in_key_order() {
        let minute = 60_000_000_000;
        let spans = [
            span("b", 5 * minute + 1, 3_000_000, 2),
            span("a", 5 * minute + 7, 1_000_000, 0),
            span("b", 6 * minute - 1, i64::MAX - 6 * minute, 2),
            span("b", 6 * minute, 10, 0),
        ];
        let rows = fold(&spans);
        let keys: Vec<(&str, i64)> = rows
            .iter()
            .map(|m| (m.span_name.as_str(), m.minute_unix_nano))
            .collect();
        assert_eq!(
            keys,
            [("a", 5 * minute), ("b", 5 * minute), ("b", 6 * minute)]
        );
        let b = &rows[1];
        assert_eq!((b.span_count, b.error_count), (2, 2));
        // A sum that overflows i64 stays exact.
        assert_eq!(
            b.duration_sum_ns,
            3_000_000 + i128::from(i64::MAX - 6 * minute)
        );
        assert_eq!(b.latency_buckets[3], 1);
        assert_eq!(b.latency_buckets[16], 1);
        assert_eq!(rows[0].latency_buckets[1], 1);
    }

    #[test]
    fn a_bucket_row_is_written_in_the_column_order_of_its_copy_statement() {
        let rows = fold(&[span("a", 60_000_000_000, 5, 0)]);
        let mut enc = CopyEncoder::new();
        encode_metric(&mut enc, &rows[0]).unwrap();
        let written = copy::read_back::rows(&enc.finish());
        let names = copy::read_back::columns(include_str!("../../sql/span_metrics_copy_stage.sql"));
        assert_eq!(names.len(), usize::try_from(METRIC_FIELDS).unwrap());
        assert_eq!(written[0].len(), names.len());
        let field = |name: &str| written[0][names.iter().position(|c| c == name).unwrap()].clone();
        assert_eq!(field("service_name"), Some(b"svc".to_vec()));
        assert_eq!(field("span_count"), Some(1_i64.to_be_bytes().to_vec()));
    }
}
