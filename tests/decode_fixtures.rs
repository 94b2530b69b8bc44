//! Decodes every file in `tests/fixtures/otlp/` and checks it against
//! `expected.json`, which was written alongside the payloads by the
//! OpenTelemetry project's own encoder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use spansink::config::Encoding;
use spansink::decode::{decode_logs, decode_traces, Limits};
use spansink::error::{Reason, Result};
use spansink::model::{Decoded, SpanEventRow, SpanRow};

/// 2026-01-01T00:00:00Z: the fixtures' spans start within the hour after.
const NOW_SECS: u64 = 1_767_225_600;

/// What each poison fixture must be refused for.
const POISON: [(&str, Reason); 4] = [
    ("poison_garbage.bin", Reason::BadProtobuf),
    ("poison_truncated.pb", Reason::BadProtobuf),
    ("poison_invalid_utf8_name.pb", Reason::InvalidUtf8),
    ("poison_trace_id_15_bytes.pb", Reason::InvalidId),
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/otlp")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap()
}

fn limits() -> Limits {
    Limits {
        max_message_bytes: 16 << 20,
        max_value_depth: 32,
        max_attributes: 1024,
        items: spansink::decode::ItemLimits::UNLIMITED,
        accept_past: Duration::from_secs(30 * 86_400),
        accept_future: Duration::from_secs(30 * 86_400),
    }
}

fn encoding(name: &str) -> Encoding {
    if name.ends_with(".json") {
        Encoding::OtlpJson
    } else {
        Encoding::OtlpProto
    }
}

fn traces(name: &str) -> Result<Decoded> {
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    decode_traces(
        &read(name),
        encoding(name),
        &Arc::from("fixtures"),
        &limits(),
        now,
    )
}

fn logs(name: &str) -> Result<Decoded> {
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let origin = spansink::model::Origin {
        topic: "otlp_logs",
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };
    decode_logs(
        &read(name),
        encoding(name),
        &Arc::from("fixtures"),
        &origin,
        &limits(),
        now,
    )
}

/// The decodable fixtures, with their descriptions.
fn files() -> Map<String, Value> {
    expected()["files"].as_object().unwrap().clone()
}

#[test]
fn every_fixture_is_described_and_every_description_has_a_fixture() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "expected.json")
        .collect();
    let expected = expected();
    let described: BTreeSet<String> = files()
        .keys()
        .chain(expected["poison"].as_object().unwrap().keys())
        .cloned()
        .collect();
    assert_eq!(on_disk, described);
    let poison_expected: BTreeSet<String> = expected["poison"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let poison_known: BTreeSet<String> = POISON.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        poison_expected, poison_known,
        "a poison fixture without a Reason here"
    );
}

#[test]
fn every_fixture_decodes_as_described() {
    for (name, want) in files() {
        let want = want.as_object().unwrap();
        // Every key must be checked below: a new kind of expectation must fail
        // this test until it is.
        for key in want.keys() {
            assert!(
                [
                    "kind",
                    "note",
                    "spans",
                    "span_count",
                    "distinct_traces",
                    "log_record_count",
                    "with_trace_context",
                ]
                .contains(&key.as_str()),
                "{name}: unchecked expectation {key:?}"
            );
        }
        match want["kind"].as_str().unwrap() {
            "traces" => check_traces(&name, want),
            "logs" => check_logs(&name, want),
            other => panic!("{name}: unknown kind {other:?}"),
        }
    }
}

