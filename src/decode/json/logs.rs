//! The logs signal's item: the log record.

use crate::otlp::logs::v1 as logs;

use super::any_value::{AnyValue, KeyValue};
use super::hex_id::HexId;
use super::scalars::{int, nullable};

mirror! {
    LogRecord => logs::LogRecord {
        #[serde(alias = "time_unix_nano", deserialize_with = "int")]
        time_unix_nano: u64 => keep,
        #[serde(alias = "observed_time_unix_nano", deserialize_with = "int")]
        observed_time_unix_nano: u64 => keep,
        #[serde(alias = "severity_number", deserialize_with = "int")]
        severity_number: i32 => keep,
        #[serde(alias = "severity_text", deserialize_with = "nullable")]
        severity_text: String => keep,
        body: Option<AnyValue> => inner,
        #[serde(deserialize_with = "nullable")]
        attributes: Vec<KeyValue> => all,
        #[serde(alias = "dropped_attributes_count", deserialize_with = "int")]
        dropped_attributes_count: u32 => keep,
        #[serde(deserialize_with = "int")]
        flags: u32 => keep,
        #[serde(alias = "trace_id")]
        trace_id: HexId => hex("traceId"),
        #[serde(alias = "span_id")]
        span_id: HexId => hex("spanId"),
        #[serde(alias = "event_name", deserialize_with = "nullable")]
        event_name: String => keep,
    }
}
