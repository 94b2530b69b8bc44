//! OTLP/JSON encoding of trace requests, as the OTLP specification defines it:
//! the protobuf JSON mapping with lowerCamelCase names, enums as integers, 64-bit
//! integers as decimal strings and bytes as base64, except that trace and span
//! ids are hex. Fields at their default value are left out, as exporters do;
//! a set `AnyValue` is always written, even at its default, because its oneof
//! has presence.
//!
//! Written by hand rather than through a JSON tree: `AnyValue` nests without
//! limit, and both building and dropping a tree recurse. Values are walked with
//! an explicit stack instead.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::otlp::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::span::{Event, Link};
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use crate::otlp::ExportTraceServiceRequest;

/// Encodes `req` as OTLP/JSON.
pub fn encode_traces_json(req: &ExportTraceServiceRequest) -> String {
    let mut out = String::with_capacity(1024);
    let mut o = Obj::open(&mut out);
    o.list("resourceSpans", &req.resource_spans, resource_spans);
    o.close();
    out
}

fn resource_spans(out: &mut String, rs: &ResourceSpans) {
    let mut o = Obj::open(out);
    if let Some(r) = &rs.resource {
        resource(o.key("resource"), r);
    }
    o.list("scopeSpans", &rs.scope_spans, scope_spans);
    o.str("schemaUrl", &rs.schema_url);
    o.close();
}

fn resource(out: &mut String, r: &Resource) {
    let mut o = Obj::open(out);
    o.attributes("attributes", &r.attributes);
    o.u32("droppedAttributesCount", r.dropped_attributes_count);
    o.close();
}

fn scope_spans(out: &mut String, ss: &ScopeSpans) {
    let mut o = Obj::open(out);
    if let Some(scope) = &ss.scope {
        instrumentation_scope(o.key("scope"), scope);
    }
    o.list("spans", &ss.spans, span);
    o.str("schemaUrl", &ss.schema_url);
    o.close();
}

fn instrumentation_scope(out: &mut String, s: &InstrumentationScope) {
    let mut o = Obj::open(out);
    o.str("name", &s.name);
    o.str("version", &s.version);
    o.attributes("attributes", &s.attributes);
    o.u32("droppedAttributesCount", s.dropped_attributes_count);
    o.close();
}

fn span(out: &mut String, s: &Span) {
    let mut o = Obj::open(out);
    o.hex("traceId", &s.trace_id);
    o.hex("spanId", &s.span_id);
    o.str("traceState", &s.trace_state);
    o.hex("parentSpanId", &s.parent_span_id);
    o.u32("flags", s.flags);
    o.str("name", &s.name);
    o.i32("kind", s.kind);
    o.u64("startTimeUnixNano", s.start_time_unix_nano);
    o.u64("endTimeUnixNano", s.end_time_unix_nano);
    o.attributes("attributes", &s.attributes);
    o.u32("droppedAttributesCount", s.dropped_attributes_count);
    o.list("events", &s.events, event);
    o.u32("droppedEventsCount", s.dropped_events_count);
    o.list("links", &s.links, link);
    o.u32("droppedLinksCount", s.dropped_links_count);
    if let Some(st) = &s.status {
        status(o.key("status"), st);
    }
    o.close();
}

fn event(out: &mut String, e: &Event) {
    let mut o = Obj::open(out);
    o.u64("timeUnixNano", e.time_unix_nano);
    o.str("name", &e.name);
    o.attributes("attributes", &e.attributes);
    o.u32("droppedAttributesCount", e.dropped_attributes_count);
    o.close();
}

fn link(out: &mut String, l: &Link) {
    let mut o = Obj::open(out);
    o.hex("traceId", &l.trace_id);
    o.hex("spanId", &l.span_id);
    o.str("traceState", &l.trace_state);
    o.attributes("attributes", &l.attributes);
    o.u32("droppedAttributesCount", l.dropped_attributes_count);
    o.u32("flags", l.flags);
    o.close();
}

fn status(out: &mut String, s: &Status) {
    let mut o = Obj::open(out);
    o.str("message", &s.message);
    o.i32("code", s.code);
    o.close();
}

