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
//! The mirror types only describe the JSON shape; each converts into its
//! prost type by moving its strings and vectors, not copying them. They are
//! declared with the macro of `mirror`: the levels both signals nest their
//! items in (`levels`), then each signal's items (`traces`, `logs`). AnyValue,
//! read straight into prost, is in `any_value`; the formats of single fields
//! in `hex_id` and `scalars`.
//!
//! Nesting is bounded by serde_json's recursion limit (128 levels), which stops
//! the parse long before the stack is in danger.

#[macro_use]
mod mirror;

mod any_value;
mod hex_id;
mod levels;
mod logs;
mod scalars;
mod traces;

use serde::de::DeserializeOwned;

use crate::error::{Error, Reason, Result};
use crate::otlp::{ExportLogsServiceRequest, ExportTraceServiceRequest};

use mirror::IntoProto;

/// Parses an OTLP/JSON trace export request. An empty payload is an empty request.
pub fn parse_request_json(payload: &[u8]) -> Result<ExportTraceServiceRequest> {
    parse::<levels::TracesRequest>(payload)?.into_proto()
}

/// Parses an OTLP/JSON logs export request. An empty payload is an empty request.
pub fn parse_logs_request_json(payload: &[u8]) -> Result<ExportLogsServiceRequest> {
    parse::<levels::LogsRequest>(payload)?.into_proto()
}

fn parse<T: DeserializeOwned + Default>(payload: &[u8]) -> Result<T> {
    if payload.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(payload).map_err(|e| Error::input(Reason::BadJson, e.to_string()))
}

#[cfg(test)]
mod tests;
