//! The trace signal's items: the span, with its events, links and status.

use crate::otlp::trace::v1 as trace;

use super::any_value::KeyValue;
use super::hex_id::HexId;
use super::scalars::{int, nullable};

mirror! {
    Span => trace::Span {
        #[serde(alias = "trace_id")]
        trace_id: HexId => hex("traceId"),
        #[serde(alias = "span_id")]
        span_id: HexId => hex("spanId"),
        #[serde(alias = "trace_state", deserialize_with = "nullable")]
        trace_state: String => keep,
        #[serde(alias = "parent_span_id")]
        parent_span_id: HexId => hex("parentSpanId"),
        #[serde(deserialize_with = "int")]
        flags: u32 => keep,
        #[serde(deserialize_with = "nullable")]
        name: String => keep,
        #[serde(deserialize_with = "int")]
        kind: i32 => keep,
        #[serde(alias = "start_time_unix_nano", deserialize_with = "int")]
        start_time_unix_nano: u64 => keep,
        #[serde(alias = "end_time_unix_nano", deserialize_with = "int")]
        end_time_unix_nano: u64 => keep,
        #[serde(deserialize_with = "nullable")]
        attributes: Vec<KeyValue> => all,
        #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
        dropped_attributes_count: u32 => keep,
        #[serde(deserialize_with = "nullable")]
        events: Vec<Event> => all,
        #[serde(alias = "dropped_events_count", deserialize_with = "int")]
        dropped_events_count: u32 => keep,
        #[serde(deserialize_with = "nullable")]
        links: Vec<Link> => all,
        #[serde(alias = "dropped_links_count", deserialize_with = "int")]
        dropped_links_count: u32 => keep,
        status: Option<Status> => opt,
    }

    Event => trace::span::Event {
        #[serde(alias = "time_unix_nano", deserialize_with = "int")]
        time_unix_nano: u64 => keep,
        #[serde(deserialize_with = "nullable")]
        name: String => keep,
        #[serde(deserialize_with = "nullable")]
        attributes: Vec<KeyValue> => all,
        #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
        dropped_attributes_count: u32 => keep,
    }

    Link => trace::span::Link {
        #[serde(alias = "trace_id")]
        trace_id: HexId => hex("links.traceId"),
        #[serde(alias = "span_id")]
        span_id: HexId => hex("links.spanId"),
        #[serde(alias = "trace_state", deserialize_with = "nullable")]
        trace_state: String => keep,
        #[serde(deserialize_with = "nullable")]
        attributes: Vec<KeyValue> => all,
        #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
        dropped_attributes_count: u32 => keep,
        #[serde(deserialize_with = "int")]
        flags: u32 => keep,
    }

    Status => trace::Status {
        #[serde(deserialize_with = "nullable")]
        message: String => keep,
        #[serde(deserialize_with = "int")]
        code: i32 => keep,
    }
}