/// Writes one JSON object, leaving out fields at their default value.
struct Obj<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        Obj { out, empty: true }
    }

    /// Starts a field and returns the buffer for its value.
    fn key(&mut self, name: &str) -> &mut String {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        push_str(self.out, name);
        self.out.push(':');
        self.out
    }

    fn str(&mut self, name: &str, v: &str) {
        if !v.is_empty() {
            push_str(self.key(name), v);
        }
    }

    fn hex(&mut self, name: &str, v: &[u8]) {
        if !v.is_empty() {
            let out = self.key(name);
            out.push('"');
            out.push_str(&hex::encode(v));
            out.push('"');
        }
    }

    fn u32(&mut self, name: &str, v: u32) {
        if v != 0 {
            let _ = write!(self.key(name), "{v}");
        }
    }

    fn i32(&mut self, name: &str, v: i32) {
        if v != 0 {
            let _ = write!(self.key(name), "{v}");
        }
    }

    /// 64-bit integers are strings, since JSON numbers lose precision above 2^53.
    fn u64(&mut self, name: &str, v: u64) {
        if v != 0 {
            let _ = write!(self.key(name), "\"{v}\"");
        }
    }

    fn list<T>(&mut self, name: &str, items: &[T], each: fn(&mut String, &T)) {
        if items.is_empty() {
            return;
        }
        let out = self.key(name);
        out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            each(out, item);
        }
        out.push(']');
    }

    fn attributes(&mut self, name: &str, kvs: &[KeyValue]) {
        if !kvs.is_empty() {
            key_values(self.key(name), kvs);
        }
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// One step of the walk over nested attribute values.
enum Step<'a> {
    Value(&'a AnyValue),
    KeyValue(&'a KeyValue),
    Text(&'static str),
}

/// Writes `[KeyValue, ...]`, walking nested arrays and maps with an explicit stack.
fn key_values(out: &mut String, kvs: &[KeyValue]) {
    let mut stack: Vec<Step<'_>> = Vec::new();
    push_list(&mut stack, "]", kvs.iter().rev().map(Step::KeyValue));
    out.push('[');
    while let Some(step) = stack.pop() {
        match step {
            Step::Text(t) => out.push_str(t),
            Step::KeyValue(kv) => {
                out.push_str("{\"key\":");
                push_str(out, &kv.key);
                match &kv.value {
                    Some(v) => {
                        out.push_str(",\"value\":");
                        stack.push(Step::Text("}"));
                        stack.push(Step::Value(v));
                    }
                    None => out.push('}'),
                }
            }
            Step::Value(v) => any_value(out, v, &mut stack),
        }
    }
}

/// Writes a scalar at once; for an array or map writes its opening and leaves
/// its entries and closing on the stack.
fn any_value<'a>(out: &mut String, v: &'a AnyValue, stack: &mut Vec<Step<'a>>) {
    let Some(value) = &v.value else {
        out.push_str("{}");
        return;
    };
    match value {
        Value::StringValue(s) => {
            out.push_str("{\"stringValue\":");
            push_str(out, s);
            out.push('}');
        }
        Value::BoolValue(b) => {
            let _ = write!(out, "{{\"boolValue\":{b}}}");
        }
        Value::IntValue(i) => {
            let _ = write!(out, "{{\"intValue\":\"{i}\"}}");
        }
        Value::DoubleValue(d) => {
            out.push_str("{\"doubleValue\":");
            push_double(out, *d);
            out.push('}');
        }
        Value::BytesValue(b) => {
            let _ = write!(
                out,
                "{{\"bytesValue\":\"{}\"}}",
                base64::engine::general_purpose::STANDARD.encode(b)
            );
        }
        Value::ArrayValue(a) if a.values.is_empty() => out.push_str("{\"arrayValue\":{}}"),
        Value::ArrayValue(a) => {
            out.push_str("{\"arrayValue\":{\"values\":[");
            push_list(stack, "]}}", a.values.iter().rev().map(Step::Value));
        }
        Value::KvlistValue(m) if m.values.is_empty() => out.push_str("{\"kvlistValue\":{}}"),
        Value::KvlistValue(m) => {
            out.push_str("{\"kvlistValue\":{\"values\":[");
            push_list(stack, "]}}", m.values.iter().rev().map(Step::KeyValue));
        }
    }
}

/// Pushes the closing text, then the items (given last first) separated by commas,
/// so that they pop in order.
fn push_list<'a>(
    stack: &mut Vec<Step<'a>>,
    close: &'static str,
    items_reversed: impl Iterator<Item = Step<'a>>,
) {
    stack.push(Step::Text(close));
    for (i, item) in items_reversed.enumerate() {
        if i > 0 {
            stack.push(Step::Text(","));
        }
        stack.push(item);
    }
}

/// The protobuf JSON mapping writes non-finite doubles as strings.
fn push_double(out: &mut String, d: f64) {
    if d.is_nan() {
        out.push_str("\"NaN\"");
    } else if d.is_infinite() {
        out.push_str(if d > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        });
    } else {
        // Debug prints the shortest text that reads back to the same double,
        // always as a valid JSON number (`1.0`, `1e300`, `-0.0`).
        let _ = write!(out, "{d:?}");
    }
}

