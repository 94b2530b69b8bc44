//! OTLP logs export requests for tests: `count` records, their body naming
//! their position, at `time_unix_nano`, in the span context `context` if any.

#![allow(dead_code)]

use prost::Message as _;
use spansink::otlp::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
use spansink::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use spansink::otlp::resource::v1::Resource;
use spansink::otlp::ExportLogsServiceRequest;

fn string(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(Value::StringValue(v.into())),
    })
}

pub fn request(
    count: usize,
    time_unix_nano: u64,
    context: Option<([u8; 16], [u8; 8])>,
) -> ExportLogsServiceRequest {
    let records = (0..count)
        .map(|i| LogRecord {
            time_unix_nano,
            observed_time_unix_nano: time_unix_nano + 1,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: string(&format!("line {i}")),
            attributes: vec![KeyValue {
                key: "i".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(i as i64)),
                }),
            }],
            trace_id: context.map(|(t, _)| t.to_vec()).unwrap_or_default(),
            span_id: context.map(|(_, s)| s.to_vec()).unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: string("checkout"),
                }],
                dropped_attributes_count: 0,
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "app".into(),
                    ..Default::default()
                }),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

pub fn payload(count: usize, time_unix_nano: u64, context: Option<([u8; 16], [u8; 8])>) -> Vec<u8> {
    request(count, time_unix_nano, context).encode_to_vec()
}
