//! OTLP/protobuf → the prost types.
//!
//! prost's own recursion limit (100 nested messages) bounds nesting while
//! decoding, so a hostile message cannot exhaust the stack here.

use prost::Message;

use crate::error::{Error, Reason, Result};
use crate::otlp::{ExportLogsServiceRequest, ExportTraceServiceRequest};

/// Parses a protobuf trace export request. An empty payload is an empty request.
pub fn parse_request_proto(payload: &[u8]) -> Result<ExportTraceServiceRequest> {
    parse(payload)
}

/// Parses a protobuf logs export request. An empty payload is an empty request.
pub fn parse_logs_request_proto(payload: &[u8]) -> Result<ExportLogsServiceRequest> {
    parse(payload)
}

fn parse<M: Message + Default>(payload: &[u8]) -> Result<M> {
    M::decode(payload).map_err(classify)
}

/// How prost describes a `string` field that is not UTF-8. prost keeps the
/// kind of a `DecodeError` private, so its text is the only way to tell this
/// case apart; the `invalid_utf8_*` tests pin the wording.
const INVALID_UTF8: &str = "invalid string value: data is not UTF-8 encoded";

fn classify(err: prost::DecodeError) -> Error {
    // The full text names the message and field where decoding failed.
    let detail = err.to_string();
    let reason = if detail.ends_with(INVALID_UTF8) {
        Reason::InvalidUtf8
    } else {
        Reason::BadProtobuf
    };
    Error::input(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
    use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request_with_span(span: Span) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn round_trips_a_request() {
        let request = request_with_span(Span {
            name: "n".into(),
            trace_id: vec![1; 16],
            attributes: vec![KeyValue {
                key: "k".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(-1)),
                }),
            }],
            ..Default::default()
        });
        let bytes = request.encode_to_vec();
        assert_eq!(parse_request_proto(&bytes).unwrap(), request);
        assert_eq!(
            parse_request_proto(&[]).unwrap(),
            ExportTraceServiceRequest::default()
        );
    }

    #[test]
    fn invalid_utf8_in_a_string_is_told_apart() {
        let mut bytes = request_with_span(Span {
            name: "abcd".into(),
            ..Default::default()
        })
        .encode_to_vec();
        let at = bytes.windows(4).position(|w| w == b"abcd").unwrap();
        bytes[at] = 0xff;
        let err = parse_request_proto(&bytes).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::InvalidUtf8));
        // The detail keeps prost's path to the field.
        assert!(err.to_string().contains("Span.name"), "{err}");
    }

    #[test]
    fn garbage_and_truncation_are_bad_protobuf() {
        let bytes = request_with_span(Span {
            name: "a name long enough to cut".into(),
            ..Default::default()
        })
        .encode_to_vec();
        let err = parse_request_proto(&bytes[..bytes.len() - 3]).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::BadProtobuf), "{err}");
        let err = parse_request_proto(&[0xff; 16]).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::BadProtobuf), "{err}");
        let err = parse_logs_request_proto(&[0x0a, 0x05, 0x01]).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::BadProtobuf), "{err}");
    }
}
