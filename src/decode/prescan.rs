//! Counts what a message would decode into, before it is decoded: spans,
//! span events, links, log records and values (attributes, and the entries of array and
//! map values). Decoding builds a struct for each of them, so a small message
//! can become a large amount of memory: 16 MB of empty spans is 8 million of
//! them. The counts are checked against the per-message limits, and give the
//! memory the message will take once decoded, which the worker reserves from
//! its budget before it decodes anything.
//!
//! The protobuf walk reads the wire format in place, allocating nothing. The
//! JSON walk parses the document once without building it (serde's visitor,
//! under serde_json's recursion limit).

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::decode::{Encoding, Signal};
use crate::error::{Error, Reason, Result};

use super::wire::{Fields, Malformed, Walk};

/// What one message holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub spans: u64,
    pub events: u64,
    pub links: u64,
    pub logs: u64,
    /// Attributes, and entries of array and map values, anywhere in the message.
    pub values: u64,
}

/// Bytes of memory per decoded item, measured on decoded messages (the prost
/// struct and the row built from it) and rounded up.
pub const SPAN_BYTES: u64 = 320;
pub const EVENT_BYTES: u64 = 256;
pub const LINK_BYTES: u64 = 256;
pub const LOG_BYTES: u64 = 320;
pub const VALUE_BYTES: u64 = 128;

impl Counts {
    /// The memory a message of `payload` bytes with these counts takes once
    /// decoded: its strings (copied twice, into the prost types and the rows)
    /// and a struct per item.
    pub fn decoded_bytes(&self, payload: usize) -> u64 {
        2 * payload as u64
            + self.spans * SPAN_BYTES
            + self.events * EVENT_BYTES
            + self.links * LINK_BYTES
            + self.logs * LOG_BYTES
            + self.values * VALUE_BYTES
    }
}

/// The per-message limits on what a message may decode into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemLimits {
    pub max_spans: u64,
    pub max_events: u64,
    pub max_links: u64,
    pub max_logs: u64,
    pub max_values: u64,
}

impl ItemLimits {
    /// No limit at all, for tests and tools that decode what they are given.
    pub const UNLIMITED: ItemLimits = ItemLimits {
        max_spans: u64::MAX,
        max_events: u64::MAX,
        max_links: u64::MAX,
        max_logs: u64::MAX,
        max_values: u64::MAX,
    };

    /// Each limit at the count whose decoded size alone fills `bytes`: the
    /// defaults give each a quarter of the batch budget, so that a message at
    /// every limit at once still fits in it.
    pub fn within(bytes: u64) -> ItemLimits {
        ItemLimits {
            max_spans: bytes / SPAN_BYTES,
            max_events: bytes / EVENT_BYTES,
            max_links: bytes / LINK_BYTES,
            max_logs: bytes / LOG_BYTES,
            max_values: bytes / VALUE_BYTES,
        }
    }
}

/// Counts an export message of `signal` and checks it against `limits`;
/// poison with its reason when it holds more than they allow, or is not a
/// message at all.
pub fn scan(
    payload: &[u8],
    signal: Signal,
    encoding: Encoding,
    limits: &ItemLimits,
) -> Result<Counts> {
    let counts = match encoding {
        Encoding::OtlpProto => proto_counts(payload, signal)?,
        Encoding::OtlpJson => json_counts(payload)?,
    };
    let checks = [
        (
            counts.spans,
            limits.max_spans,
            Reason::TooManySpans,
            "spans",
            "--max-spans-per-message",
        ),
        (
            counts.events,
            limits.max_events,
            Reason::TooManyEvents,
            "span events",
            "--max-events-per-message",
        ),
        (
            counts.links,
            limits.max_links,
            Reason::TooManyLinks,
            "links",
            "--max-links-per-message",
        ),
        (
            counts.logs,
            limits.max_logs,
            Reason::TooManyLogRecords,
            "log records",
            "--max-log-records-per-message",
        ),
        (
            counts.values,
            limits.max_values,
            Reason::TooManyAttributes,
            "attributes and array or map entries",
            "--max-values-per-message",
        ),
    ];
    for (n, max, reason, what, flag) in checks {
        if n > max {
            return Err(Error::input(
                reason,
                format!("the message holds {n} {what}, more than {flag} {max}"),
            ));
        }
    }
    Ok(counts)
}

// ---- protobuf ---------------------------------------------------------------

/// Deeper than this, prost refuses the message anyway (its recursion limit).
const MAX_DEPTH: u32 = 100;

fn bad_protobuf(m: Malformed) -> Error {
    Error::input(Reason::BadProtobuf, format!("while counting: {}", m.0))
}

/// Calls `f` with the body of every length-delimited field numbered `number`.
fn each<'a>(message: &'a [u8], number: u32, mut f: impl FnMut(&'a [u8]) -> Walk<()>) -> Walk<()> {
    let mut fields = Fields::new(message);
    while let Some(field) = fields.next_field()? {
        if let (true, Some(body)) = (field.number == number, field.body()) {
            f(body)?;
        }
    }
    Ok(())
}

