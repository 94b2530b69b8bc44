//! OTLP proto/JSON → domain rows.
//!
//! One Kafka message is decoded in three steps, each its own file:
//! parse the payload into the prost types (`proto`, or `json` which maps
//! OTLP/JSON onto the same types), then validate and turn every span or log
//! record into a row (`rows`, `logs`, with the checks in `validate`), writing
//! attribute values as JSON text on the way (`anyvalue`).
//!
//! A message is stored whole or not at all: the first span that cannot be
//! stored makes the whole message poison, with a [`Reason`] and a detail that
//! names the span, the field, the value and the limit.
//!
//! Nesting is bounded twice. The parsers stop first: prost at 100 nested
//! messages, serde_json at 128 nested arrays and objects, which caps an
//! attribute value at about 47 levels in protobuf and 39 in JSON whatever
//! `--max-value-depth` allows. The JSON writer then refuses anything deeper
//! than `--max-value-depth`, checking before it descends.

mod anyvalue;
mod json;
mod logs;
pub mod prescan;
mod proto;
mod rows;
mod validate;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Reason, Result};
use crate::model::{DecodedLogs, DecodedTraces};

pub use prescan::{Counts, ItemLimits};

pub use json::{parse_logs_request_json, parse_request_json};
pub use proto::{parse_logs_request_proto, parse_request_proto};

/// How a topic's producers encode their messages.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::EnumString,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum Encoding {
    OtlpProto,
    OtlpJson,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Limits against input that could exhaust the process, and the acceptance window.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_value_depth: usize,
    pub max_attributes: usize,
    /// What one message may decode into.
    pub items: ItemLimits,
    pub accept_past: Duration,
    pub accept_future: Duration,
}

/// Decodes one trace export message into span and event rows for `tenant`.
///
/// `now` anchors the acceptance window for span start times.
pub fn decode_traces(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    limits: &Limits,
    now: SystemTime,
) -> Result<DecodedTraces> {
    scan_traces(payload, encoding, limits)?;
    decode_scanned_traces(payload, encoding, tenant, limits, now)
}

/// Checks a trace message's size and counts ([`prescan`]) without decoding
/// it; what it would decode into.
pub fn scan_traces(payload: &[u8], encoding: Encoding, limits: &Limits) -> Result<Counts> {
    check_size(payload, limits)?;
    prescan::scan_traces(payload, encoding, &limits.items)
}

/// [`decode_traces`] of a message that [`scan_traces`] already accepted.
pub fn decode_scanned_traces(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    limits: &Limits,
    now: SystemTime,
) -> Result<DecodedTraces> {
    let request = match encoding {
        Encoding::OtlpProto => parse_request_proto(payload)?,
        Encoding::OtlpJson => parse_request_json(payload)?,
    };
    rows::span_rows(request, tenant, limits, now)
}

/// Decodes one logs export message into log rows for `tenant`.
///
/// `now` anchors the acceptance window for record times.
pub fn decode_logs(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    limits: &Limits,
    now: SystemTime,
) -> Result<DecodedLogs> {
    check_size(payload, limits)?;
    let request = match encoding {
        Encoding::OtlpProto => parse_logs_request_proto(payload)?,
        Encoding::OtlpJson => parse_logs_request_json(payload)?,
    };
    logs::log_rows(request, tenant, limits, now)
}

/// Checked before parsing, so that an oversized message costs nothing more.
fn check_size(payload: &[u8], limits: &Limits) -> Result<()> {
    if payload.len() > limits.max_message_bytes {
        return Err(Error::input(
            Reason::MessageTooLarge,
            format!(
                "message is {} bytes, more than --max-message-bytes {}",
                payload.len(),
                limits.max_message_bytes
            ),
        ));
    }
    Ok(())
}

