//! The protobuf fast path against prost + `rows`: whatever the fast path
//! accepts, the reference path accepts with the very same rows, and the
//! traffic producers send is accepted by the fast path.

use prost::encoding::{encode_key, encode_varint, WireType};
use rand::{Rng, SeedableRng};

use super::*;
use crate::loadgen::{Generator, TrafficSpec};

fn reference(payload: &[u8], limits: &Limits) -> Result<Decoded> {
    let request = parse_request_proto(payload)?;
    crate::decode::rows::span_rows(request, &tenant(), limits, now())
}

fn fast(payload: &[u8], limits: &Limits) -> Option<Decoded> {
    crate::decode::proto_rows::span_rows(payload, &tenant(), limits, now())
}

/// Asserts that the fast path gives the reference's rows or gives up, and
/// that `decode_traces` gives the reference's answer either way; true when
/// the fast path took the message.
#[track_caller]
fn agree(payload: &[u8], limits: &Limits) -> bool {
    let expected = reference(payload, limits);
    let taken = fast(payload, limits);
    if let Some(rows) = &taken {
        match &expected {
            Ok(want) => assert_eq!(rows, want, "the fast path's rows differ"),
            Err(e) => panic!("the fast path took a message prost refuses: {e}"),
        }
    }
    let got = decode_scanned_traces(payload, Encoding::OtlpProto, &tenant(), limits, now());
    match (got, expected) {
        (Ok(got), Ok(want)) => assert_eq!(got, want),
        (Err(got), Err(want)) => assert_eq!(got.to_string(), want.to_string()),
        (got, want) => panic!("decode gave {got:?}, the reference {want:?}"),
    }
    taken.is_some()
}

fn traffic(seed: u64, messages: usize, spans_per_message: usize) -> Vec<Vec<u8>> {
    let mut generator = Generator::new(TrafficSpec {
        tenants: "acme:1".parse().unwrap(),
        spans_per_message,
        seed,
        run_id: format!("r{seed}"),
        error_ratio: 0.2,
    });
    (0..messages)
        .map(|_| generator.next_message(now()).request.encode_to_vec())
        .collect()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/otlp/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(path).unwrap()
}

/// The fixtures were written in 2024 and 2025: a window that holds them.
fn wide_limits() -> Limits {
    Limits {
        accept_past: Duration::from_secs(10 * 365 * 86_400),
        ..limits()
    }
}

#[test]
fn producers_traffic_takes_the_fast_path_with_the_same_rows() {
    for seed in 0..4 {
        for message in traffic(seed, 25, 40) {
            assert!(
                agree(&message, &limits()),
                "seed {seed}: the fast path gave up"
            );
        }
    }
    for name in [
        "traces_basic.pb",
        "traces_1000_spans.pb",
        "traces_empty.pb",
        "traces_nul_in_strings.pb",
        "traces_unknown_field.pb",
    ] {
        assert!(
            agree(&fixture(name), &wide_limits()),
            "{name}: the fast path gave up"
        );
    }
    let decoded = fast(&fixture("traces_nul_in_strings.pb"), &wide_limits()).unwrap();
    assert_ne!(decoded.sanitized, Sanitized::default());
}

#[test]
fn poison_fixtures_are_left_to_prost() {
    for name in [
        "poison_garbage.bin",
        "poison_invalid_utf8_name.pb",
        "poison_trace_id_15_bytes.pb",
        "poison_truncated.pb",
    ] {
        let payload = fixture(name);
        assert!(!agree(&payload, &wide_limits()), "{name} was taken");
        assert!(reference(&payload, &wide_limits()).is_err());
    }
}

