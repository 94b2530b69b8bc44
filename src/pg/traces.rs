//! `traces` rows folded from a batch's spans on this side, for the direct
//! write path: when every span of a batch is new, the batch's traces are what
//! its spans say, and they go in by one upsert from a staging table.
//!
//! The fold is the one `sql/spans_move.sql` does for the staged path: counts,
//! first start and last end, and the root with the earliest start, then the
//! lowest span id. A test keeps the two upserts' `DO UPDATE` the same.

use foldhash::{HashMap, HashMapExt as _};
use std::sync::Arc;

use tokio_postgres::{Statement, Transaction};

use crate::error::Result;
use crate::model::SpanRow;
use crate::pg::copy::{self, CopyEncoder, Timestamptz};

/// A `traces` row as a batch's spans make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRow {
    pub tenant_id: Arc<str>,
    pub trace_id: [u8; 16],
    pub first_start: i64,
    pub last_end: i64,
    pub span_count: i64,
    pub error_count: i64,
    pub root: Option<Root>,
}

/// A trace's root span: service, name, id and start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub service: Option<Arc<str>>,
    pub name: String,
    pub span_id: [u8; 8],
    pub start: i64,
}

/// The batch's traces, in key order (the upsert's lock order).
pub fn fold<'a>(spans: impl IntoIterator<Item = &'a SpanRow>) -> Vec<TraceRow> {
    let mut by_trace: HashMap<(&str, [u8; 16]), TraceRow> = HashMap::new();
    for s in spans {
        let t = by_trace
            .entry((&s.tenant_id, s.trace_id))
            .or_insert_with(|| TraceRow {
                tenant_id: Arc::clone(&s.tenant_id),
                trace_id: s.trace_id,
                first_start: s.start_unix_nano,
                last_end: s.end_unix_nano,
                span_count: 0,
                error_count: 0,
                root: None,
            });
        t.first_start = t.first_start.min(s.start_unix_nano);
        t.last_end = t.last_end.max(s.end_unix_nano);
        t.span_count += 1;
        t.error_count += i64::from(s.is_error());
        if s.is_root() {
            let better = t
                .root
                .as_ref()
                .is_none_or(|r| (s.start_unix_nano, s.span_id) < (r.start, r.span_id));
            if better {
                t.root = Some(Root {
                    service: s.service_name.clone(),
                    name: s.name.clone(),
                    span_id: s.span_id,
                    start: s.start_unix_nano,
                });
            }
        }
    }
    let mut rows: Vec<TraceRow> = by_trace.into_values().collect();
    // The keys are the map's, so unique: an unstable sort orders them alike.
    rows.sort_unstable_by(|a, b| (&*a.tenant_id, a.trace_id).cmp(&(&*b.tenant_id, b.trace_id)));
    rows
}

/// Fields of a row of `sql/traces_copy_stage.sql` and `sql/bench_copy_traces.sql`.
pub const TRACE_FIELDS: i16 = 11;

/// Streams trace rows into the table of `stmt`; returns the rows copied.
pub async fn copy_traces(tx: &Transaction<'_>, stmt: &Statement, rows: &[TraceRow]) -> Result<u64> {
    let now = Timestamptz::from_unix_nano(crate::clock::now_millis().saturating_mul(1_000_000));
    copy::copy_rows(tx, stmt, rows, |enc, t| encode_trace(enc, t, now)).await
}

/// Appends one trace in the column order of `sql/traces_copy_stage.sql`;
/// `updated_at` is `now` (the upsert writes its own `now()`).
pub fn encode_trace(enc: &mut CopyEncoder, t: &TraceRow, now: Timestamptz) -> Result<()> {
    let root = t.root.as_ref();
    enc.row(TRACE_FIELDS, |r| {
        r.text(&t.tenant_id)?;
        r.bytea(&t.trace_id)?;
        r.timestamptz(Timestamptz::from_unix_nano(t.first_start));
        r.timestamptz(Timestamptz::from_unix_nano(t.last_end));
        r.int8(t.span_count);
        r.int8(t.error_count);
        r.text_opt(root.and_then(|r| r.service.as_deref()))?;
        r.text_opt(root.map(|r| r.name.as_str()))?;
        r.bytea_opt(root.map(|r| &r.span_id[..]))?;
        r.int8_opt(root.map(|r| r.start));
        r.timestamptz(now);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, id: u8, parent: Option<u8>, start: i64, status: i32) -> SpanRow {
        SpanRow {
            parent_span_id: parent.map(|p| [p; 8]),
            end_unix_nano: start + 10,
            status_code: status,
            service_name: Some(Arc::from("svc")),
            ..SpanRow::bare("acme", [trace; 16], id, start)
        }
    }

    #[test]
    fn a_trace_folds_counts_extent_and_its_earliest_lowest_root() {
        let spans = [
            span(1, 5, None, 100, 0),
            span(1, 3, None, 100, 2),
            span(1, 9, Some(3), 50, 2),
            span(2, 1, Some(7), 10, 0),
        ];
        let rows = fold(&spans);
        assert_eq!(rows.len(), 2);
        let one = &rows[0];
        assert_eq!((one.span_count, one.error_count), (3, 2));
        assert_eq!((one.first_start, one.last_end), (50, 110));
        let root = one.root.as_ref().unwrap();
        assert_eq!((root.span_id, root.name.as_str()), ([3; 8], "s3"));
        assert_eq!(rows[1].root, None, "a trace without a root span here");
    }

    #[test]
    fn a_trace_is_written_in_the_column_order_of_its_copy_statements() {
        let rows = fold(&[span(1, 3, None, 100, 2), span(2, 1, Some(7), 10, 0)]);
        let now = Timestamptz::from_unix_nano(946_684_800_000_009_000);
        let mut enc = CopyEncoder::new();
        for t in &rows {
            encode_trace(&mut enc, t, now).unwrap();
        }
        let written = copy::read_back::rows(&enc.finish());
        let names = copy::read_back::columns(include_str!("../../sql/traces_copy_stage.sql"));
        assert_eq!(
            copy::read_back::columns(include_str!("../../sql/bench_copy_traces.sql")),
            names
        );
        assert_eq!(names.len(), usize::try_from(TRACE_FIELDS).unwrap());
        let field = |row: usize, name: &str| {
            written[row][names.iter().position(|c| c == name).unwrap()].clone()
        };
        assert_eq!(field(0, "span_count"), Some(1_i64.to_be_bytes().to_vec()));
        assert_eq!(field(0, "root_span_name"), Some(b"s3".to_vec()));
        assert_eq!(field(0, "root_span_id"), Some(vec![3; 8]));
        assert_eq!(field(0, "updated_at"), Some(9_i64.to_be_bytes().to_vec()));
        for rootless in [
            "root_service_name",
            "root_span_name",
            "root_span_id",
            "root_start_unix_nano",
        ] {
            assert_eq!(field(1, rootless), None);
        }
        assert!(written.iter().all(|row| row.len() == names.len()));
    }

    /// Both write paths fold traces by the same `DO UPDATE`: a replayed trace
    /// must count the same whichever path stored its first spans.
    #[test]
    fn the_direct_and_the_staged_path_upsert_traces_alike() {
        let tail = |sql: &str| -> String {
            let at = sql.find("DO UPDATE SET").expect("an upsert");
            let rest = &sql[at..];
            let end = rest.find("RETURNING").unwrap_or(rest.len());
            rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(
            tail(include_str!("../../sql/traces_upsert.sql")),
            tail(include_str!("../../sql/spans_move.sql"))
        );
    }
}
