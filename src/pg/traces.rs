//! `traces` rows folded from a batch's spans on this side, for the direct
//! write path: when every span of a batch is new, the batch's traces are what
//! its spans say, and they go in by one upsert from a staging table.
//!
//! The fold is the one `sql/spans_move.sql` does for the staged path: counts,
//! first start and last end, and the root with the earliest start, then the
//! lowest span id. A test keeps the two upserts' `DO UPDATE` the same.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Statement, Transaction};

use crate::error::Result;
use crate::model::SpanRow;
use crate::pg::copy::Timestamptz;

const STATUS_ERROR: i32 = 2;

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
        t.error_count += i64::from(s.status_code == STATUS_ERROR);
        if s.parent_span_id.is_none() {
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
    rows.sort_by(|a, b| (&*a.tenant_id, a.trace_id).cmp(&(&*b.tenant_id, b.trace_id)));
    rows
}

/// Column types of `sql/traces_copy_stage.sql`, in its order.
const TRACE_TYPES: [Type; 11] = [
    Type::TEXT,        // tenant_id
    Type::BYTEA,       // trace_id
    Type::TIMESTAMPTZ, // first_start_time
    Type::TIMESTAMPTZ, // last_end_time
    Type::INT8,        // span_count
    Type::INT8,        // error_count
    Type::TEXT,        // root_service_name
    Type::TEXT,        // root_span_name
    Type::BYTEA,       // root_span_id
    Type::INT8,        // root_start_unix_nano
    Type::TIMESTAMPTZ, // updated_at (the upsert writes now())
];

/// Streams trace rows into the table of `stmt`; returns the rows copied.
pub async fn copy_traces(tx: &Transaction<'_>, stmt: &Statement, rows: &[TraceRow]) -> Result<u64> {
    let sink = tx.copy_in(stmt).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &TRACE_TYPES));
    let now = Timestamptz::from_unix_nano(crate::clock::now_millis().saturating_mul(1_000_000));
    for t in rows {
        let tenant: &str = &t.tenant_id;
        let trace: &[u8] = &t.trace_id;
        let first = Timestamptz::from_unix_nano(t.first_start);
        let last = Timestamptz::from_unix_nano(t.last_end);
        let root = t.root.as_ref();
        let service: Option<&str> = root.and_then(|r| r.service.as_deref());
        let name: Option<&str> = root.map(|r| r.name.as_str());
        let span: Option<&[u8]> = root.map(|r| &r.span_id[..]);
        let start: Option<i64> = root.map(|r| r.start);
        let row: [&(dyn ToSql + Sync); 11] = [
            &tenant,
            &trace,
            &first,
            &last,
            &t.span_count,
            &t.error_count,
            &service,
            &name,
            &span,
            &start,
            &now,
        ];
        writer.as_mut().write(&row).await?;
    }
    Ok(writer.finish().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, id: u8, parent: Option<u8>, start: i64, status: i32) -> SpanRow {
        SpanRow {
            tenant_id: Arc::from("acme"),
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            trace_state: String::new(),
            flags: 0,
            name: format!("s{id}"),
            kind: 1,
            start_unix_nano: start,
            end_unix_nano: start + 10,
            status_code: status,
            status_message: String::new(),
            service_name: Some(Arc::from("svc")),
            resource_attributes: Arc::from("{}"),
            scope_name: Arc::from(""),
            scope_version: Arc::from(""),
            attributes: "{}".into(),
            dropped_attributes_count: 0,
            dropped_events_count: 0,
            dropped_links_count: 0,
            links: "[]".into(),
            link_count: 0,
            event_count: 0,
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
