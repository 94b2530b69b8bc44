//! The generator's traffic as a whole: reproducible, well-formed, and spread
//! as the spec asks.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::attrs::s;
use super::*;
use crate::otlp::common::v1::{any_value::Value, AnyValue};
use crate::otlp::trace::v1::span::SpanKind;
use crate::otlp::trace::v1::status::StatusCode;
use crate::otlp::trace::v1::Span;

fn spec(seed: u64, spans_per_message: usize, error_ratio: f64) -> TrafficSpec {
    TrafficSpec {
        tenants: "acme:3,globex:1,initech".parse().unwrap(),
        spans_per_message,
        seed,
        run_id: "run-1".into(),
        error_ratio,
    }
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn spans(req: &ExportTraceServiceRequest) -> impl Iterator<Item = &Span> {
    req.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
}

fn value_kind(v: &AnyValue) -> &'static str {
    match &v.value {
        Some(Value::StringValue(_)) => "string",
        Some(Value::BoolValue(_)) => "bool",
        Some(Value::IntValue(_)) => "int",
        Some(Value::DoubleValue(_)) => "double",
        Some(Value::ArrayValue(_)) => "array",
        Some(Value::KvlistValue(_)) => "kvlist",
        Some(Value::BytesValue(_)) => "bytes",
        None => "empty",
    }
}

#[test]
fn tenants_follow_their_weights() {
    let mut g = Generator::new(spec(1, 1, 0.0));
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..5000 {
        *seen.entry(g.next_message(now()).tenant).or_default() += 1;
    }
    // Expected shares 3:1:1 of 5000 = 3000, 1000, 1000.
    assert!((2800..3200).contains(&seen["acme"]), "{seen:?}");
    assert!((850..1150).contains(&seen["globex"]), "{seen:?}");
    assert!((850..1150).contains(&seen["initech"]), "{seen:?}");
}

#[test]
fn the_same_seed_gives_the_same_traffic() {
    let mut a = Generator::new(spec(7, 50, 0.1));
    let mut b = Generator::new(spec(7, 50, 0.1));
    let mut c = Generator::new(spec(8, 50, 0.1));
    let (ma, mb, mc) = (
        a.next_message(now()),
        b.next_message(now()),
        c.next_message(now()),
    );
    assert_eq!(ma, mb);
    assert_ne!(ma.request, mc.request);
}

#[test]
fn messages_hold_exactly_the_spans_asked_for() {
    let mut g = Generator::new(spec(3, 50, 0.0));
    for n in [1, 2, 3, 17, 50, 333] {
        let m = g.next_message_of(n, now());
        assert_eq!(m.span_count, n);
        assert_eq!(spans(&m.request).count(), n);
    }
    assert_eq!(g.next_message(now()).span_count, 50);
}

#[test]
fn traces_are_well_formed() {
    let mut g = Generator::new(spec(11, 200, 0.1));
    let now_ns = unix_nanos(now());
    for _ in 0..20 {
        let m = g.next_message(now());
        let all: Vec<&Span> = spans(&m.request).collect();
        let by_id: HashMap<&[u8], &Span> = all.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
        assert_eq!(by_id.len(), all.len(), "span ids are unique");
        let first_trace = hex::encode(&all[0].trace_id);
        assert_eq!(m.key, first_trace.into_bytes());
        let mut roots = HashSet::new();
        for s in &all {
            assert_eq!(s.trace_id.len(), 16);
            assert_eq!(s.span_id.len(), 8);
            assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
            assert!(s.end_time_unix_nano <= now_ns);
            assert!(s.start_time_unix_nano > now_ns - 5_000_000_000);
            if s.parent_span_id.is_empty() {
                assert_eq!(s.kind, SpanKind::Server as i32);
                assert!(roots.insert(s.trace_id.clone()), "one root per trace");
                continue;
            }
            let parent = by_id[s.parent_span_id.as_slice()];
            assert_eq!(parent.trace_id, s.trace_id);
            assert!(parent.start_time_unix_nano <= s.start_time_unix_nano);
            assert!(s.end_time_unix_nano <= parent.end_time_unix_nano);
            if s.kind == SpanKind::Server as i32 {
                assert_eq!(parent.kind, SpanKind::Client as i32);
            }
        }
        let traces: HashSet<&Vec<u8>> = all.iter().map(|s| &s.trace_id).collect();
        assert_eq!(traces.len(), roots.len());
    }
}

#[test]
fn traces_cross_services_and_resources_carry_the_run_id() {
    let mut g = Generator::new(spec(5, 100, 0.0));
    let m = g.next_message(now());
    assert!(m.request.resource_spans.len() >= 2);
    let mut services = HashSet::new();
    for rs in &m.request.resource_spans {
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        let get = |k: &str| {
            attrs
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
        };
        assert_eq!(get(RUN_ID_ATTRIBUTE), Some(s("run-1")));
        let Some(AnyValue {
            value: Some(Value::StringValue(name)),
        }) = get("service.name")
        else {
            panic!("no service.name");
        };
        assert!(services.insert(name), "one resource per service");
    }
}

#[test]
fn every_value_kind_appears_in_every_message() {
    let mut g = Generator::new(spec(9, 5, 0.0));
    for _ in 0..50 {
        let m = g.next_message(now());
        let kinds: HashSet<&str> = spans(&m.request)
            .flat_map(|s| &s.attributes)
            .filter_map(|kv| kv.value.as_ref())
            .map(value_kind)
            .collect();
        for want in [
            "string", "bool", "int", "double", "array", "kvlist", "bytes",
        ] {
            assert!(kinds.contains(want), "{want} missing from {kinds:?}");
        }
    }
}

#[test]
fn error_ratio_sets_error_status_with_an_exception_event() {
    let mut none = Generator::new(spec(2, 500, 0.0));
    let m = none.next_message(now());
    assert!(spans(&m.request).all(|s| s.status.as_ref().is_none_or(|st| st.code != 2)));

    let mut all = Generator::new(spec(2, 500, 1.0));
    let m = all.next_message(now());
    for s in spans(&m.request) {
        assert_eq!(
            s.status.as_ref().map(|st| st.code),
            Some(StatusCode::Error as i32)
        );
        assert!(s.events.iter().any(|e| e.name == "exception"));
    }

    let mut some = Generator::new(spec(2, 5000, 0.2));
    let m = some.next_message(now());
    let errors = spans(&m.request)
        .filter(|s| s.status.as_ref().is_some_and(|st| st.code == 2))
        .count();
    // A call's CLIENT span fails with its callee rather than on its own draw,
    // so the share stays at the ratio.
    assert!((850..1150).contains(&errors), "{errors}");
}

#[test]
fn links_and_events_appear() {
    let mut g = Generator::new(spec(4, 2000, 0.05));
    let m = g.next_message(now());
    assert!(spans(&m.request).any(|s| !s.links.is_empty()));
    assert!(spans(&m.request).any(|s| s.events.iter().any(|e| e.name == "cache.miss")));
}

#[test]
fn spec_validation_names_the_flag() {
    let mut bad = spec(1, 0, 0.0);
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--spans-per-message"));
    bad = spec(1, 1, f64::NAN);
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("--error-ratio"));
    // An unvalidated spec still generates.
    let mut g = Generator::new(bad);
    assert_eq!(g.next_message(now()).span_count, 1);
}
