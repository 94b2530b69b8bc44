//! Binary COPY of a batch's rows into the session's staging tables, or
//! straight into the tables on the direct path.
//!
//! Binary COPY is the fastest way in, and it lets us send values exactly:
//! `bytea` straight from the id arrays, timestamps computed from nanoseconds
//! here, and jsonb from the JSON text `decode` already wrote, with no JSON
//! tree built on this side. [`encode`] writes the rows' wire bytes; this file
//! decides which column gets which value and streams the bytes out.

pub mod encode;

use std::pin::pin;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::{Statement, Transaction};

use crate::error::{Error, Reason, Result};
use crate::model::{LogRow, SpanEventRow, SpanRow};

pub use encode::{CopyEncoder, Timestamptz};

/// Encoded rows are handed to the connection in chunks of about this size.
/// The connection's channel holds only a chunk or two, so a COPY needs a few
/// times this much memory whatever the batch's size, rather than a buffer for
/// the whole batch, and one await per chunk rather than per row. Whatever the
/// size, the connection copies each chunk once more into its write buffer
/// (tokio-postgres's codec has no way around that), so a larger chunk would
/// save no copy, only hold more memory.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Fields of a row of `sql/copy_spans.sql` and `sql/spans_copy_direct.sql`.
pub const SPAN_FIELDS: i16 = 25;

/// Fields of a row of `sql/copy_events.sql` and `sql/events_copy_direct.sql`.
pub const EVENT_FIELDS: i16 = 10;

/// Fields of a row of `sql/copy_logs.sql` and `sql/logs_copy_direct.sql`.
pub const LOG_FIELDS: i16 = 19;

/// Streams spans into the table of `stmt` (`sql/copy_spans.sql` or
/// `sql/spans_copy_direct.sql`); returns the rows copied.
pub async fn copy_spans(tx: &Transaction<'_>, stmt: &Statement, spans: &[&SpanRow]) -> Result<u64> {
    copy_rows(tx, stmt, spans, |enc, s| encode_span(enc, s)).await
}

/// Streams events into the table of `stmt` (`sql/copy_events.sql` or
/// `sql/events_copy_direct.sql`); returns the rows copied.
pub async fn copy_events(
    tx: &Transaction<'_>,
    stmt: &Statement,
    events: &[&SpanEventRow],
) -> Result<u64> {
    copy_rows(tx, stmt, events, |enc, e| encode_event(enc, e)).await
}

/// Streams log records into the table of `stmt` (`sql/copy_logs.sql` or
/// `sql/logs_copy_direct.sql`); returns the rows copied.
pub async fn copy_logs(tx: &Transaction<'_>, stmt: &Statement, logs: &[&LogRow]) -> Result<u64> {
    copy_rows(tx, stmt, logs, |enc, l| encode_log(enc, l)).await
}

/// Runs the COPY of `stmt`, encoding each row with `encode` and sending the
/// stream a chunk at a time; returns the rows PostgreSQL reports copied. On an
/// error the sink is dropped unfinished, which aborts the COPY.
///
/// `encode` borrows each row: given rows that are references (`&SpanRow`) by
/// value, rustc could not prove this future `Send` (its limitation with
/// higher-ranked lifetimes), and the writers run in spawned tasks.
pub(crate) async fn copy_rows<R>(
    tx: &Transaction<'_>,
    stmt: &Statement,
    rows: &[R],
    encode: impl Fn(&mut CopyEncoder, &R) -> Result<()>,
) -> Result<u64> {
    let mut sink = pin!(tx.copy_in::<_, Bytes>(stmt).await?);
    let mut enc = CopyEncoder::with_capacity(CHUNK_BYTES);
    for row in rows {
        encode(&mut enc, row)?;
        if enc.buffered() >= CHUNK_BYTES {
            sink.send(enc.take()).await?;
        }
    }
    sink.send(enc.finish()).await?;
    Ok(sink.as_mut().finish().await?)
}

