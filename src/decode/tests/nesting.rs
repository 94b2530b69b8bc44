//! Values nested deeper than the limits, in both encodings: refused with a
//! reason, never a stack overflow.

use super::*;

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

fn decode_on_small_stack(payload: Vec<u8>, encoding: Encoding) -> Result<Decoded> {
    on_small_stack(move || decode_traces(&payload, encoding, &tenant(), &limits(), now()))
}

#[test]
fn deep_protobuf_nesting_is_an_error_not_a_stack_overflow() {
    let err = decode_on_small_stack(nested_arrays_proto(5000), Encoding::OtlpProto).unwrap_err();
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