/// Random damage to real messages: flipped bits, overwritten, cut, repeated
/// and dropped runs of bytes. Many still parse, as other messages.
#[test]
fn damaged_messages_agree() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut originals = traffic(9, 8, 2);
    originals.push(fixture("traces_basic.pb"));
    let limits = wide_limits();
    let (mut taken, mut left, mut refused) = (0, 0, 0);
    for original in &originals {
        for _ in 0..1000 {
            let mut m = original.clone();
            for _ in 0..rng.random_range(1..3) {
                let at = rng.random_range(0..m.len());
                match rng.random_range(0..5) {
                    0 => m[at] ^= 1 << rng.random_range(0..8),
                    1 => m[at] = rng.random(),
                    2 => m.truncate(at),
                    3 => {
                        let end = (at + rng.random_range(1..40)).min(m.len());
                        let run = m[at..end].to_vec();
                        m.splice(at..at, run);
                    }
                    _ => {
                        let end = (at + rng.random_range(1..40)).min(m.len());
                        m.drain(at..end);
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            if agree(&m, &limits) {
                taken += 1;
            } else if reference(&m, &limits).is_ok() {
                left += 1;
            } else {
                refused += 1;
            }
        }
    }
    // Both outcomes happen, or the test shows nothing: damaged messages the
    // fast path takes, and others that prost refuses. (Those it leaves to
    // prost and prost stores are the merges above; damage rarely makes one.)
    assert!(
        taken > 1000 && refused > 1000,
        "taken {taken}, left and stored {left}, refused {refused}"
    );
}

/// Raw protobuf, for what prost's encoder never writes.
#[derive(Default)]
struct Wire(Vec<u8>);

impl Wire {
    fn bytes(mut self, number: u32, body: &[u8]) -> Self {
        encode_key(number, WireType::LengthDelimited, &mut self.0);
        encode_varint(body.len() as u64, &mut self.0);
        self.0.extend_from_slice(body);
        self
    }
    fn msg(self, number: u32, body: Wire) -> Self {
        self.bytes(number, &body.0)
    }
    fn varint(mut self, number: u32, value: u64) -> Self {
        encode_key(number, WireType::Varint, &mut self.0);
        encode_varint(value, &mut self.0);
        self
    }
    fn fixed64(mut self, number: u32, value: u64) -> Self {
        encode_key(number, WireType::SixtyFourBit, &mut self.0);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
    fn fixed32(mut self, number: u32, value: u32) -> Self {
        encode_key(number, WireType::ThirtyTwoBit, &mut self.0);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
}

fn string_value(s: &str) -> Wire {
    Wire::default().bytes(1, s.as_bytes())
}

fn attribute(key: &str, value: Wire) -> Wire {
    Wire::default().bytes(1, key.as_bytes()).msg(2, value)
}

/// A request of one resource, one scope and `span`.
fn wrap(resource: Wire, scope: Wire, span: Wire) -> Vec<u8> {
    let scope_spans = Wire::default().msg(1, scope).msg(2, span);
    let resource_spans = Wire::default().msg(1, resource).msg(2, scope_spans);
    Wire::default().msg(1, resource_spans).0
}

fn service() -> Wire {
    Wire::default().msg(1, attribute("service.name", string_value("svc")))
}

/// A valid span whose fields are out of number order: its key first (events
/// need it), then events and links before attributes, name and end.
fn span_out_of_order() -> Wire {
    span_unordered(true)
}

fn span_unordered(key_first: bool) -> Wire {
    let key = Wire::default()
        .fixed64(7, NOW_NS)
        .bytes(2, &[1; 8])
        .bytes(1, &TRACE);
    let event = Wire::default()
        .msg(3, attribute("e", string_value("v")))
        .bytes(2, b"ev")
        .fixed64(1, NOW_NS + 5);
    let link = Wire::default()
        .msg(4, attribute("l", Wire::default().varint(3, u64::MAX)))
        .fixed32(6, 1)
        .bytes(2, &[2; 8])
        .bytes(1, &[3; 16]);
    let rest = Wire::default()
        .msg(11, event)
        .msg(13, link)
        .msg(
            9,
            attribute("a", Wire::default().fixed64(4, f64::NAN.to_bits())),
        )
        .fixed64(8, NOW_NS + 10)
        .bytes(5, b"op");
    let (first, last) = if key_first { (key, rest) } else { (rest, key) };
    Wire([first.0, last.0].concat())
}

#[test]
fn field_order_repeats_and_unknown_fields_are_read_as_prost_reads_them() {
    let cases = [
        // Fields out of number order.
        wrap(service(), Wire::default(), span_out_of_order()),
        // Scalars and strings sent twice: the last one wins.
        wrap(
            service(),
            Wire::default().bytes(1, b"a").bytes(1, b"b"),
            span_out_of_order()
                .bytes(5, b"renamed")
                .varint(6, 2)
                .varint(6, 3)
                .varint(10, u64::MAX)
                .varint(6, u64::from(u32::MAX) + 5),
        ),
        // Unknown fields of every wire type, everywhere; Status' reserved field 1.
        wrap(
            service().varint(99, 1).fixed32(98, 2),
            Wire::default().fixed64(97, 3).bytes(96, b"x"),
            span_out_of_order()
                .varint(40, 1)
                .msg(15, Wire::default().varint(1, 5).bytes(2, b"m").varint(3, 2)),
        ),
        // The last service.name wins, and only a string names the service.
        wrap(
            service().msg(1, attribute("service.name", Wire::default().varint(3, 1))),
            Wire::default(),
            span_out_of_order(),
        ),
        // An empty value and an empty AnyValue are both null; an empty array is [].
        wrap(
            Wire::default()
                .msg(1, Wire::default().bytes(1, b"k"))
                .msg(1, attribute("e", Wire::default()))
                .msg(1, attribute("arr", Wire::default().bytes(5, b""))),
            Wire::default(),
            span_out_of_order(),
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert!(agree(case, &limits()), "case {i} was left to prost");
    }
}

#[test]
fn what_prost_merges_or_refuses_is_left_to_it() {
    let status = || Wire::default().bytes(2, b"m");
    let cases = [
        // The span's key after its events: one walk cannot make their rows.
        wrap(service(), Wire::default(), span_unordered(false)),
        // A message field twice: prost merges the two.
        wrap(
            service(),
            Wire::default(),
            span_out_of_order().msg(15, status()).msg(15, status()),
        ),
        wrap(
            service().msg(
                1,
                Wire::default()
                    .bytes(1, b"k")
                    .msg(2, string_value("a"))
                    .msg(2, string_value("b")),
            ),
            Wire::default(),
            span_out_of_order(),
        ),
        // A oneof set twice.
        wrap(
            Wire::default().msg(1, attribute("k", string_value("a").varint(3, 1))),
            Wire::default(),
            span_out_of_order(),
        ),
        // A declared field with another wire type.
        wrap(service(), Wire::default(), span_out_of_order().varint(5, 1)),
        wrap(
            service(),
            Wire::default(),
            span_out_of_order().fixed32(7, 1),
        ),
        // Text that is not UTF-8, in a scope attribute that is never stored.
        wrap(
            service(),
            Wire::default().msg(3, attribute("k", Wire::default().bytes(1, &[0xff]))),
            span_out_of_order(),
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert!(!agree(case, &limits()), "case {i} was taken");
    }
    // Stored by prost: the late key, and the merged status.
    assert!(reference(&cases[0], &limits()).is_ok());
    assert!(reference(&cases[1], &limits()).is_ok());
}

#[test]
fn nesting_and_entry_limits_are_those_of_the_writer() {
    let limits = Limits {
        max_value_depth: 3,
        max_attributes: 3,
        ..limits()
    };
    let nested = |levels: usize| {
        let mut v = string_value("x");
        for _ in 0..levels {
            v = Wire::default().msg(5, Wire::default().msg(1, v));
        }
        v
    };
    let entries = |n: usize| {
        (0..n).fold(Wire::default(), |w, i| {
            w.msg(9, attribute(&format!("k{i}"), string_value("v")))
        })
    };
    let span = |extra: Wire| {
        let mut s = span_out_of_order();
        s.0.extend_from_slice(&extra.0);
        s
    };
    for (levels, taken) in [(3, true), (4, false)] {
        let case = wrap(
            service(),
            Wire::default(),
            span(Wire::default().msg(9, attribute("deep", nested(levels)))),
        );
        assert_eq!(agree(&case, &limits), taken, "{levels} levels");
    }
    // span_keys_last has one attribute already.
    for (n, taken) in [(2, true), (3, false)] {
        let case = wrap(service(), Wire::default(), span(entries(n)));
        assert_eq!(agree(&case, &limits), taken, "{n} more attributes");
    }
    // Deeper than prost's recursion limit, in a scope attribute nothing limits.
    let case = wrap(
        service(),
        Wire::default().msg(3, attribute("deep", nested(60))),
        span_out_of_order(),
    );
    assert!(!agree(&case, &limits));
}