/// Appends one span in the column order of `sql/copy_spans.sql`. A value
/// that does not fit its column fails the call and leaves `enc` as it was.
pub fn encode_span(enc: &mut CopyEncoder, s: &SpanRow) -> Result<()> {
    let kind = narrow::<i16, _>("span kind", s.kind)?;
    let status_code = narrow::<i16, _>("span status code", s.status_code)?;
    let event_count = narrow::<i32, _>("span event count", s.event_count)?;
    enc.row(SPAN_FIELDS, |r| {
        r.text(&s.tenant_id)?;
        r.bytea(&s.trace_id)?;
        r.bytea(&s.span_id)?;
        r.bytea_opt(s.parent_span_id.as_ref().map(|p| &p[..]))?;
        r.text(&s.trace_state)?;
        r.int8(i64::from(s.flags));
        r.text(&s.name)?;
        r.int2(kind);
        r.timestamptz(Timestamptz::from_unix_nano(s.start_unix_nano));
        r.timestamptz(Timestamptz::from_unix_nano(s.end_unix_nano));
        r.int8(s.start_unix_nano);
        r.int8(s.end_unix_nano);
        r.int8(s.duration_ns());
        r.int2(status_code);
        r.text(&s.status_message)?;
        r.text_opt(s.service_name.as_deref())?;
        r.jsonb(&s.resource_attributes)?;
        r.text(&s.scope_name)?;
        r.text(&s.scope_version)?;
        r.jsonb(&s.attributes)?;
        r.int8(i64::from(s.dropped_attributes_count));
        r.int8(i64::from(s.dropped_events_count));
        r.int8(i64::from(s.dropped_links_count));
        r.jsonb(&s.links)?;
        r.int4(event_count);
        Ok(())
    })
}

/// Appends one span event in the column order of `sql/copy_events.sql`.
pub fn encode_event(enc: &mut CopyEncoder, e: &SpanEventRow) -> Result<()> {
    enc.row(EVENT_FIELDS, |r| {
        r.text(&e.tenant_id)?;
        r.bytea(&e.trace_id)?;
        r.bytea(&e.span_id)?;
        r.timestamptz(Timestamptz::from_unix_nano(e.span_start_unix_nano));
        r.int4(e.event_index);
        r.timestamptz(Timestamptz::from_unix_nano(e.time_unix_nano));
        r.int8(e.time_unix_nano);
        r.text(&e.name)?;
        r.jsonb(&e.attributes)?;
        r.int8(i64::from(e.dropped_attributes_count));
        Ok(())
    })
}

/// Appends one log record in the column order of `sql/copy_logs.sql`.
pub fn encode_log(enc: &mut CopyEncoder, l: &LogRow) -> Result<()> {
    let severity = narrow::<i16, _>("log severity number", l.severity_number)?;
    enc.row(LOG_FIELDS, |r| {
        r.text(&l.tenant_id)?;
        r.bytea(&l.record_id)?;
        r.timestamptz(Timestamptz::from_unix_nano(l.time_unix_nano));
        r.int8(l.time_unix_nano);
        r.timestamptz(Timestamptz::from_unix_nano(l.observed_time_unix_nano));
        r.int8(l.observed_time_unix_nano);
        r.int2(severity);
        r.text(&l.severity_text)?;
        r.jsonb(&l.body)?;
        r.jsonb(&l.attributes)?;
        r.jsonb(&l.resource_attributes)?;
        r.text_opt(l.service_name.as_deref())?;
        r.text(&l.scope_name)?;
        r.text(&l.scope_version)?;
        r.text(&l.event_name)?;
        r.int8(i64::from(l.flags));
        r.bytea_opt(l.trace_id.as_ref().map(|t| &t[..]))?;
        r.bytea_opt(l.span_id.as_ref().map(|s| &s[..]))?;
        r.int8(i64::from(l.dropped_attributes_count));
        Ok(())
    })
}

/// Fits a value into a narrower column type. A value that does not fit is
/// what PostgreSQL would refuse with SQLSTATE 22003: a fault of the message,
/// never worth a retry.
pub(crate) fn narrow<T, V>(what: &str, v: V) -> Result<T>
where
    T: TryFrom<V>,
    V: Copy + std::fmt::Display,
{
    T::try_from(v).map_err(|_| {
        Error::input(
            Reason::PgDataException,
            format!("{what} {v} is out of range for its column"),
        )
    })
}

