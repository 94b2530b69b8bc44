//! Binary COPY of a batch's rows into the session's staging tables.
//!
//! Binary COPY is the fastest way in, and it lets us send values exactly:
//! `bytea` straight from the id arrays, timestamps computed from nanoseconds
//! here, and jsonb from the JSON text `decode` already wrote, with no JSON
//! tree built on this side.

use std::error::Error as StdError;
use std::pin::pin;

use bytes::{BufMut, BytesMut};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Statement, Transaction};

use crate::error::{Error, Reason, Result};
use crate::model::{SpanEventRow, SpanRow};

/// `jsonb` in binary form: a version byte, then the JSON text.
#[derive(Debug, Clone, Copy)]
pub struct Jsonb<'a>(pub &'a str);

const JSONB_VERSION: u8 = 1;

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_u8(JSONB_VERSION);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// A `timestamptz` value: microseconds since 2000-01-01T00:00:00Z, PostgreSQL's
/// own representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamptz(i64);

/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl Timestamptz {
    /// Rounds toward minus infinity (not toward zero), so that every instant
    /// maps to the microsecond that contains it, before 1970 as after. The
    /// exact value is kept in the `*_unix_nano` columns.
    pub fn from_unix_nano(ns: i64) -> Self {
        // |ns / 1000| < 9.3e15, far from overflowing when shifted by 9.5e14.
        Timestamptz(ns.div_euclid(1_000) - PG_EPOCH_UNIX_MICROS)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0 + PG_EPOCH_UNIX_MICROS
    }
}

impl ToSql for Timestamptz {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// Column types of `sql/copy_spans.sql`, in its order.
pub const SPAN_TYPES: [Type; 25] = [
    Type::TEXT,        // tenant_id
    Type::BYTEA,       // trace_id
    Type::BYTEA,       // span_id
    Type::BYTEA,       // parent_span_id
    Type::TEXT,        // trace_state
    Type::INT8,        // flags
    Type::TEXT,        // name
    Type::INT2,        // kind
    Type::TIMESTAMPTZ, // start_time
    Type::TIMESTAMPTZ, // end_time
    Type::INT8,        // start_unix_nano
    Type::INT8,        // end_unix_nano
    Type::INT8,        // duration_ns
    Type::INT2,        // status_code
    Type::TEXT,        // status_message
    Type::TEXT,        // service_name
    Type::JSONB,       // resource_attributes
    Type::TEXT,        // scope_name
    Type::TEXT,        // scope_version
    Type::JSONB,       // attributes
    Type::INT8,        // dropped_attributes_count
    Type::INT8,        // dropped_events_count
    Type::INT8,        // dropped_links_count
    Type::JSONB,       // links
    Type::INT4,        // event_count
];

/// Column types of `sql/copy_events.sql`, in its order.
pub const EVENT_TYPES: [Type; 10] = [
    Type::TEXT,        // tenant_id
    Type::BYTEA,       // trace_id
    Type::BYTEA,       // span_id
    Type::TIMESTAMPTZ, // span_start_time
    Type::INT4,        // event_index
    Type::TIMESTAMPTZ, // time
    Type::INT8,        // time_unix_nano
    Type::TEXT,        // name
    Type::JSONB,       // attributes
    Type::INT8,        // dropped_attributes_count
];

/// Streams spans into the staging table of `stmt` (`sql/copy_spans.sql`);
/// returns the rows copied.
pub async fn copy_spans(tx: &Transaction<'_>, stmt: &Statement, spans: &[&SpanRow]) -> Result<u64> {
    let sink = tx.copy_in(stmt).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &SPAN_TYPES));
    for s in spans {
        write_span(writer.as_mut(), s).await?;
    }
    Ok(writer.finish().await?)
}

/// Streams events into the staging table of `stmt` (`sql/copy_events.sql`);
/// returns the rows copied.
pub async fn copy_events(
    tx: &Transaction<'_>,
    stmt: &Statement,
    events: &[&SpanEventRow],
) -> Result<u64> {
    let sink = tx.copy_in(stmt).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &EVENT_TYPES));
    for e in events {
        write_event(writer.as_mut(), e).await?;
    }
    Ok(writer.finish().await?)
}

