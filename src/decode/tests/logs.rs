//! Log rows: their columns, and the checks that make a message poison.

use super::*;

fn decode_logs_proto(records: Vec<LogRecord>) -> Result<Decoded> {
    let payload = logs_request(records).encode_to_vec();
    decode_logs(
        &payload,
        Encoding::OtlpProto,
        &tenant(),
        &ORIGIN,
        &limits(),
        now(),
    )
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

#[test]
fn record_keys_follow_where_the_record_was_read() {
    let twice = decode_logs_proto(vec![record(), record()]).unwrap();
    let again = decode_logs_proto(vec![record(), record()]).unwrap();
    let ids = |d: &Decoded| d.logs.iter().map(|l| l.record_id).collect::<Vec<_>>();
    // The same line twice in one message is two lines; the same message
    // decoded again keys them as before.
    assert_ne!(twice.logs[0].record_id, twice.logs[1].record_id);
    assert_eq!(ids(&twice), ids(&again));
    let id = |origin: &crate::model::Origin<'_>, tenant: &str, index| {
        crate::decode::logs::record_id(tenant, origin, index)
    };
    let base = id(&ORIGIN, "acme", 0);
    assert_eq!(base, twice.logs[0].record_id);
    let moved = [
        crate::model::Origin {
            offset: 43,
            ..ORIGIN
        },
        crate::model::Origin {
            partition: 4,
            ..ORIGIN
        },
        crate::model::Origin {
            topic: "otlp_logs2",
            ..ORIGIN
        },
        // A recreated topic restarts its offsets, not its clock.
        crate::model::Origin {
            timestamp_ms: Some(1_767_225_600_001),
            ..ORIGIN
        },
        crate::model::Origin {
            timestamp_ms: None,
            ..ORIGIN
        },
    ];
    for origin in &moved {
        assert_ne!(id(origin, "acme", 0), base, "{origin:?}");
    }
    assert_ne!(id(&ORIGIN, "acmf", 0), base);
    assert_ne!(id(&ORIGIN, "acme", 1), base);
    // Fields cannot run into each other: tenant "ab" + topic "c" is not
    // tenant "a" + topic "bc".
    let split = |tenant: &str, topic: &'static str| {
        id(&crate::model::Origin { topic, ..ORIGIN }, tenant, 0)
    };
    assert_ne!(split("ab", "c"), split("a", "bc"));
}

#[test]
fn log_records_are_counted_before_decoding() {
    let payload = logs_request(vec![record(); 5]).encode_to_vec();
    let limits = Limits {
        items: crate::decode::ItemLimits {
            max_logs: 4,
            ..crate::decode::ItemLimits::UNLIMITED
        },
        ..limits()
    };
    let err = decode_logs(
        &payload,
        Encoding::OtlpProto,
        &tenant(),
        &ORIGIN,
        &limits,
        now(),
    )
    .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::TooManyLogRecords), "{err}");
    let counts = crate::decode::scan(
        &payload,
        crate::decode::Source::logs(Encoding::OtlpProto),
        &super::limits(),
    )
    .unwrap();
    assert_eq!(counts.logs, 5);
    // Each record: its body and one attribute.
    assert!(counts.values >= 10, "{counts:?}");
}
