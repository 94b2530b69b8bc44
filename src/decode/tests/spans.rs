//! Span and event rows: their columns, and the checks that make a message
//! poison.

use super::*;

/// A root span with every field set, two events and a link.
fn span_with_every_field() -> Span {
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
    root
}

#[test]
fn span_fields_become_columns() {
    let root = span_with_every_field();
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