async fn write_span(writer: std::pin::Pin<&mut BinaryCopyInWriter>, s: &SpanRow) -> Result<()> {
    let tenant_id: &str = &s.tenant_id;
    let trace_id: &[u8] = &s.trace_id;
    let span_id: &[u8] = &s.span_id;
    let parent_span_id: Option<&[u8]> = s.parent_span_id.as_ref().map(|p| &p[..]);
    let flags = i64::from(s.flags);
    let kind = narrow::<i16, _>("span kind", s.kind)?;
    let start_time = Timestamptz::from_unix_nano(s.start_unix_nano);
    let end_time = Timestamptz::from_unix_nano(s.end_unix_nano);
    let duration_ns = s.duration_ns();
    let status_code = narrow::<i16, _>("span status code", s.status_code)?;
    let service_name: Option<&str> = s.service_name.as_deref();
    let resource_attributes = Jsonb(&s.resource_attributes);
    let scope_name: &str = &s.scope_name;
    let scope_version: &str = &s.scope_version;
    let attributes = Jsonb(&s.attributes);
    let dropped_attributes = i64::from(s.dropped_attributes_count);
    let dropped_events = i64::from(s.dropped_events_count);
    let dropped_links = i64::from(s.dropped_links_count);
    let links = Jsonb(&s.links);
    let event_count = narrow::<i32, _>("span event count", s.event_count)?;
    let row: [&(dyn ToSql + Sync); 25] = [
        &tenant_id,
        &trace_id,
        &span_id,
        &parent_span_id,
        &s.trace_state,
        &flags,
        &s.name,
        &kind,
        &start_time,
        &end_time,
        &s.start_unix_nano,
        &s.end_unix_nano,
        &duration_ns,
        &status_code,
        &s.status_message,
        &service_name,
        &resource_attributes,
        &scope_name,
        &scope_version,
        &attributes,
        &dropped_attributes,
        &dropped_events,
        &dropped_links,
        &links,
        &event_count,
    ];
    Ok(writer.write(&row).await?)
}

async fn write_event(
    writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    e: &SpanEventRow,
) -> Result<()> {
    let tenant_id: &str = &e.tenant_id;
    let trace_id: &[u8] = &e.trace_id;
    let span_id: &[u8] = &e.span_id;
    let span_start_time = Timestamptz::from_unix_nano(e.span_start_unix_nano);
    let time = Timestamptz::from_unix_nano(e.time_unix_nano);
    let attributes = Jsonb(&e.attributes);
    let dropped_attributes = i64::from(e.dropped_attributes_count);
    let row: [&(dyn ToSql + Sync); 10] = [
        &tenant_id,
        &trace_id,
        &span_id,
        &span_start_time,
        &e.event_index,
        &time,
        &e.time_unix_nano,
        &e.name,
        &attributes,
        &dropped_attributes,
    ];
    Ok(writer.write(&row).await?)
}

/// Fits a value into a narrower column type. A value that does not fit is
/// what PostgreSQL would refuse with SQLSTATE 22003: a fault of the message,
/// never worth a retry.
fn narrow<T, V>(what: &str, v: V) -> Result<T>
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(v: &dyn ToSql, ty: &Type) -> Vec<u8> {
        let mut buf = BytesMut::new();
        v.to_sql_checked(ty, &mut buf).unwrap();
        buf.to_vec()
    }

    #[test]
    fn jsonb_is_version_byte_then_text() {
        assert_eq!(encode(&Jsonb(r#"{"a":1}"#), &Type::JSONB), b"\x01{\"a\":1}");
        let mut buf = BytesMut::new();
        assert!(Jsonb("{}").to_sql_checked(&Type::JSON, &mut buf).is_err());
    }

    #[test]
    fn timestamps_round_down_to_the_microsecond() {
        assert_eq!(Timestamptz::from_unix_nano(946_684_800_000_000_000).0, 0);
        assert_eq!(Timestamptz::from_unix_nano(1_999).unix_micros(), 1);
        // Before 1970, down means further into the past, not toward zero.
        assert_eq!(Timestamptz::from_unix_nano(-1).unix_micros(), -1);
        assert_eq!(Timestamptz::from_unix_nano(-1_000).unix_micros(), -1);
        assert_eq!(Timestamptz::from_unix_nano(-1_001).unix_micros(), -2);
        assert_eq!(
            encode(
                &Timestamptz::from_unix_nano(946_684_800_000_001_000),
                &Type::TIMESTAMPTZ
            ),
            1_i64.to_be_bytes()
        );
        // The extremes of i64 nanoseconds stay representable.
        let _ = Timestamptz::from_unix_nano(i64::MIN).unix_micros();
        let _ = Timestamptz::from_unix_nano(i64::MAX).unix_micros();
    }

    #[test]
    fn out_of_range_values_are_poison() {
        assert_eq!(narrow::<i16, i32>("kind", 5).unwrap(), 5);
        let err = narrow::<i16, i32>("kind", 70_000).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::PgDataException));
        assert!(narrow::<i32, u32>("count", u32::MAX).is_err());
    }
}