/// Writes `s` as a JSON string literal.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::common::v1::{ArrayValue, KeyValueList};

    fn kv(key: &str, value: Option<Value>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value }),
        }
    }

    fn small_request() -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![0x5b; 16],
            span_id: vec![0, 1, 2, 3, 4, 5, 6, 0xff],
            parent_span_id: vec![],
            flags: 0x101,
            name: "GET /\"q\"\n".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_123_456_789,
            end_time_unix_nano: 1_700_000_000_223_456_789,
            attributes: vec![
                kv("s", Some(Value::StringValue(String::new()))),
                kv("i", Some(Value::IntValue(-9_007_199_254_740_993))),
                kv("d", Some(Value::DoubleValue(0.5))),
                kv("nan", Some(Value::DoubleValue(f64::NAN))),
                kv("b", Some(Value::BoolValue(false))),
                kv("raw", Some(Value::BytesValue(vec![0xde, 0xad, 0xbe, 0xef]))),
                kv(
                    "arr",
                    Some(Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(Value::IntValue(1)),
                            },
                            AnyValue {
                                value: Some(Value::ArrayValue(ArrayValue { values: vec![] })),
                            },
                        ],
                    })),
                ),
                kv(
                    "map",
                    Some(Value::KvlistValue(KeyValueList {
                        values: vec![
                            kv("k", Some(Value::StringValue("\u{1}".into()))),
                            kv("unset", None),
                        ],
                    })),
                ),
                KeyValue {
                    key: "novalue".into(),
                    value: None,
                },
            ],
            events: vec![Event {
                time_unix_nano: 7,
                name: "exception".into(),
                attributes: vec![],
                dropped_attributes_count: 0,
            }],
            status: Some(Status {
                message: String::new(),
                code: 2,
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Some(Value::StringValue("svc".into())))],
                    dropped_attributes_count: 0,
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope::default()),
                    spans: vec![span],
                    schema_url: String::new(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
        }
    }

    #[test]
    fn encodes_a_small_request_exactly() {
        let want = concat!(
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},"#,
            r#""scopeSpans":[{"scope":{},"spans":[{"traceId":"5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b","spanId":"00010203040506ff","#,
            r#""flags":257,"name":"GET /\"q\"\n","kind":2,"startTimeUnixNano":"1700000000123456789","endTimeUnixNano":"1700000000223456789","#,
            r#""attributes":[{"key":"s","value":{"stringValue":""}},{"key":"i","value":{"intValue":"-9007199254740993"}},"#,
            r#"{"key":"d","value":{"doubleValue":0.5}},{"key":"nan","value":{"doubleValue":"NaN"}},"#,
            r#"{"key":"b","value":{"boolValue":false}},{"key":"raw","value":{"bytesValue":"3q2+7w=="}},"#,
            r#"{"key":"arr","value":{"arrayValue":{"values":[{"intValue":"1"},{"arrayValue":{}}]}}},"#,
            r#"{"key":"map","value":{"kvlistValue":{"values":[{"key":"k","value":{"stringValue":"\u0001"}},{"key":"unset","value":{}}]}}},"#,
            r#"{"key":"novalue"}],"#,
            r#""events":[{"timeUnixNano":"7","name":"exception"}],"status":{"code":2}}]}],"#,
            r#""schemaUrl":"https://opentelemetry.io/schemas/1.30.0"}]}"#,
        );
        assert_eq!(encode_traces_json(&small_request()), want);
    }

    #[test]
    fn output_is_valid_json_with_the_same_content() {
        let json: serde_json::Value =
            serde_json::from_str(&encode_traces_json(&small_request())).unwrap();
        let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["name"], "GET /\"q\"\n");
        assert_eq!(
            span["attributes"][7]["value"]["kvlistValue"]["values"][0]["value"]["stringValue"],
            "\u{1}"
        );
        assert!(span.get("parentSpanId").is_none());
        assert!(span.get("droppedAttributesCount").is_none());
    }

    #[test]
    fn an_empty_request_is_an_empty_object() {
        assert_eq!(
            encode_traces_json(&ExportTraceServiceRequest::default()),
            "{}"
        );
    }

    #[test]
    fn non_finite_and_extreme_doubles() {
        let mut out = String::new();
        for d in [f64::INFINITY, f64::NEG_INFINITY, 1e300, -0.0, 1.0] {
            push_double(&mut out, d);
            out.push(' ');
        }
        assert_eq!(out, "\"Infinity\" \"-Infinity\" 1e300 -0.0 1.0 ");
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        // Deeper than any recursive walk on a test thread's stack would survive.
        let depth = 200_000;
        let mut v = AnyValue {
            value: Some(Value::IntValue(1)),
        };
        for _ in 0..depth {
            v = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let mut kvs = vec![KeyValue {
            key: "deep".into(),
            value: Some(v),
        }];
        let mut out = String::new();
        key_values(&mut out, &kvs);
        assert_eq!(out.matches("arrayValue").count(), depth);
        assert!(out.ends_with(&format!("{{\"intValue\":\"1\"}}{}}}]", "]}}".repeat(depth))));
        // Dropping the value would recurse as deep, so it is taken apart level by level.
        let mut next = kvs.pop().and_then(|kv| kv.value);
        while let Some(AnyValue {
            value: Some(Value::ArrayValue(mut a)),
        }) = next
        {
            next = a.values.pop();
        }
    }
}