fn check_traces(name: &str, want: &Map<String, Value>) {
    let decoded = traces(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(decoded.spans.iter().all(|s| &*s.tenant_id == "fixtures"));
    if let Some(n) = want.get("span_count") {
        assert_eq!(decoded.spans.len() as u64, n.as_u64().unwrap(), "{name}");
    }
    if let Some(n) = want.get("distinct_traces") {
        let traces: BTreeSet<_> = decoded.spans.iter().map(|s| s.trace_id).collect();
        assert_eq!(traces.len() as u64, n.as_u64().unwrap(), "{name}");
    }
    if let Some(spans) = want.get("spans") {
        let spans = spans.as_array().unwrap();
        assert_eq!(decoded.spans.len(), spans.len(), "{name}");
        for (i, (row, want)) in decoded.spans.iter().zip(spans).enumerate() {
            assert_eq!(
                &span_view(row, &decoded.events, want),
                want,
                "{name}: span {i}"
            );
        }
    }
}

/// A decoded span in the shape of its `expected.json` entry.
fn span_view(row: &SpanRow, events: &[SpanEventRow], want: &Value) -> Value {
    let attributes: Map<String, Value> = serde_json::from_str(&row.attributes).unwrap();
    let sample: Map<String, Value> = want["attributes_sample"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (k.clone(), attributes.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    let own: Vec<&SpanEventRow> = events
        .iter()
        .filter(|e| e.trace_id == row.trace_id && e.span_id == row.span_id)
        .collect();
    for (i, e) in own.iter().enumerate() {
        assert_eq!(e.event_index as usize, i);
        assert_eq!(e.span_start_unix_nano, row.start_unix_nano);
    }
    json!({
        "trace_id": hex::encode(row.trace_id),
        "span_id": hex::encode(row.span_id),
        "parent_span_id": row.parent_span_id.map(hex::encode),
        "trace_state": row.trace_state,
        "flags": row.flags,
        "name": row.name,
        "kind": row.kind,
        "start_time_unix_nano": row.start_unix_nano,
        "end_time_unix_nano": row.end_unix_nano,
        "duration_ns": row.duration_ns(),
        "status_code": row.status_code,
        "status_message": row.status_message,
        "service_name": row.service_name.as_deref(),
        "scope_name": &*row.scope_name,
        "attribute_count": attributes.len(),
        "attributes_sample": sample,
        "event_count": row.event_count,
        "event_names": own.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        "link_count": row.link_count,
    })
}

fn check_logs(name: &str, want: &Map<String, Value>) {
    let decoded = logs(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(decoded.logs.iter().all(|l| &*l.tenant_id == "fixtures"));
    let count = want["log_record_count"].as_u64().unwrap();
    assert_eq!(decoded.logs.len() as u64, count, "{name}");
    let with_context = decoded.logs.iter().filter(|l| l.trace_id.is_some()).count();
    assert_eq!(
        with_context as u64,
        want["with_trace_context"].as_u64().unwrap(),
        "{name}"
    );
    for row in &decoded.logs {
        let _: Value = serde_json::from_str(&row.body).unwrap();
        let _: Map<String, Value> = serde_json::from_str(&row.attributes).unwrap();
    }
}

#[test]
fn proto_and_json_fixtures_decode_to_identical_rows() {
    let pb = traces("traces_basic.pb").unwrap();
    let json = traces("traces_basic.json").unwrap();
    assert!(!pb.spans.is_empty() && !pb.events.is_empty());
    assert_eq!(pb, json);
    let pb = logs("logs_basic.pb").unwrap();
    let json = logs("logs_basic.json").unwrap();
    assert!(!pb.logs.is_empty());
    assert_eq!(pb, json);
}

#[test]
fn nul_fixture_keeps_both_spans_with_nul_replaced_and_counted() {
    let decoded = traces("traces_nul_in_strings.pb").unwrap();
    assert_eq!(decoded.spans.len(), 2);
    // One NUL in a span name, one in an attribute value.
    assert_eq!(decoded.sanitized.nul_replaced, 2);
    let named = decoded.spans.iter().find(|s| s.name == "nul\u{FFFD}name");
    let named = named.expect("the span whose name held a NUL");
    let attributes: Map<String, Value> = serde_json::from_str(&named.attributes).unwrap();
    assert_eq!(attributes["db.statement"], "select 1\u{FFFD}--");
    for s in &decoded.spans {
        for text in [
            &s.name,
            &s.attributes,
            &s.trace_state,
            &s.status_message,
            &s.links,
        ] {
            assert!(!text.contains('\0'), "{text:?}");
        }
    }
}

#[test]
fn poison_fixtures_fail_with_their_reason() {
    for (name, reason) in POISON {
        let err = traces(name).expect_err(name);
        assert_eq!(err.reason(), Some(reason), "{name}: {err}");
    }
}

#[test]
fn fixtures_outside_the_window_are_refused() {
    // Ten years on, every span of the basic fixture is too old.
    let later = UNIX_EPOCH + Duration::from_secs(NOW_SECS + 10 * 365 * 86_400);
    let name = "traces_basic.pb";
    let err = decode_traces(
        &read(name),
        encoding(name),
        &Arc::from("t"),
        &limits(),
        later,
    )
    .unwrap_err();
    assert_eq!(err.reason(), Some(Reason::TimestampOutOfWindow), "{err}");
}
