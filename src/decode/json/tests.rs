//! Whole OTLP/JSON documents: names in either case, every AnyValue kind,
//! and which faults are bad JSON and which are bad ids. A file of its own
//! for its size.

use std::fmt;

use super::*;
use crate::otlp::common::v1::any_value::Value;
use crate::otlp::trace::v1 as trace;

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
        assert_eq!(
            reason(r),
            Some(Reason::BadJson),
            "{}",
            String::from_utf8_lossy(doc)
        );
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