fn proto_counts(payload: &[u8], signal: Signal) -> Result<Counts> {
    match signal {
        Signal::Traces => walk(payload),
        Signal::Logs => walk_logs(payload),
    }
    .map_err(bad_protobuf)
}

fn walk(payload: &[u8]) -> Walk<Counts> {
    let mut c = Counts::default();
    // ExportTraceServiceRequest.resource_spans = 1
    each(payload, 1, |resource_spans| {
        let mut fields = Fields::new(resource_spans);
        while let Some(field) = fields.next_field()? {
            match (field.number, field.body()) {
                // ResourceSpans.resource = 1: Resource.attributes = 1
                (1, Some(resource)) => each(resource, 1, |kv| key_value(kv, &mut c, 1))?,
                // ResourceSpans.scope_spans = 2
                (2, Some(scope_spans)) => scope(scope_spans, &mut c)?,
                _ => {}
            }
        }
        Ok(())
    })?;
    Ok(c)
}

fn scope(scope_spans: &[u8], c: &mut Counts) -> Walk<()> {
    let mut fields = Fields::new(scope_spans);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.body()) {
            // ScopeSpans.scope = 1: InstrumentationScope.attributes = 3
            (1, Some(scope)) => each(scope, 3, |kv| key_value(kv, c, 1))?,
            // ScopeSpans.spans = 2
            (2, Some(span)) => {
                c.spans += 1;
                span_items(span, c)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn span_items(span: &[u8], c: &mut Counts) -> Walk<()> {
    let mut fields = Fields::new(span);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.body()) {
            // Span.attributes = 9
            (9, Some(kv)) => key_value(kv, c, 1)?,
            // Span.events = 11: Event.attributes = 3
            (11, Some(event)) => {
                c.events += 1;
                each(event, 3, |kv| key_value(kv, c, 1))?;
            }
            // Span.links = 13: Link.attributes = 4
            (13, Some(link)) => {
                c.links += 1;
                each(link, 4, |kv| key_value(kv, c, 1))?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn walk_logs(payload: &[u8]) -> Walk<Counts> {
    let mut c = Counts::default();
    // ExportLogsServiceRequest.resource_logs = 1
    each(payload, 1, |resource_logs| {
        let mut fields = Fields::new(resource_logs);
        while let Some(field) = fields.next_field()? {
            match (field.number, field.body()) {
                // ResourceLogs.resource = 1: Resource.attributes = 1
                (1, Some(resource)) => each(resource, 1, |kv| key_value(kv, &mut c, 1))?,
                // ResourceLogs.scope_logs = 2
                (2, Some(scope_logs)) => log_scope(scope_logs, &mut c)?,
                _ => {}
            }
        }
        Ok(())
    })?;
    Ok(c)
}

fn log_scope(scope_logs: &[u8], c: &mut Counts) -> Walk<()> {
    let mut fields = Fields::new(scope_logs);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.body()) {
            // ScopeLogs.scope = 1: InstrumentationScope.attributes = 3
            (1, Some(scope)) => each(scope, 3, |kv| key_value(kv, c, 1))?,
            // ScopeLogs.log_records = 2
            (2, Some(record)) => {
                c.logs += 1;
                let mut fields = Fields::new(record);
                while let Some(field) = fields.next_field()? {
                    match (field.number, field.body()) {
                        // LogRecord.body = 5: an AnyValue, counted as one value
                        (5, Some(body)) => {
                            c.values += 1;
                            any_value(body, c, 2)?;
                        }
                        // LogRecord.attributes = 6
                        (6, Some(kv)) => key_value(kv, c, 1)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A KeyValue: one value; KeyValue.value = 2 is an AnyValue.
fn key_value(kv: &[u8], c: &mut Counts, depth: u32) -> Walk<()> {
    c.values += 1;
    each(kv, 2, |any| any_value(any, c, depth + 1))
}

fn any_value(any: &[u8], c: &mut Counts, depth: u32) -> Walk<()> {
    if depth > MAX_DEPTH {
        return Err(Malformed(
            "recursion limit reached (values nested more than 100 levels deep)",
        ));
    }
    let mut fields = Fields::new(any);
    while let Some(field) = fields.next_field()? {
        match (field.number, field.body()) {
            // AnyValue.array_value = 5: ArrayValue.values = 1 (AnyValue)
            (5, Some(array)) => each(array, 1, |v| {
                c.values += 1;
                any_value(v, c, depth + 1)
            })?,
            // AnyValue.kvlist_value = 6: KeyValueList.values = 1 (KeyValue)
            (6, Some(kvlist)) => each(kvlist, 1, |kv| key_value(kv, c, depth + 1))?,
            _ => {}
        }
    }
    Ok(())
}

// ---- JSON -------------------------------------------------------------------

fn json_counts(payload: &[u8]) -> Result<Counts> {
    let mut c = Counts::default();
    if payload.is_empty() {
        return Ok(c);
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    Node {
        counts: &mut c,
        key: Key::Other,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| Error::input(Reason::BadJson, e.to_string()))?;
    Ok(c)
}

/// The key whose value is being visited, where it names what is counted.
#[derive(Clone, Copy)]
enum Key {
    Spans,
    Events,
    Links,
    Logs,
    /// `attributes` (key-value lists) and `values` (array and map entries).
    Values,
    /// A key on the way to what is counted.
    Structure,
    /// Anything else: skipped unread, as the decoder skips unknown fields.
    Other,
}

impl Key {
    fn of(name: &str) -> Key {
        match name {
            "spans" => Key::Spans,
            "events" => Key::Events,
            "links" => Key::Links,
            "logRecords" | "log_records" => Key::Logs,
            "attributes" | "values" => Key::Values,
            "resourceSpans" | "resource_spans" | "scopeSpans" | "scope_spans" | "resource"
            | "scope" | "value" | "arrayValue" | "array_value" | "kvlistValue" | "kvlist_value"
            | "resourceLogs" | "resource_logs" | "scopeLogs" | "scope_logs" | "body" => {
                Key::Structure
            }
            _ => Key::Other,
        }
    }
}

/// Reads an object key without keeping it.
struct KeyName;

impl<'de> DeserializeSeed<'de> for KeyName {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyName {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, name: &str) -> std::result::Result<Key, E> {
        Ok(Key::of(name))
    }
}

/// Visits one JSON value without building it, counting the elements of the
/// arrays found under the counted keys.
struct Node<'c> {
    counts: &'c mut Counts,
    key: Key,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an OTLP/JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq
            .next_element_seed(Node {
                counts: &mut *self.counts,
                key: Key::Other,
            })?
            .is_some()
        {
            match self.key {
                Key::Spans => self.counts.spans += 1,
                Key::Events => self.counts.events += 1,
                Key::Links => self.counts.links += 1,
                Key::Logs => self.counts.logs += 1,
                Key::Values => self.counts.values += 1,
                Key::Structure | Key::Other => {}
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeyName)? {
            if let Key::Other = key {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            map.next_value_seed(Node {
                counts: &mut *self.counts,
                key,
            })?;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::otlp::common::v1::{any_value::Value, AnyValue, ArrayValue, KeyValue};
    use crate::otlp::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
    use crate::otlp::ExportTraceServiceRequest;

    fn kv(value: Value) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    fn request() -> ExportTraceServiceRequest {
        let array = Value::ArrayValue(ArrayValue {
            values: vec![
                AnyValue {
                    value: Some(Value::IntValue(1)),
                };
                3
            ],
        });
        let span = Span {
            attributes: vec![kv(Value::StringValue("a".into())), kv(array)],
            events: vec![span::Event::default(); 2],
            links: vec![span::Link {
                attributes: vec![kv(Value::BoolValue(true))],
                ..Default::default()
            }],
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span.clone(), Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    const EXPECTED: Counts = Counts {
        spans: 2,
        events: 2,
        links: 1,
        logs: 0,
        // Two span attributes, three array entries, one link attribute.
        values: 6,
    };

    fn unlimited() -> ItemLimits {
        ItemLimits::UNLIMITED
    }

    #[test]
    fn protobuf_is_counted_without_decoding() {
        let bytes = request().encode_to_vec();
        assert_eq!(proto_counts(&bytes, Signal::Traces).unwrap(), EXPECTED);
        assert_eq!(
            proto_counts(&[], Signal::Traces).unwrap(),
            Counts::default()
        );
        assert!(proto_counts(&bytes[..bytes.len() - 1], Signal::Traces).is_err());
    }

    #[test]
    fn json_is_counted_without_building_it() {
        let json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"attributes":[{"key":"k","value":{"stringValue":"a"}},
                           {"key":"k","value":{"arrayValue":{"values":[{"intValue":1},{"intValue":"1"},{"intValue":1}]}}}],
             "events":[{},{}],
             "links":[{"attributes":[{"key":"k","value":{"boolValue":true}}]}]},
            {}]}]}]}"#;
        assert_eq!(json_counts(json.as_bytes()).unwrap(), EXPECTED);
        assert!(json_counts(b"{\"spans\": [").is_err());
    }

    #[test]
    fn a_flood_of_empty_spans_is_refused_before_it_is_decoded() {
        // ScopeSpans.spans = 2, empty, a million times, inside one ResourceSpans.
        let scope: Vec<u8> = [0x12, 0x00].repeat(1_000_000);
        let mut resource = vec![0x12];
        prost::encoding::encode_varint(scope.len() as u64, &mut resource);
        resource.extend_from_slice(&scope);
        let mut request = vec![0x0a];
        prost::encoding::encode_varint(resource.len() as u64, &mut request);
        request.extend_from_slice(&resource);
        let limits = ItemLimits {
            max_spans: 100_000,
            ..unlimited()
        };
        let err = scan(&request, Signal::Traces, Encoding::OtlpProto, &limits).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::TooManySpans), "{err}");
        assert!(err.to_string().contains("1000000 spans"), "{err}");
        let counts = scan(&request, Signal::Traces, Encoding::OtlpProto, &unlimited()).unwrap();
        assert!(counts.decoded_bytes(request.len()) > 300_000_000);
    }
}
