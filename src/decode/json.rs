//! OTLP/JSON → the prost types, so that one path turns requests into rows.
//!
//! The OTLP specification's JSON rules differ from the canonical proto3 JSON
//! mapping: trace and span ids are hex (either case), not base64, and enums are
//! integers. As in proto3 JSON, field names are lowerCamelCase (the original
//! snake_case names are accepted too), 64-bit integers may be decimal strings
//! or numbers, `bytesValue` is base64, doubles may be the strings "NaN",
//! "Infinity" and "-Infinity", unknown fields are ignored, and missing or
//! `null` fields are defaults.
//!
//! The mirror types below only describe the JSON shape; each converts into its
//! prost type by moving its strings and vectors, not copying them.
//!
//! Nesting is bounded by serde_json's recursion limit (128 levels), which stops
//! the parse long before the stack is in danger.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected,
    Visitor,
};
use serde::Deserialize;

use crate::error::{Error, Reason, Result};
use crate::otlp::common::v1 as common;
use crate::otlp::logs::v1 as logs;
use crate::otlp::resource::v1 as resource;
use crate::otlp::trace::v1 as trace;
use crate::otlp::{ExportLogsServiceRequest, ExportTraceServiceRequest};

/// Parses an OTLP/JSON trace export request. An empty payload is an empty request.
pub fn parse_request_json(payload: &[u8]) -> Result<ExportTraceServiceRequest> {
    parse::<TracesRequest>(payload)?.into_proto()
}

/// Parses an OTLP/JSON logs export request. An empty payload is an empty request.
pub fn parse_logs_request_json(payload: &[u8]) -> Result<ExportLogsServiceRequest> {
    parse::<LogsRequest>(payload)?.into_proto()
}

fn parse<T: DeserializeOwned + Default>(payload: &[u8]) -> Result<T> {
    if payload.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(payload).map_err(|e| Error::input(Reason::BadJson, e.to_string()))
}

/// A mirror type and the prost type it becomes.
trait IntoProto {
    type Proto;
    fn into_proto(self) -> Result<Self::Proto>;
}

fn all<T: IntoProto>(items: Vec<T>) -> Result<Vec<T::Proto>> {
    items.into_iter().map(IntoProto::into_proto).collect()
}

fn opt<T: IntoProto>(item: Option<T>) -> Result<Option<T::Proto>> {
    item.map(IntoProto::into_proto).transpose()
}

// ---- traces ---------------------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct TracesRequest {
    #[serde(alias = "resource_spans", deserialize_with = "nullable")]
    resource_spans: Vec<ResourceSpans>,
}

