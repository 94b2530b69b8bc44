//! Decoding whole messages through the entry points, with the fixtures the
//! tests of each signal share. Kept out of `decode/mod.rs` for their size:
//! span rows in `spans`, log rows in `logs`, deep nesting in `nesting`.

mod logs;
mod nesting;
mod proto_rows;
mod spans;

use std::time::UNIX_EPOCH;

use prost::Message;

use super::*;
use crate::model::Sanitized;
use crate::otlp::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
use crate::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use crate::otlp::{ExportLogsServiceRequest, ExportTraceServiceRequest};

const NOW_NS: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
const HOUR_NS: u64 = 3_600_000_000_000;
const TRACE: [u8; 16] = [0x11; 16];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(NOW_NS)
}

fn limits() -> Limits {
    Limits {
        max_message_bytes: 1 << 20,
        max_value_depth: 32,
        max_attributes: 128,
        items: crate::decode::ItemLimits::UNLIMITED,
        accept_past: Duration::from_secs(2 * 3600),
        accept_future: Duration::from_secs(3600),
    }
}

/// Where the test messages were read.
const ORIGIN: crate::model::Origin<'static> = crate::model::Origin {
    topic: "otlp_logs",
    partition: 3,
    offset: 42,
    timestamp_ms: Some(1_767_225_600_000),
};

fn tenant() -> Arc<str> {
    Arc::from("acme")
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn span(span_id: u8) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: vec![span_id; 8],
        name: format!("op{span_id}"),
        start_time_unix_nano: NOW_NS,
        end_time_unix_nano: NOW_NS + 1_000,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("checkout".into())),
                    kv("host.name", Value::StringValue("h1".into())),
                ],
                dropped_attributes_count: 0,
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "lib".into(),
                    version: "1.2".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn decode(request: &ExportTraceServiceRequest) -> Result<Decoded> {
    decode_traces(
        &request.encode_to_vec(),
        Encoding::OtlpProto,
        &tenant(),
        &limits(),
        now(),
    )
}

fn reason_of(request: &ExportTraceServiceRequest) -> Option<Reason> {
    decode(request).unwrap_err().reason()
}

fn record() -> LogRecord {
    LogRecord {
        time_unix_nano: NOW_NS,
        observed_time_unix_nano: NOW_NS + 5,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue("hello".into())),
        }),
        attributes: vec![kv("a", Value::IntValue(1))],
        dropped_attributes_count: 2,
        flags: 1,
        trace_id: TRACE.to_vec(),
        span_id: vec![1; 8],
        event_name: "ev".into(),
    }
}

fn logs_request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("svc".into()))],
                dropped_attributes_count: 0,
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "s".into(),
                    version: "2".into(),
                    ..Default::default()
                }),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[test]
fn size_is_checked_first_and_names_both_numbers() {
    let small = Limits {
        max_message_bytes: 10,
        ..limits()
    };
    let err =
        decode_traces(&[0xff; 11], Encoding::OtlpProto, &tenant(), &small, now()).unwrap_err();
    assert_eq!(err.reason(), Some(Reason::MessageTooLarge));
    let text = err.to_string();
    assert!(text.contains("11 bytes") && text.contains("10"), "{text}");
    // At the limit the payload is parsed (and here found to be garbage).
    let err =
        decode_traces(&[0xff; 10], Encoding::OtlpProto, &tenant(), &small, now()).unwrap_err();
    assert_eq!(err.reason(), Some(Reason::BadProtobuf));
    let err = decode_logs(
        b"{\"x\":\"123456789\"}",
        Encoding::OtlpJson,
        &tenant(),
        &ORIGIN,
        &small,
        now(),
    )
    .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::MessageTooLarge));
}

#[test]
fn an_empty_payload_is_zero_rows() {
    for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
        let traces = decode_traces(&[], encoding, &tenant(), &limits(), now()).unwrap();
        assert_eq!(traces, Decoded::default());
        let logs = decode_logs(&[], encoding, &tenant(), &ORIGIN, &limits(), now()).unwrap();
        assert_eq!(logs, Decoded::default());
    }
}

#[test]
fn the_tenant_is_copied_into_every_row() {
    let mut spans: Vec<Span> = (1..=5).map(span).collect();
    spans[2].events = vec![span::Event::default(); 3];
    let decoded = decode(&request(spans)).unwrap();
    assert_eq!((decoded.spans.len(), decoded.events.len()), (5, 3));
    assert!(decoded.spans.iter().all(|s| &*s.tenant_id == "acme"));
    assert!(decoded.events.iter().all(|e| &*e.tenant_id == "acme"));
    let logs = decode_logs(
        &logs_request(vec![record(); 4]).encode_to_vec(),
        Encoding::OtlpProto,
        &tenant(),
        &ORIGIN,
        &limits(),
        now(),
    )
    .unwrap();
    assert_eq!(logs.logs.len(), 4);
    assert!(logs.logs.iter().all(|l| &*l.tenant_id == "acme"));
}