/// Reads a binary COPY stream back into rows of fields, for tests that check
/// what the encoders wrote.
#[cfg(test)]
pub(crate) mod read_back {
    pub type Field = Option<Vec<u8>>;

    pub fn rows(stream: &[u8]) -> Vec<Vec<Field>> {
        use bytes::Buf;

        let mut rest = &stream[super::encode::HEADER_LEN..];
        let mut rows = Vec::new();
        loop {
            let fields = rest.get_i16();
            if fields == -1 {
                break;
            }
            let row = (0..fields)
                .map(|_| {
                    let len = usize::try_from(rest.get_i32()).ok()?;
                    let (value, tail) = rest.split_at(len);
                    rest = tail;
                    Some(value.to_vec())
                })
                .collect();
            rows.push(row);
        }
        assert!(rest.is_empty(), "bytes after the trailer");
        rows
    }

    /// The columns a `COPY table (a, b, ...) FROM STDIN` statement lists.
    pub fn columns(sql: &str) -> Vec<String> {
        let copy = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let open = copy.find('(').expect("a column list");
        let close = copy.find(')').expect("a column list");
        copy[open + 1..close]
            .split(',')
            .map(|c| c.trim().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::read_back::{columns, rows};
    use super::*;

    fn span() -> SpanRow {
        SpanRow {
            tenant_id: Arc::from("acme"),
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: "k=v".into(),
            flags: 1,
            name: "GET /".into(),
            kind: 2,
            start_unix_nano: 946_684_800_000_001_000,
            end_unix_nano: 946_684_800_000_003_500,
            status_code: 2,
            status_message: String::new(),
            service_name: Some(Arc::from("svc")),
            resource_attributes: Arc::from("{}"),
            scope_name: Arc::from("lib"),
            scope_version: Arc::from(""),
            attributes: r#"{"a":1}"#.into(),
            dropped_attributes_count: 3,
            dropped_events_count: 4,
            dropped_links_count: 5,
            links: "[]".into(),
            link_count: 0,
            event_count: 6,
        }
    }

    fn event() -> SpanEventRow {
        SpanEventRow {
            tenant_id: Arc::from("acme"),
            trace_id: [1; 16],
            span_id: [2; 8],
            span_start_unix_nano: 946_684_800_000_001_000,
            event_index: 7,
            time_unix_nano: 946_684_800_000_002_000,
            name: "boom".into(),
            attributes: "{}".into(),
            dropped_attributes_count: 8,
        }
    }

    fn one_row(encode: impl FnOnce(&mut CopyEncoder) -> Result<()>) -> Vec<Option<Vec<u8>>> {
        let mut enc = CopyEncoder::new();
        encode(&mut enc).unwrap();
        let mut all = rows(&enc.finish());
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn some(bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }

    #[test]
    fn a_span_is_written_in_the_column_order_of_its_copy_statements() {
        let row = one_row(|enc| encode_span(enc, &span()));
        for sql in [
            include_str!("../../sql/copy_spans.sql"),
            include_str!("../../sql/spans_copy_direct.sql"),
        ] {
            assert_eq!(columns(sql).len(), row.len());
            assert_eq!(row.len(), usize::try_from(SPAN_FIELDS).unwrap());
        }
        let names = columns(include_str!("../../sql/copy_spans.sql"));
        let field = |name: &str| &row[names.iter().position(|c| c == name).unwrap()];
        assert_eq!(field("tenant_id"), &some(b"acme"));
        assert_eq!(field("span_id"), &some(&[2; 8]));
        assert_eq!(field("parent_span_id"), &None);
        assert_eq!(field("flags"), &some(&1_i64.to_be_bytes()));
        assert_eq!(field("kind"), &some(&2_i16.to_be_bytes()));
        assert_eq!(field("start_time"), &some(&1_i64.to_be_bytes()));
        assert_eq!(field("end_time"), &some(&3_i64.to_be_bytes()));
        assert_eq!(field("duration_ns"), &some(&2_500_i64.to_be_bytes()));
        assert_eq!(field("status_message"), &some(b""));
        assert_eq!(field("service_name"), &some(b"svc"));
        assert_eq!(field("attributes"), &some(b"\x01{\"a\":1}"));
        assert_eq!(field("dropped_links_count"), &some(&5_i64.to_be_bytes()));
        assert_eq!(field("links"), &some(b"\x01[]"));
        assert_eq!(field("event_count"), &some(&6_i32.to_be_bytes()));
    }

    #[test]
    fn an_event_is_written_in_the_column_order_of_its_copy_statements() {
        let row = one_row(|enc| encode_event(enc, &event()));
        for sql in [
            include_str!("../../sql/copy_events.sql"),
            include_str!("../../sql/events_copy_direct.sql"),
        ] {
            assert_eq!(columns(sql).len(), row.len());
            assert_eq!(row.len(), usize::try_from(EVENT_FIELDS).unwrap());
        }
        let names = columns(include_str!("../../sql/copy_events.sql"));
        let field = |name: &str| &row[names.iter().position(|c| c == name).unwrap()];
        assert_eq!(field("span_start_time"), &some(&1_i64.to_be_bytes()));
        assert_eq!(field("event_index"), &some(&7_i32.to_be_bytes()));
        assert_eq!(field("time"), &some(&2_i64.to_be_bytes()));
        assert_eq!(field("name"), &some(b"boom"));
        assert_eq!(field("attributes"), &some(b"\x01{}"));
        assert_eq!(
            field("dropped_attributes_count"),
            &some(&8_i64.to_be_bytes())
        );
    }

    #[test]
    fn a_log_record_is_written_in_the_column_order_of_its_copy_statements() {
        let log = LogRow {
            tenant_id: Arc::from("acme"),
            record_id: [9; 16],
            time_unix_nano: 946_684_800_000_001_000,
            observed_time_unix_nano: 946_684_800_000_002_000,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: r#""boom""#.into(),
            attributes: "{}".into(),
            resource_attributes: Arc::from("{}"),
            service_name: None,
            scope_name: Arc::from("lib"),
            scope_version: Arc::from(""),
            flags: 1,
            trace_id: Some([1; 16]),
            span_id: None,
            event_name: String::new(),
            dropped_attributes_count: 4,
        };
        let row = one_row(|enc| encode_log(enc, &log));
        for sql in [
            include_str!("../../sql/copy_logs.sql"),
            include_str!("../../sql/logs_copy_direct.sql"),
            include_str!("../../sql/logs_move.sql"),
        ] {
            assert_eq!(columns(sql).len(), row.len());
        }
        assert_eq!(row.len(), usize::try_from(LOG_FIELDS).unwrap());
        let names = columns(include_str!("../../sql/copy_logs.sql"));
        let field = |name: &str| &row[names.iter().position(|c| c == name).unwrap()];
        assert_eq!(field("record_id"), &some(&[9; 16]));
        assert_eq!(field("time"), &some(&1_i64.to_be_bytes()));
        assert_eq!(field("observed_time"), &some(&2_i64.to_be_bytes()));
        assert_eq!(field("severity_number"), &some(&17_i16.to_be_bytes()));
        assert_eq!(field("body"), &some(b"\x01\"boom\""));
        assert_eq!(field("service_name"), &None);
        assert_eq!(field("trace_id"), &some(&[1; 16]));
        assert_eq!(field("span_id"), &None);
        assert_eq!(
            field("dropped_attributes_count"),
            &some(&4_i64.to_be_bytes())
        );
    }

    #[test]
    fn out_of_range_values_are_poison() {
        assert_eq!(narrow::<i16, i32>("kind", 5).unwrap(), 5);
        let err = narrow::<i16, i32>("kind", 70_000).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::PgDataException));
        assert!(narrow::<i32, u32>("count", u32::MAX).is_err());
    }

    #[test]
    fn a_span_out_of_range_is_refused_before_a_byte_is_written() {
        let mut enc = CopyEncoder::new();
        let before = enc.buffered();
        for bad in [
            SpanRow {
                kind: 70_000,
                ..span()
            },
            SpanRow {
                status_code: -40_000,
                ..span()
            },
            SpanRow {
                event_count: u32::MAX,
                ..span()
            },
        ] {
            let err = encode_span(&mut enc, &bad).unwrap_err();
            assert_eq!(err.reason(), Some(Reason::PgDataException));
            assert_eq!(enc.buffered(), before);
        }
    }
}