/// Prefixes the detail of an input error with where it happened; built only
/// on the error path.
fn in_context(err: Error, context: impl FnOnce() -> String) -> Error {
    match err {
        Error::Input { reason, detail } => {
            // The context may quote the input (an attribute's key): capped again.
            Error::input(reason, format!("{}: {detail}", context()))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
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

    fn decode(request: &ExportTraceServiceRequest) -> Result<DecodedTraces> {
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
            assert_eq!(traces, DecodedTraces::default());
            let logs = decode_logs(&[], encoding, &tenant(), &limits(), now()).unwrap();
            assert_eq!(logs, DecodedLogs::default());
        }
    }

    #[test]
    fn span_fields_become_columns() {
        let mut root = span(1);
        root.trace_state = "vendor=1".into();
        root.flags = 257;
        root.kind = 2;
        root.dropped_attributes_count = 3;
        root.dropped_events_count = 4;
        root.dropped_links_count = 5;
        root.status = Some(Status {
            message: "boom".into(),
            code: 2,
        });
        root.attributes = vec![
            kv("n", Value::IntValue(7)),
            kv("ok", Value::BoolValue(true)),
        ];
        root.events = vec![
            span::Event {
                time_unix_nano: NOW_NS + 10,
                name: "first".into(),
                attributes: vec![kv("i", Value::IntValue(0))],
                dropped_attributes_count: 1,
            },
            span::Event {
                time_unix_nano: NOW_NS + 20,
                name: "second".into(),
                ..Default::default()
            },
        ];
        root.links = vec![span::Link {
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            trace_state: "t=\"q\"".into(),
            attributes: vec![kv("l", Value::DoubleValue(0.5))],
            dropped_attributes_count: 2,
            flags: 1,
        }];
        let mut child = span(2);
        child.parent_span_id = vec![1; 8];

        let decoded = decode(&request(vec![root, child])).unwrap();
        assert_eq!(decoded.spans.len(), 2);
        let row = &decoded.spans[0];
        assert_eq!(&*row.tenant_id, "acme");
        assert_eq!(row.trace_id, TRACE);
        assert_eq!(row.span_id, [1; 8]);
        assert!(row.is_root());
        assert_eq!(row.trace_state, "vendor=1");
        assert_eq!((row.flags, row.kind), (257, 2));
        assert_eq!(row.name, "op1");
        assert_eq!(row.start_unix_nano, NOW_NS as i64);
        assert_eq!(row.duration_ns(), 1_000);
        assert_eq!((row.status_code, row.status_message.as_str()), (2, "boom"));
        assert!(row.is_error());
        assert_eq!(row.service_name.as_deref(), Some("checkout"));
        assert_eq!(
            &*row.resource_attributes,
            r#"{"service.name":"checkout","host.name":"h1"}"#
        );
        assert_eq!((&*row.scope_name, &*row.scope_version), ("lib", "1.2"));
        assert_eq!(row.attributes, r#"{"n":7,"ok":true}"#);
        assert_eq!(
            (
                row.dropped_attributes_count,
                row.dropped_events_count,
                row.dropped_links_count
            ),
            (3, 4, 5)
        );
        assert_eq!(
            row.links,
            format!(
                r#"[{{"trace_id":"{}","span_id":"{}","trace_state":"t=\"q\"","flags":1,"attributes":{{"l":0.5}},"dropped_attributes_count":2}}]"#,
                "ab".repeat(16),
                "cd".repeat(8)
            )
        );
        assert_eq!((row.link_count, row.event_count), (1, 2));

        let child = &decoded.spans[1];
        assert_eq!(child.parent_span_id, Some([1; 8]));
        assert_eq!(
            (child.links.as_str(), child.link_count, child.event_count),
            ("[]", 0, 0)
        );
        assert_eq!(child.attributes, "{}");
        // Spans of one resource share its columns rather than copying them.
        assert!(Arc::ptr_eq(
            &row.resource_attributes,
            &child.resource_attributes
        ));
        assert!(Arc::ptr_eq(&row.scope_name, &child.scope_name));

        let events = &decoded.events;
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].event_index, events[1].event_index), (0, 1));
        assert_eq!(events[0].name, "first");
        assert_eq!(events[0].attributes, r#"{"i":0}"#);
        assert_eq!(events[0].dropped_attributes_count, 1);
        assert_eq!(events[1].time_unix_nano, (NOW_NS + 20) as i64);
        for e in events {
            assert_eq!((e.trace_id, e.span_id), (TRACE, [1; 8]));
            assert_eq!(e.span_start_unix_nano, NOW_NS as i64);
        }
        assert_eq!(decoded.sanitized, Sanitized::default());
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
            &limits(),
            now(),
        )
        .unwrap();
        assert_eq!(logs.logs.len(), 4);
        assert!(logs.logs.iter().all(|l| &*l.tenant_id == "acme"));
    }

    #[test]
    fn service_name_only_from_a_string() {
        let mut req = request(vec![span(1)]);
        let resource = req.resource_spans[0].resource.as_mut().unwrap();
        resource.attributes = vec![kv("service.name", Value::IntValue(1))];
        assert_eq!(decode(&req).unwrap().spans[0].service_name, None);
        req.resource_spans[0].resource = None;
        let row = &decode(&req).unwrap().spans[0];
        assert_eq!(
            (row.service_name.as_deref(), &*row.resource_attributes),
            (None, "{}")
        );
    }

    #[test]
    fn id_rules_apply_to_spans_and_links() {
        type Change = fn(&mut Span);
        let cases: [(&str, Change); 8] = [
            ("15-byte trace id", |s| s.trace_id.truncate(15)),
            ("zero trace id", |s| s.trace_id = vec![0; 16]),
            ("empty span id", |s| s.span_id.clear()),
            ("zero span id", |s| s.span_id = vec![0; 8]),
            ("9-byte span id", |s| s.span_id.push(1)),
            ("4-byte parent", |s| s.parent_span_id = vec![1; 4]),
            ("link with zero trace id", |s| {
                s.links = vec![span::Link {
                    trace_id: vec![0; 16],
                    span_id: vec![1; 8],
                    ..Default::default()
                }]
            }),
            ("link with short span id", |s| {
                s.links = vec![span::Link {
                    trace_id: vec![1; 16],
                    span_id: vec![1; 7],
                    ..Default::default()
                }]
            }),
        ];
        for (what, change) in cases {
            let mut s = span(1);
            change(&mut s);
            assert_eq!(
                reason_of(&request(vec![s])),
                Some(Reason::InvalidId),
                "{what}"
            );
        }
        let mut zero_parent = span(1);
        zero_parent.parent_span_id = vec![0; 8];
        assert_eq!(
            decode(&request(vec![zero_parent])).unwrap().spans[0].parent_span_id,
            None
        );
    }

    #[test]
    fn the_error_names_the_span() {
        let mut bad = span(3);
        bad.parent_span_id = vec![1; 3];
        let err = decode(&request(vec![span(1), bad]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("spans[1]"), "{err}");
        assert!(err.contains("span 0303030303030303"), "{err}");
        assert!(err.contains("parent_span_id is 3 bytes"), "{err}");
    }

    #[test]
    fn start_time_window_edges() {
        let at = |start: u64| {
            let mut s = span(1);
            s.start_time_unix_nano = start;
            s.end_time_unix_nano = start;
            decode(&request(vec![s]))
        };
        assert!(at(NOW_NS - 2 * HOUR_NS).is_ok());
        assert!(at(NOW_NS + HOUR_NS).is_ok());
        for start in [NOW_NS - 2 * HOUR_NS - 1, NOW_NS + HOUR_NS + 1, 0, u64::MAX] {
            let err = at(start).unwrap_err();
            assert_eq!(err.reason(), Some(Reason::TimestampOutOfWindow), "{start}");
            assert!(err.to_string().contains("span 0101010101010101"), "{err}");
        }
        let err = at(NOW_NS + HOUR_NS + 1).unwrap_err().to_string();
        assert!(err.contains("2026-01-01T01:00:00.000000001Z"), "{err}");
    }

    #[test]
    fn end_and_event_times_must_fit_a_bigint() {
        let mut s = span(1);
        s.end_time_unix_nano = u64::MAX;
        assert_eq!(
            reason_of(&request(vec![s])),
            Some(Reason::TimestampOutOfWindow)
        );
        let mut s = span(1);
        s.events = vec![span::Event {
            time_unix_nano: u64::MAX,
            ..Default::default()
        }];
        assert_eq!(
            reason_of(&request(vec![s])),
            Some(Reason::TimestampOutOfWindow)
        );
        // An end before the start is stored as given.
        let mut s = span(1);
        s.end_time_unix_nano = 0;
        assert_eq!(decode(&request(vec![s])).unwrap().spans[0].end_unix_nano, 0);
    }

    #[test]
    fn nul_is_replaced_in_every_stored_string_and_counted() {
        let mut s = span(1);
        s.name = "a\0b".into();
        s.trace_state = "\0".into();
        s.status = Some(Status {
            message: "m\0".into(),
            code: 0,
        });
        s.attributes = vec![kv("k\0", Value::StringValue("v\0".into()))];
        s.events = vec![span::Event {
            name: "e\0".into(),
            ..Default::default()
        }];
        let mut req = request(vec![s]);
        let rs = &mut req.resource_spans[0];
        rs.resource.as_mut().unwrap().attributes =
            vec![kv("service.name", Value::StringValue("svc\0".into()))];
        let scope = rs.scope_spans[0].scope.as_mut().unwrap();
        scope.name = "lib\0".into();
        scope.version = "\0".into();

        let decoded = decode(&req).unwrap();
        let row = &decoded.spans[0];
        assert_eq!(row.name, "a\u{FFFD}b");
        assert_eq!(row.trace_state, "\u{FFFD}");
        assert_eq!(row.status_message, "m\u{FFFD}");
        assert_eq!(row.attributes, "{\"k\u{FFFD}\":\"v\u{FFFD}\"}");
        assert_eq!(decoded.events[0].name, "e\u{FFFD}");
        assert_eq!(row.service_name.as_deref(), Some("svc\u{FFFD}"));
        assert_eq!(
            &*row.resource_attributes,
            "{\"service.name\":\"svc\u{FFFD}\"}"
        );
        assert_eq!(
            (&*row.scope_name, &*row.scope_version),
            ("lib\u{FFFD}", "\u{FFFD}")
        );
        // name, trace_state, status, key, value, event name, service.name in
        // the resource JSON and in its column, scope name and version.
        assert_eq!(decoded.sanitized.nul_replaced, 10);
    }

    #[test]
    fn attribute_limits_apply_to_every_set() {
        let tight = Limits {
            max_attributes: 2,
            ..limits()
        };
        let three = vec![
            kv("a", Value::IntValue(1)),
            kv("b", Value::IntValue(1)),
            kv("c", Value::IntValue(1)),
        ];
        let mut on_span = span(1);
        on_span.attributes = three.clone();
        let mut on_event = span(1);
        on_event.events = vec![span::Event {
            attributes: three.clone(),
            ..Default::default()
        }];
        let mut on_link = span(1);
        on_link.links = vec![span::Link {
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            attributes: three.clone(),
            ..Default::default()
        }];
        let mut on_resource = request(vec![span(1)]);
        on_resource.resource_spans[0]
            .resource
            .as_mut()
            .unwrap()
            .attributes = three;
        for req in [
            request(vec![on_span]),
            request(vec![on_event]),
            request(vec![on_link]),
            on_resource,
        ] {
            let err = decode_traces(
                &req.encode_to_vec(),
                Encoding::OtlpProto,
                &tenant(),
                &tight,
                now(),
            )
            .unwrap_err();
            assert_eq!(err.reason(), Some(Reason::TooManyAttributes), "{err}");
        }
    }

    /// `levels` ArrayValues nested in one another inside the value of attribute "k"
    /// of one span, as protobuf bytes. Built by hand: encoding such a value
    /// with prost would itself recurse once per level.
    fn nested_arrays_proto(levels: usize) -> Vec<u8> {
        fn field(tag: u32, body: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(body.len() + 8);
            prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
            prost::encoding::encode_varint(body.len() as u64, &mut out);
            out.extend_from_slice(body);
            out
        }
        let mut value = vec![0x18, 0x01]; // AnyValue { int_value: 1 }
        for _ in 0..levels {
            value = field(5, &field(1, &value)); // AnyValue { array_value: { values: [value] } }
        }
        let key_value = [field(1, b"k"), field(2, &value)].concat();
        let mut span = span(1);
        span.attributes.clear();
        let span = [span.encode_to_vec(), field(9, &key_value)].concat();
        field(1, &field(2, &field(2, &span)))
    }

    /// The same in OTLP/JSON.
    fn nested_arrays_json(levels: usize) -> Vec<u8> {
        let mut doc = String::from(
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"11111111111111111111111111111111","spanId":"0101010101010101","startTimeUnixNano":"1767225600000000000","attributes":[{"key":"k","value":"#,
        );
        doc.push_str(&r#"{"arrayValue":{"values":["#.repeat(levels));
        doc.push_str(r#"{"intValue":"1"}"#);
        doc.push_str(&"]}}".repeat(levels));
        doc.push_str("}]}]}]}]}");
        doc.into_bytes()
    }

    /// Runs `f` on a thread with a small stack: a recursion that input can
    /// drive without bound would overflow it and abort the test run.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn decode_on_small_stack(payload: Vec<u8>, encoding: Encoding) -> Result<DecodedTraces> {
        on_small_stack(move || decode_traces(&payload, encoding, &tenant(), &limits(), now()))
    }

    #[test]
    fn deep_protobuf_nesting_is_an_error_not_a_stack_overflow() {
        let err =
            decode_on_small_stack(nested_arrays_proto(5000), Encoding::OtlpProto).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::BadProtobuf), "{err}");
        assert!(err.to_string().contains("recursion limit"), "{err}");
        // Within prost's limit but past --max-value-depth: refused by our own check.
        let err = decode_on_small_stack(nested_arrays_proto(40), Encoding::OtlpProto).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::ValueTooDeep), "{err}");
        let ok = decode_on_small_stack(nested_arrays_proto(32), Encoding::OtlpProto).unwrap();
        assert!(ok.spans[0].attributes.starts_with(r#"{"k":[[[["#));
    }

    #[test]
    fn deep_json_nesting_is_an_error_not_a_stack_overflow() {
        let err = decode_on_small_stack(nested_arrays_json(5000), Encoding::OtlpJson).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::BadJson), "{err}");
        assert!(err.to_string().contains("recursion limit"), "{err}");
        let bare = format!(
            r#"{{"resourceSpans":{}{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let err = decode_on_small_stack(bare.into_bytes(), Encoding::OtlpJson).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::BadJson), "{err}");
        // An unknown field is skipped by serde_json without recursing at all.
        let unknown = format!(r#"{{"x":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
        let skipped = decode_on_small_stack(unknown.into_bytes(), Encoding::OtlpJson).unwrap();
        assert!(skipped.spans.is_empty());
        let err = decode_on_small_stack(nested_arrays_json(35), Encoding::OtlpJson).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::ValueTooDeep), "{err}");
        let ok = decode_on_small_stack(nested_arrays_json(32), Encoding::OtlpJson).unwrap();
        assert_eq!(ok.spans.len(), 1);
    }

    #[test]
    fn proto_and_json_decode_to_the_same_rows() {
        let payload = nested_arrays_json(3);
        let from_json =
            decode_traces(&payload, Encoding::OtlpJson, &tenant(), &limits(), now()).unwrap();
        let from_proto = decode_traces(
            &nested_arrays_proto(3),
            Encoding::OtlpProto,
            &tenant(),
            &limits(),
            now(),
        )
        .unwrap();
        assert_eq!(from_json.spans[0].attributes, r#"{"k":[[[1]]]}"#);
        assert_eq!(
            from_json.spans[0].attributes,
            from_proto.spans[0].attributes
        );
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

    fn decode_logs_proto(records: Vec<LogRecord>) -> Result<DecodedLogs> {
        let payload = logs_request(records).encode_to_vec();
        decode_logs(&payload, Encoding::OtlpProto, &tenant(), &limits(), now())
    }

    #[test]
    fn log_records_become_rows() {
        let mut no_context = record();
        no_context.trace_id.clear();
        no_context.span_id = vec![0; 8];
        no_context.time_unix_nano = 0;
        no_context.body = None;
        let decoded = decode_logs_proto(vec![record(), no_context]).unwrap();
        let row = &decoded.logs[0];
        assert_eq!(row.time_unix_nano, NOW_NS as i64);
        assert_eq!(row.observed_time_unix_nano, NOW_NS as i64 + 5);
        assert_eq!(
            (row.severity_number, row.severity_text.as_str()),
            (9, "INFO")
        );
        assert_eq!(row.body, r#""hello""#);
        assert_eq!(row.attributes, r#"{"a":1}"#);
        assert_eq!(&*row.resource_attributes, r#"{"service.name":"svc"}"#);
        assert_eq!(row.service_name.as_deref(), Some("svc"));
        assert_eq!((&*row.scope_name, &*row.scope_version), ("s", "2"));
        assert_eq!((row.flags, row.dropped_attributes_count), (1, 2));
        assert_eq!((row.trace_id, row.span_id), (Some(TRACE), Some([1; 8])));
        assert_eq!(row.event_name, "ev");

        let bare = &decoded.logs[1];
        assert_eq!((bare.trace_id, bare.span_id), (None, None));
        // No event time: the observed time stands in for it.
        assert_eq!(bare.time_unix_nano, NOW_NS as i64 + 5);
        assert_eq!(bare.body, "null");
    }

    #[test]
    fn log_records_are_checked() {
        let mut late = record();
        late.time_unix_nano = NOW_NS + 2 * HOUR_NS;
        let err = decode_logs_proto(vec![late]).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::TimestampOutOfWindow));
        assert!(err.to_string().contains("log_records[0]"), "{err}");
        let mut short = record();
        short.trace_id.truncate(15);
        assert_eq!(
            decode_logs_proto(vec![short]).unwrap_err().reason(),
            Some(Reason::InvalidId)
        );
        let mut deep = record();
        let mut body = AnyValue {
            value: Some(Value::IntValue(1)),
        };
        for _ in 0..33 {
            body = AnyValue {
                value: Some(Value::ArrayValue(crate::otlp::common::v1::ArrayValue {
                    values: vec![body],
                })),
            };
        }
        deep.body = Some(body);
        let err = decode_logs_proto(vec![deep]).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::ValueTooDeep));
        assert!(err.to_string().contains("body"), "{err}");
        let mut nul = record();
        nul.body = Some(AnyValue {
            value: Some(Value::StringValue("a\0".into())),
        });
        nul.severity_text = "\0".into();
        let decoded = decode_logs_proto(vec![nul]).unwrap();
        assert_eq!(decoded.logs[0].body, "\"a\u{FFFD}\"");
        assert_eq!(decoded.sanitized.nul_replaced, 2);
    }
}