impl IntoProto for TracesRequest {
    type Proto = ExportTraceServiceRequest;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(ExportTraceServiceRequest {
            resource_spans: all(self.resource_spans)?,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ResourceSpans {
    resource: Option<Resource>,
    #[serde(alias = "scope_spans", deserialize_with = "nullable")]
    scope_spans: Vec<ScopeSpans>,
    #[serde(alias = "schema_url", deserialize_with = "nullable")]
    schema_url: String,
}

impl IntoProto for ResourceSpans {
    type Proto = trace::ResourceSpans;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(trace::ResourceSpans {
            resource: opt(self.resource)?,
            scope_spans: all(self.scope_spans)?,
            schema_url: self.schema_url,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ScopeSpans {
    scope: Option<InstrumentationScope>,
    #[serde(deserialize_with = "nullable")]
    spans: Vec<Span>,
    #[serde(alias = "schema_url", deserialize_with = "nullable")]
    schema_url: String,
}

impl IntoProto for ScopeSpans {
    type Proto = trace::ScopeSpans;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(trace::ScopeSpans {
            scope: opt(self.scope)?,
            spans: all(self.spans)?,
            schema_url: self.schema_url,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Span {
    #[serde(alias = "trace_id")]
    trace_id: HexId,
    #[serde(alias = "span_id")]
    span_id: HexId,
    #[serde(alias = "trace_state", deserialize_with = "nullable")]
    trace_state: String,
    #[serde(alias = "parent_span_id")]
    parent_span_id: HexId,
    #[serde(deserialize_with = "int")]
    flags: u32,
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "int")]
    kind: i32,
    #[serde(alias = "start_time_unix_nano", deserialize_with = "int")]
    start_time_unix_nano: u64,
    #[serde(alias = "end_time_unix_nano", deserialize_with = "int")]
    end_time_unix_nano: u64,
    #[serde(deserialize_with = "nullable")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "nullable")]
    events: Vec<Event>,
    #[serde(alias = "dropped_events_count", deserialize_with = "int")]
    dropped_events_count: u32,
    #[serde(deserialize_with = "nullable")]
    links: Vec<Link>,
    #[serde(alias = "dropped_links_count", deserialize_with = "int")]
    dropped_links_count: u32,
    status: Option<Status>,
}

impl IntoProto for Span {
    type Proto = trace::Span;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(trace::Span {
            trace_id: self.trace_id.into_bytes("traceId")?,
            span_id: self.span_id.into_bytes("spanId")?,
            trace_state: self.trace_state,
            parent_span_id: self.parent_span_id.into_bytes("parentSpanId")?,
            flags: self.flags,
            name: self.name,
            kind: self.kind,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            attributes: all(self.attributes)?,
            dropped_attributes_count: self.dropped_attributes_count,
            events: all(self.events)?,
            dropped_events_count: self.dropped_events_count,
            links: all(self.links)?,
            dropped_links_count: self.dropped_links_count,
            status: self.status.map(|s| trace::Status {
                message: s.message,
                code: s.code,
            }),
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Event {
    #[serde(alias = "time_unix_nano", deserialize_with = "int")]
    time_unix_nano: u64,
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
    dropped_attributes_count: u32,
}

impl IntoProto for Event {
    type Proto = trace::span::Event;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(trace::span::Event {
            time_unix_nano: self.time_unix_nano,
            name: self.name,
            attributes: all(self.attributes)?,
            dropped_attributes_count: self.dropped_attributes_count,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Link {
    #[serde(alias = "trace_id")]
    trace_id: HexId,
    #[serde(alias = "span_id")]
    span_id: HexId,
    #[serde(alias = "trace_state", deserialize_with = "nullable")]
    trace_state: String,
    #[serde(deserialize_with = "nullable")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "int")]
    flags: u32,
}

impl IntoProto for Link {
    type Proto = trace::span::Link;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(trace::span::Link {
            trace_id: self.trace_id.into_bytes("links.traceId")?,
            span_id: self.span_id.into_bytes("links.spanId")?,
            trace_state: self.trace_state,
            attributes: all(self.attributes)?,
            dropped_attributes_count: self.dropped_attributes_count,
            flags: self.flags,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Status {
    #[serde(deserialize_with = "nullable")]
    message: String,
    #[serde(deserialize_with = "int")]
    code: i32,
}

// ---- logs -----------------------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LogsRequest {
    #[serde(alias = "resource_logs", deserialize_with = "nullable")]
    resource_logs: Vec<ResourceLogs>,
}

impl IntoProto for LogsRequest {
    type Proto = ExportLogsServiceRequest;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(ExportLogsServiceRequest {
            resource_logs: all(self.resource_logs)?,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ResourceLogs {
    resource: Option<Resource>,
    #[serde(alias = "scope_logs", deserialize_with = "nullable")]
    scope_logs: Vec<ScopeLogs>,
    #[serde(alias = "schema_url", deserialize_with = "nullable")]
    schema_url: String,
}

impl IntoProto for ResourceLogs {
    type Proto = logs::ResourceLogs;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(logs::ResourceLogs {
            resource: opt(self.resource)?,
            scope_logs: all(self.scope_logs)?,
            schema_url: self.schema_url,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ScopeLogs {
    scope: Option<InstrumentationScope>,
    #[serde(alias = "log_records", deserialize_with = "nullable")]
    log_records: Vec<LogRecord>,
    #[serde(alias = "schema_url", deserialize_with = "nullable")]
    schema_url: String,
}

impl IntoProto for ScopeLogs {
    type Proto = logs::ScopeLogs;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(logs::ScopeLogs {
            scope: opt(self.scope)?,
            log_records: all(self.log_records)?,
            schema_url: self.schema_url,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct LogRecord {
    #[serde(alias = "time_unix_nano", deserialize_with = "int")]
    time_unix_nano: u64,
    #[serde(alias = "observed_time_unix_nano", deserialize_with = "int")]
    observed_time_unix_nano: u64,
    #[serde(alias = "severity_number", deserialize_with = "int")]
    severity_number: i32,
    #[serde(alias = "severity_text", deserialize_with = "nullable")]
    severity_text: String,
    body: Option<AnyValue>,
    #[serde(deserialize_with = "nullable")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
    dropped_attributes_count: u32,
    #[serde(deserialize_with = "int")]
    flags: u32,
    #[serde(alias = "trace_id")]
    trace_id: HexId,
    #[serde(alias = "span_id")]
    span_id: HexId,
    #[serde(alias = "event_name", deserialize_with = "nullable")]
    event_name: String,
}

impl IntoProto for LogRecord {
    type Proto = logs::LogRecord;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(logs::LogRecord {
            time_unix_nano: self.time_unix_nano,
            observed_time_unix_nano: self.observed_time_unix_nano,
            severity_number: self.severity_number,
            severity_text: self.severity_text,
            body: self.body.map(|b| b.0),
            attributes: all(self.attributes)?,
            dropped_attributes_count: self.dropped_attributes_count,
            flags: self.flags,
            trace_id: self.trace_id.into_bytes("traceId")?,
            span_id: self.span_id.into_bytes("spanId")?,
            event_name: self.event_name,
        })
    }
}

// ---- common ---------------------------------------------------------------

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Resource {
    #[serde(deserialize_with = "nullable")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
    dropped_attributes_count: u32,
}

impl IntoProto for Resource {
    type Proto = resource::Resource;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(resource::Resource {
            attributes: all(self.attributes)?,
            dropped_attributes_count: self.dropped_attributes_count,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct InstrumentationScope {
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    version: String,
    #[serde(deserialize_with = "nullable")]
    attributes: Vec<KeyValue>,
    #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
    dropped_attributes_count: u32,
}

impl IntoProto for InstrumentationScope {
    type Proto = common::InstrumentationScope;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(common::InstrumentationScope {
            name: self.name,
            version: self.version,
            attributes: all(self.attributes)?,
            dropped_attributes_count: self.dropped_attributes_count,
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct KeyValue {
    #[serde(deserialize_with = "nullable")]
    key: String,
    value: Option<AnyValue>,
}

impl KeyValue {
    fn into_key_value(self) -> common::KeyValue {
        common::KeyValue {
            key: self.key,
            value: self.value.map(|v| v.0),
        }
    }
}

impl IntoProto for KeyValue {
    type Proto = common::KeyValue;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(self.into_key_value())
    }
}

/// An AnyValue, read straight into the prost type. It is the one recursive
/// type and the most frequent one, so it skips the mirror-and-convert step:
/// no second pass over nested values, and fewer stack frames per level.
struct AnyValue(common::AnyValue);

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(AnyValueVisitor)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum AnyValueField {
    #[serde(alias = "string_value")]
    StringValue,
    #[serde(alias = "bool_value")]
    BoolValue,
    #[serde(alias = "int_value")]
    IntValue,
    #[serde(alias = "double_value")]
    DoubleValue,
    #[serde(alias = "array_value")]
    ArrayValue,
    #[serde(alias = "kvlist_value")]
    KvlistValue,
    #[serde(alias = "bytes_value")]
    BytesValue,
    #[serde(other)]
    Unknown,
}

struct AnyValueVisitor;

impl<'de> Visitor<'de> for AnyValueVisitor {
    type Value = AnyValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AnyValue object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<AnyValue, A::Error> {
        let mut value = None;
        while let Some(field) = map.next_key()? {
            // Each kind is read in its own function: this frame stays on the
            // stack once per nesting level, so it holds nothing else.
            let next = match field {
                AnyValueField::ArrayValue => read_array(&mut map)?,
                AnyValueField::KvlistValue => read_kvlist(&mut map)?,
                AnyValueField::Unknown => {
                    map.next_value::<de::IgnoredAny>()?;
                    None
                }
                scalar => read_scalar(&mut map, scalar)?,
            };
            if next.is_some() {
                if value.is_some() {
                    return Err(de::Error::custom(
                        "an AnyValue holds more than one of stringValue, boolValue, intValue, \
                         doubleValue, arrayValue, kvlistValue and bytesValue",
                    ));
                }
                value = next;
            }
        }
        Ok(AnyValue(common::AnyValue { value }))
    }
}

type ValueResult<E> = std::result::Result<Option<common::any_value::Value>, E>;

fn read_scalar<'de, A: MapAccess<'de>>(map: &mut A, field: AnyValueField) -> ValueResult<A::Error> {
    use common::any_value::Value;
    Ok(match field {
        AnyValueField::StringValue => map.next_value::<Option<String>>()?.map(Value::StringValue),
        AnyValueField::BoolValue => map.next_value::<Option<bool>>()?.map(Value::BoolValue),
        AnyValueField::IntValue => map.next_value::<Int64>()?.0.map(Value::IntValue),
        AnyValueField::DoubleValue => map.next_value::<Double>()?.0.map(Value::DoubleValue),
        AnyValueField::BytesValue => map.next_value::<Base64>()?.0.map(Value::BytesValue),
        AnyValueField::ArrayValue | AnyValueField::KvlistValue | AnyValueField::Unknown => None,
    })
}

fn read_array<'de, A: MapAccess<'de>>(map: &mut A) -> ValueResult<A::Error> {
    let values = map.next_value::<Values<AnyValue>>()?.0;
    Ok(values.map(|values| {
        common::any_value::Value::ArrayValue(common::ArrayValue {
            // The same layout: collected in place, without a new allocation.
            values: values.into_iter().map(|v| v.0).collect(),
        })
    }))
}

fn read_kvlist<'de, A: MapAccess<'de>>(map: &mut A) -> ValueResult<A::Error> {
    let values = map.next_value::<Values<KeyValue>>()?.0;
    Ok(values.map(|values| {
        common::any_value::Value::KvlistValue(common::KeyValueList {
            values: values.into_iter().map(KeyValue::into_key_value).collect(),
        })
    }))
}

/// `{"values": [...]}`, the shape of both ArrayValue and KeyValueList; `null`
/// is no value. Read by hand, like [`AnyValue`], to keep nesting cheap.
struct Values<T>(Option<Vec<T>>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Values<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Not `deserialize_any`: serde_json's is a far bigger stack frame, and
        // this one is on the stack once per nesting level.
        d.deserialize_option(ValuesVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ValuesField {
    Values,
    #[serde(other)]
    Unknown,
}

struct ValuesVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ValuesVisitor<T> {
    type Value = Values<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a \"values\" array")
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Values<T>, E> {
        Ok(Values(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Values<T>, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Values<T>, A::Error> {
        let mut values = Vec::new();
        while let Some(field) = map.next_key()? {
            match field {
                ValuesField::Values => {
                    values = map.next_value_seed(List(PhantomData))?;
                }
                ValuesField::Unknown => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(Values(Some(values)))
    }
}

/// A JSON array read into a `Vec`, `null` as empty: [`Values`]'s items.
struct List<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for List<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Vec<T>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(items)
    }
}

/// `intValue`: `null` (no value), a number, or a decimal string.
struct Int64(Option<i64>);

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        opt_int(d).map(Int64)
    }
}

/// `doubleValue`: `null` (no value), a number, or a string.
struct Double(Option<f64>);

impl<'de> Deserialize<'de> for Double {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        opt_double(d).map(Double)
    }
}

/// `bytesValue`: `null` (no value) or base64 text.
struct Base64(Option<Vec<u8>>);

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        opt_bytes(d).map(Base64)
    }
}

// ---- field formats --------------------------------------------------------

/// A hex trace or span id as sent. Text that is not hex is kept, not refused
/// by the parser, so that it is reported as [`Reason::InvalidId`] (the id is
/// wrong) rather than [`Reason::BadJson`] (the document is).
struct HexId(std::result::Result<Vec<u8>, String>);

impl Default for HexId {
    fn default() -> Self {
        HexId(Ok(Vec::new()))
    }
}

impl HexId {
    fn into_bytes(self, field: &str) -> Result<Vec<u8>> {
        self.0.map_err(|shown| {
            Error::input(
                Reason::InvalidId,
                format!("{field} {shown:?} is not a hex id"),
            )
        })
    }
}

impl<'de> Deserialize<'de> for HexId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct HexIdVisitor;
        impl Visitor<'_> for HexIdVisitor {
            type Value = HexId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a hex id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<HexId, E> {
                // Enough of the text to recognise it, bounded for a huge field.
                Ok(HexId(
                    hex::decode(v).map_err(|_| v.chars().take(64).collect()),
                ))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<HexId, E> {
                Ok(HexId::default())
            }
        }
        d.deserialize_any(HexIdVisitor)
    }
}

/// `null` reads as the default, as proto3 JSON parsers do.
fn nullable<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An integer as a JSON number or a decimal string; `null` is 0.
fn int<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64> + FromStr + Default,
{
    Ok(d.deserialize_any(IntVisitor::<T>(PhantomData))?
        .unwrap_or_default())
}

fn opt_int<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<i64>, D::Error> {
    d.deserialize_any(IntVisitor::<i64>(PhantomData))
}

struct IntVisitor<T>(PhantomData<T>);

impl<T> Visitor<'_> for IntVisitor<T>
where
    T: TryFrom<u64> + TryFrom<i64> + FromStr,
{
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer in range, as a number or a decimal string")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Option<T>, E> {
        T::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Option<T>, E> {
        T::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Option<T>, E> {
        v.parse()
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Option<T>, E> {
        Ok(None)
    }
}

/// A double as a JSON number, a decimal string, or "NaN", "Infinity", "-Infinity".
fn opt_double<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    struct DoubleVisitor;
    impl Visitor<'_> for DoubleVisitor {
        type Value = Option<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, or \"NaN\", \"Infinity\" or \"-Infinity\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Option<f64>, E> {
            Ok(Some(v))
        }
        // Integers beyond 2^53 round, as any JSON reader of a double would.
        #[allow(clippy::cast_precision_loss)]
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Option<f64>, E> {
            Ok(Some(v as f64))
        }
        #[allow(clippy::cast_precision_loss)]
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Option<f64>, E> {
            Ok(Some(v as f64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Option<f64>, E> {
            match v {
                "NaN" => Ok(Some(f64::NAN)),
                "Infinity" => Ok(Some(f64::INFINITY)),
                "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                // Rust also reads "inf" and "nan"; only the three names above are OTLP.
                _ => match v.parse::<f64>() {
                    Ok(d) if d.is_finite() => Ok(Some(d)),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                },
            }
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Option<f64>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(DoubleVisitor)
}

/// Standard or URL-safe base64, padded or not, as proto3 JSON parsers accept.
fn opt_bytes<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<u8>>, D::Error> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

    struct BytesVisitor;
    impl Visitor<'_> for BytesVisitor {
        type Value = Option<Vec<u8>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("base64 text")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Option<Vec<u8>>, E> {
            STANDARD
                .decode(v)
                .or_else(|_| URL_SAFE.decode(v))
                .map(Some)
                .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Option<Vec<u8>>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(BytesVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::any_value::Value;

    fn one_value(json: &str) -> Result<Option<Value>> {
        let doc = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"attributes":[{{"key":"k","value":{json}}}]}}]}}]}}]}}"#
        );
        let mut request = parse_request_json(doc.as_bytes())?;
        let span = request
            .resource_spans
            .remove(0)
            .scope_spans
            .remove(0)
            .spans
            .remove(0);
        Ok(span
            .attributes
            .into_iter()
            .next()
            .and_then(|kv| kv.value)
            .and_then(|v| v.value))
    }

    fn reason<T: fmt::Debug>(r: Result<T>) -> Option<Reason> {
        r.unwrap_err().reason()
    }

    #[test]
    fn camel_and_snake_case_names_read_the_same() {
        let camel = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","parentSpanId":"","startTimeUnixNano":"5","endTimeUnixNano":6,"droppedEventsCount":3,"status":{"code":2,"message":"m"}}]}]}]}"#;
        let snake = r#"{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"0102030405060708090A0B0C0D0E0F10","span_id":"0102030405060708","parent_span_id":null,"start_time_unix_nano":5,"end_time_unix_nano":"6","dropped_events_count":"3","status":{"code":2,"message":"m"}}]}]}]}"#;
        let a = parse_request_json(camel.as_bytes()).unwrap();
        let b = parse_request_json(snake.as_bytes()).unwrap();
        assert_eq!(a, b);
        let span = &a.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, (1..=16).collect::<Vec<u8>>());
        assert_eq!((span.start_time_unix_nano, span.end_time_unix_nano), (5, 6));
        assert_eq!(span.dropped_events_count, 3);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_fields_are_defaults() {
        let doc = r#"{"resourceSpans":[{"future":{"a":[1,2,{"b":null}]},"scopeSpans":[{"spans":[{"extra":true}]}]}],"x":1}"#;
        let request = parse_request_json(doc.as_bytes()).unwrap();
        assert_eq!(
            request.resource_spans[0].scope_spans[0].spans[0],
            trace::Span::default()
        );
        assert_eq!(
            parse_request_json(b"{}").unwrap(),
            ExportTraceServiceRequest::default()
        );
        assert_eq!(
            parse_request_json(b"").unwrap(),
            ExportTraceServiceRequest::default()
        );
    }

    #[test]
    fn any_value_kinds() {
        assert_eq!(
            one_value(r#"{"stringValue":"s"}"#).unwrap(),
            Some(Value::StringValue("s".into()))
        );
        assert_eq!(
            one_value(r#"{"boolValue":true}"#).unwrap(),
            Some(Value::BoolValue(true))
        );
        assert_eq!(
            one_value(r#"{"intValue":"9007199254740993"}"#).unwrap(),
            Some(Value::IntValue(9_007_199_254_740_993))
        );
        assert_eq!(
            one_value(r#"{"intValue":-7}"#).unwrap(),
            Some(Value::IntValue(-7))
        );
        assert_eq!(
            one_value(r#"{"doubleValue":1.5}"#).unwrap(),
            Some(Value::DoubleValue(1.5))
        );
        assert_eq!(
            one_value(r#"{"doubleValue":2}"#).unwrap(),
            Some(Value::DoubleValue(2.0))
        );
        assert_eq!(
            one_value(r#"{"doubleValue":"0.25"}"#).unwrap(),
            Some(Value::DoubleValue(0.25))
        );
        assert_eq!(
            one_value(r#"{"doubleValue":"-Infinity"}"#).unwrap(),
            Some(Value::DoubleValue(f64::NEG_INFINITY))
        );
        match one_value(r#"{"doubleValue":"NaN"}"#).unwrap() {
            Some(Value::DoubleValue(d)) => assert!(d.is_nan()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            one_value(r#"{"bytesValue":"AAEC/w=="}"#).unwrap(),
            Some(Value::BytesValue(vec![0, 1, 2, 255]))
        );
        assert_eq!(
            one_value(r#"{"bytesValue":"AAEC_w"}"#).unwrap(),
            Some(Value::BytesValue(vec![0, 1, 2, 255]))
        );
        assert_eq!(one_value(r#"{}"#).unwrap(), None);
        assert_eq!(one_value(r#"{"stringValue":null}"#).unwrap(), None);
        let Some(Value::ArrayValue(a)) =
            one_value(r#"{"arrayValue":{"values":[{"intValue":"1"},{}]}}"#).unwrap()
        else {
            panic!("not an array")
        };
        assert_eq!(a.values.len(), 2);
        assert_eq!(a.values[0].value, Some(Value::IntValue(1)));
        assert_eq!(a.values[1].value, None);
        let Some(Value::KvlistValue(kv)) =
            one_value(r#"{"kvlist_value":{"values":[{"key":"a","value":{"bool_value":false}}]}}"#)
                .unwrap()
        else {
            panic!("not a kvlist")
        };
        assert_eq!(kv.values[0].key, "a");
        assert_eq!(
            kv.values[0].value.as_ref().and_then(|v| v.value.clone()),
            Some(Value::BoolValue(false))
        );
    }

    #[test]
    fn malformed_json_and_wrong_types_are_bad_json() {
        for value in [
            r#"{"intValue":"12x"}"#,
            r#"{"intValue":1.5}"#,
            r#"{"intValue":"99999999999999999999"}"#,
            r#"{"doubleValue":"inf"}"#,
            r#"{"doubleValue":true}"#,
            r#"{"bytesValue":"***"}"#,
            r#"{"stringValue":1}"#,
            r#"{"stringValue":"a","intValue":1}"#,
        ] {
            assert_eq!(reason(one_value(value)), Some(Reason::BadJson), "{value}");
        }
        for doc in [
            &b"{"[..],
            b"not json",
            b"{\"resourceSpans\":{}}",
            b"{} {}",
            b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"kind\":\"2x\"}]}]}]}",
            b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"flags\":-1}]}]}]}",
            b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"startTimeUnixNano\":\"-1\"}]}]}]}",
        ] {
            let r = parse_request_json(doc);
            assert_eq!(reason(r), Some(Reason::BadJson), "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn a_bad_hex_id_is_an_invalid_id() {
        for span in [
            r#"{"traceId":"zz02030405060708090a0b0c0d0e0f10"}"#,
            r#"{"spanId":"0102030"}"#,
            r#"{"parentSpanId":"AQIDBAUGBwg="}"#,
            r#"{"links":[{"traceId":"xyz"}]}"#,
        ] {
            let doc = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span}]}}]}}]}}"#);
            let err = parse_request_json(doc.as_bytes()).unwrap_err();
            assert_eq!(err.reason(), Some(Reason::InvalidId), "{span}");
        }
        let doc = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"nothex!!"}]}]}]}"#;
        assert_eq!(
            reason(parse_logs_request_json(doc.as_bytes())),
            Some(Reason::InvalidId)
        );
        // A non-string id is a malformed document, not a malformed id.
        let doc = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":5}]}]}]}"#;
        assert_eq!(
            reason(parse_request_json(doc.as_bytes())),
            Some(Reason::BadJson)
        );
    }

    #[test]
    fn logs_parse() {
        let doc = r#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},"scopeLogs":[{"scope":{"name":"s","version":"1"},"logRecords":[{"timeUnixNano":"10","observedTimeUnixNano":11,"severityNumber":9,"severityText":"INFO","body":{"stringValue":"hi"},"flags":1,"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","eventName":"e","droppedAttributesCount":2}]}]}]}"#;
        let request = parse_logs_request_json(doc.as_bytes()).unwrap();
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(
            (record.time_unix_nano, record.observed_time_unix_nano),
            (10, 11)
        );
        assert_eq!(record.severity_number, 9);
        assert_eq!(record.severity_text, "INFO");
        assert_eq!(
            record.body.as_ref().and_then(|b| b.value.clone()),
            Some(Value::StringValue("hi".into()))
        );
        assert_eq!(record.span_id, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((record.flags, record.dropped_attributes_count), (1, 2));
        assert_eq!(record.event_name, "e");
        assert_eq!(
            parse_logs_request_json(b"").unwrap(),
            ExportLogsServiceRequest::default()
        );
    }
}
