//! OTLP/protobuf trace requests → span and event rows in one walk over the
//! wire, without prost's tree in between: each string is copied once, from the
//! payload into its row, and attribute values become JSON text as they are
//! read. Building the tree cost about thirty allocations per span.
//!
//! This is a fast path, not a second decoder with its own rules. For every
//! message it accepts it gives exactly the rows that `proto` + `rows` give,
//! sanitising counts included. It gives up (`None`) on anything it would have
//! to judge: every message that cannot be stored, a field with another wire
//! type than its declared one, a message field sent twice (prost merges the
//! two), a oneof set twice, text that is not UTF-8, values nested more than
//! `MAX_NESTING` deep, a span whose key follows its events. Such a message is
//! then decoded by prost and `rows`, which accept or refuse it and give the
//! reason. `tests::proto_rows` holds the two paths equal on generated
//! traffic, on the fixtures and on damaged messages.

use std::sync::Arc;
use std::time::SystemTime;

use crate::model::{Decoded, SpanEventRow, SpanRow};

use super::anyvalue::{self, JsonWriter};
use super::rows::{begin_link, end_link, ResourceColumns, ScopeColumns};
use super::validate::{self, Window};
use super::wire::{Field, Fields, Value};
use super::Limits;

/// How deep a value may nest (1 for an attribute's value, as `JsonWriter`
/// counts) before this path leaves the message to prost. Real attributes
/// nest a level or two; the bound keeps this path's recursion, and so its
/// stack, small, and far inside prost's recursion limit (100 messages, about
/// 47 levels of values).
const MAX_NESTING: usize = 8;

/// The rows of one trace export request, or `None` to leave it to prost.
pub(super) fn span_rows(
    payload: &[u8],
    tenant: &Arc<str>,
    limits: &Limits,
    now: SystemTime,
) -> Option<Decoded> {
    let mut rows = Rows {
        tenant,
        window: Window::new(now, limits),
        json: JsonWriter::new(limits),
        max_depth: limits.max_value_depth,
        max_entries: limits.max_attributes,
        out: Decoded::default(),
    };
    rows.out.spans.reserve_exact(count_spans(payload)?);
    for field in Fields::new(payload) {
        let field = field.ok()?;
        // ExportTraceServiceRequest.resource_spans = 1
        if field.number == 1 {
            rows.resource_spans(bytes(field)?)?;
        }
    }
    rows.out.sanitized = rows.json.sanitized;
    Some(rows.out)
}

/// The message in field 1 of a `ResourceSpans` (its `Resource`) or a
/// `ScopeSpans` (its `InstrumentationScope`), empty when absent; both keep
/// their items in field 2, and a `schema_url` string, checked here, in field
/// 3. The header may follow the items on the wire.
fn header(message: &[u8]) -> Option<&[u8]> {
    let mut header = None;
    for field in Fields::new(message) {
        let field = field.ok()?;
        match field.number {
            1 => once(&mut header, bytes(field)?)?,
            3 => {
                text(field)?;
            }
            _ => {}
        }
    }
    Some(header.unwrap_or_default())
}

/// The spans of a request, counted without reading them.
fn count_spans(payload: &[u8]) -> Option<usize> {
    let mut n = 0;
    for_each(payload, 1, |resource_spans| {
        for_each(resource_spans, 2, |scope_spans| {
            for_each(scope_spans, 2, |_| {
                n += 1;
                Some(())
            })
        })
    })?;
    Some(n)
}

struct Rows<'t> {
    tenant: &'t Arc<str>,
    window: Window,
    json: JsonWriter,
    max_depth: usize,
    max_entries: usize,
    out: Decoded,
}

impl Rows<'_> {
    fn resource_spans(&mut self, message: &[u8]) -> Option<()> {
        let resource = self.resource(header(message)?)?;
        for_each(message, 2, |scope_spans| {
            self.scope_spans(scope_spans, &resource)
        })
    }

    /// What `ResourceColumns::new` makes of a `Resource`.
    fn resource(&mut self, message: &[u8]) -> Option<ResourceColumns> {
        let mut attributes = String::with_capacity(message.len() + 2);
        let mut entries = Entries::default();
        // The last `service.name` wins, as in the jsonb object; only a string names the service.
        let mut service: Option<Option<&str>> = None;
        attributes.push('{');
        for field in Fields::new(message) {
            let field = field.ok()?;
            match field.number {
                // Resource.attributes = 1
                1 => {
                    let kv = self.key_value(&mut attributes, &mut entries, bytes(field)?, 1)?;
                    if kv.key == "service.name" {
                        service = Some(kv.string()?);
                    }
                }
                // Resource.dropped_attributes_count = 2
                2 => {
                    varint(field)?;
                }
                _ => {}
            }
        }
        attributes.push('}');
        let service_name = service.flatten().map(|s| self.json.shared_text(s));
        Some(ResourceColumns {
            attributes: Arc::from(attributes),
            service_name,
        })
    }

    fn scope_spans(&mut self, message: &[u8], resource: &ResourceColumns) -> Option<()> {
        let scope = self.scope(header(message)?)?;
        for_each(message, 2, |span| self.span(span, resource, &scope))
    }

    /// What `ScopeColumns::new` makes of an `InstrumentationScope`; its
    /// attributes are not stored, only checked as prost checks them.
    fn scope(&mut self, message: &[u8]) -> Option<ScopeColumns> {
        let (mut name, mut version) = ("", "");
        for field in Fields::new(message) {
            let field = field.ok()?;
            match field.number {
                1 => name = text(field)?,
                2 => version = text(field)?,
                3 => check_key_value(bytes(field)?, 1)?,
                4 => {
                    varint(field)?;
                }
                _ => {}
            }
        }
        Some(ScopeColumns {
            name: self.json.shared_text(name),
            version: self.json.shared_text(version),
        })
    }

    fn span(
        &mut self,
        message: &[u8],
        resource: &ResourceColumns,
        scope: &ScopeColumns,
    ) -> Option<()> {
        let mut s = SpanFields::default();
        // Events carry their span's key. Encoders write fields in number
        // order, so the key (fields 1, 2 and 7) comes before the events (11)
        // and one walk does. A key field after an event would change the key
        // of rows already made (the last occurrence wins): left to prost.
        let mut key = None;
        // Attributes make up most of a span's bytes, and JSON is about as long.
        let mut attributes = String::with_capacity(message.len());
        let mut entries = Entries::default();
        // Room for the closing bracket: most spans have no links.
        let mut links = String::with_capacity(2);
        links.push('[');
        let mut link_count = 0;
        let mut event_index = 0;
        attributes.push('{');
        for field in Fields::new(message) {
            let field = field.ok()?;
            match field.number {
                1 | 2 | 7 if key.is_some() => return None,
                9 => {
                    self.key_value(&mut attributes, &mut entries, bytes(field)?, 1)?;
                }
                11 => {
                    let (trace_id, span_id, start) = match key {
                        Some(key) => key,
                        None => *key.insert(self.span_key(&s)?),
                    };
                    let row = self.event(bytes(field)?, event_index, trace_id, span_id, start)?;
                    self.out.events.push(row);
                    event_index += 1;
                }
                13 => {
                    if link_count > 0 {
                        links.push(',');
                    }
                    self.link(&mut links, bytes(field)?)?;
                    link_count += 1;
                }
                _ => s.read(field)?,
            }
        }
        let (trace_id, span_id, start_unix_nano) = match key {
            Some(key) => key,
            None => self.span_key(&s)?,
        };
        let parent_span_id = validate::parent_span_id(s.parent_span_id).ok()?;
        let end_unix_nano = validate::stored_time("end_time_unix_nano", s.end).ok()?;
        let (status_message, status_code) = match s.status {
            Some(status) => read_status(status)?,
            None => ("", 0),
        };
        attributes.push('}');
        links.push(']');

        self.out.spans.push(SpanRow {
            tenant_id: Arc::clone(self.tenant),
            trace_id,
            span_id,
            parent_span_id,
            trace_state: self.json.text_of(s.trace_state),
            flags: s.flags,
            name: self.json.text_of(s.name),
            kind: s.kind,
            start_unix_nano,
            end_unix_nano,
            status_code,
            status_message: self.json.text_of(status_message),
            service_name: resource.service_name.clone(),
            resource_attributes: Arc::clone(&resource.attributes),
            scope_name: Arc::clone(&scope.name),
            scope_version: Arc::clone(&scope.version),
            attributes,
            dropped_attributes_count: s.dropped_attributes_count,
            dropped_events_count: s.dropped_events_count,
            dropped_links_count: s.dropped_links_count,
            links,
            link_count,
            event_count: u32::try_from(event_index).ok()?,
        });
        Some(())
    }

    /// What identifies a span, checked: its ids and its start.
    fn span_key(&self, s: &SpanFields<'_>) -> Option<([u8; 16], [u8; 8], i64)> {
        Some((
            validate::trace_id("trace_id", s.trace_id).ok()?,
            validate::span_id("span_id", s.span_id).ok()?,
            self.window.check("start_time_unix_nano", s.start).ok()?,
        ))
    }

    fn event(
        &mut self,
        message: &[u8],
        index: usize,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        span_start_unix_nano: i64,
    ) -> Option<SpanEventRow> {
        let (mut time, mut name, mut dropped) = (0, "", 0);
        let mut attributes = String::with_capacity(message.len() + 2);
        let mut entries = Entries::default();
        attributes.push('{');
        for field in Fields::new(message) {
            let field = field.ok()?;
            match field.number {
                1 => time = fixed64(field)?,
                2 => name = text(field)?,
                3 => {
                    self.key_value(&mut attributes, &mut entries, bytes(field)?, 1)?;
                }
                4 => dropped = varint(field)? as u32,
                _ => {}
            }
        }
        attributes.push('}');
        Some(SpanEventRow {
            tenant_id: Arc::clone(self.tenant),
            trace_id,
            span_id,
            span_start_unix_nano,
            event_index: i32::try_from(index).ok()?,
            time_unix_nano: validate::stored_time("time_unix_nano", time).ok()?,
            name: self.json.text_of(name),
            attributes,
            dropped_attributes_count: dropped,
        })
    }

    /// Appends one link as the JSON object `rows` writes.
    fn link(&mut self, out: &mut String, message: &[u8]) -> Option<()> {
        let (mut trace_id, mut span_id, mut trace_state) = (&[][..], &[][..], "");
        let (mut flags, mut dropped) = (0, 0);
        for field in Fields::new(message) {
            let field = field.ok()?;
            match field.number {
                1 => trace_id = bytes(field)?,
                2 => span_id = bytes(field)?,
                3 => trace_state = text(field)?,
                4 => {
                    bytes(field)?;
                }
                5 => dropped = varint(field)? as u32,
                6 => flags = fixed32(field)?,
                _ => {}
            }
        }
        let trace_id = validate::trace_id("trace_id", trace_id).ok()?;
        let span_id = validate::span_id("span_id", span_id).ok()?;
        begin_link(out, &mut self.json, trace_id, span_id, trace_state, flags);
        out.push('{');
        let mut entries = Entries::default();
        for_each(message, 4, |kv| {
            self.key_value(out, &mut entries, kv, 1).map(drop)
        })?;
        out.push('}');
        end_link(out, dropped);
        Some(())
    }

    /// Appends one `KeyValue` of an object (`"key":value`), the comma
    /// before it included. `depth` is the value's, as `JsonWriter` counts it.
    fn key_value<'a>(
        &mut self,
        out: &mut String,
        entries: &mut Entries,
        message: &'a [u8],
        depth: usize,
    ) -> Option<KeyValue<'a>> {
        entries.add(out, self.max_entries)?;
        let kv = KeyValue::read(message)?;
        self.json.write_str(out, kv.key);
        out.push(':');
        self.value(out, kv.value, depth)?;
        Some(kv)
    }

    /// Appends an `AnyValue` (`None`: the field was absent) as `JsonWriter` does.
    fn value(&mut self, out: &mut String, value: Option<&[u8]>, depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        let field = match value {
            Some(any) => the_value(any)?,
            None => None,
        };
        let Some(field) = field else {
            out.push_str("null");
            return Some(());
        };
        match (field.number, field.value) {
            (1, Value::Bytes(b)) => self.json.write_str(out, utf8(b)?),
            (2, Value::Varint(b)) => anyvalue::write_bool(out, b != 0),
            (3, Value::Varint(i)) => anyvalue::write_int(out, i as i64),
            (4, Value::Fixed64(bits)) => self.json.write_double(out, f64::from_bits(bits)),
            (5, Value::Bytes(array)) => {
                if depth > self.max_depth {
                    return None;
                }
                let mut entries = Entries::default();
                out.push('[');
                for_each(array, 1, |v| {
                    entries.add(out, self.max_entries)?;
                    self.value(out, Some(v), depth + 1)
                })?;
                out.push(']');
            }
            (6, Value::Bytes(kvlist)) => {
                if depth > self.max_depth {
                    return None;
                }
                let mut entries = Entries::default();
                out.push('{');
                for_each(kvlist, 1, |kv| {
                    self.key_value(out, &mut entries, kv, depth + 1).map(drop)
                })?;
                out.push('}');
            }
            (7, Value::Bytes(b)) => anyvalue::write_bytes(out, b),
            _ => return None,
        }
        Some(())
    }
}

/// A span's fields besides its attributes, events and links.
#[derive(Default)]
struct SpanFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a str,
    parent_span_id: &'a [u8],
    flags: u32,
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    dropped_attributes_count: u32,
    dropped_events_count: u32,
    dropped_links_count: u32,
    status: Option<&'a [u8]>,
}

impl<'a> SpanFields<'a> {
    /// Reads one field as prost does: the last occurrence wins, integers
    /// are truncated to their declared width, unknown fields are skipped.
    fn read(&mut self, field: Field<'a>) -> Option<()> {
        match field.number {
            1 => self.trace_id = bytes(field)?,
            2 => self.span_id = bytes(field)?,
            3 => self.trace_state = text(field)?,
            4 => self.parent_span_id = bytes(field)?,
            5 => self.name = text(field)?,
            6 => self.kind = varint(field)? as i32,
            7 => self.start = fixed64(field)?,
            8 => self.end = fixed64(field)?,
            10 => self.dropped_attributes_count = varint(field)? as u32,
            12 => self.dropped_events_count = varint(field)? as u32,
            14 => self.dropped_links_count = varint(field)? as u32,
            15 => once(&mut self.status, bytes(field)?)?,
            16 => self.flags = fixed32(field)?,
            _ => {}
        }
        Some(())
    }
}

/// `Status.message` (2) and `Status.code` (3).
fn read_status(message: &[u8]) -> Option<(&str, i32)> {
    let (mut text_, mut code) = ("", 0);
    for field in Fields::new(message) {
        let field = field.ok()?;
        match field.number {
            2 => text_ = text(field)?,
            3 => code = varint(field)? as i32,
            _ => {}
        }
    }
    Some((text_, code))
}

/// A `KeyValue`: its key and its value's bytes.
struct KeyValue<'a> {
    key: &'a str,
    value: Option<&'a [u8]>,
}

impl<'a> KeyValue<'a> {
    fn read(message: &'a [u8]) -> Option<Self> {
        let mut kv = KeyValue {
            key: "",
            value: None,
        };
        for field in Fields::new(message) {
            let field = field.ok()?;
            match field.number {
                1 => kv.key = text(field)?,
                2 => once(&mut kv.value, bytes(field)?)?,
                _ => {}
            }
        }
        Some(kv)
    }

    /// The value's text when it is a string: what names a service.
    fn string(&self) -> Option<Option<&'a str>> {
        let Some(value) = self.value else {
            return Some(None);
        };
        match the_value(value)? {
            Some(Field {
                number: 1,
                value: Value::Bytes(s),
            }) => utf8(s).map(Some),
            _ => Some(None),
        }
    }
}

/// The one field of an `AnyValue`'s oneof, if it has one; `None` when it
/// has two (prost keeps the last, merging messages).
fn the_value(any: &[u8]) -> Option<Option<Field<'_>>> {
    let mut found = None;
    for field in Fields::new(any) {
        let field = field.ok()?;
        if (1..=7).contains(&field.number) {
            once(&mut found, field)?;
        }
    }
    Some(found)
}

/// Checks a `KeyValue` that is not stored as prost would check it when
/// decoding: UTF-8 text, declared wire types, nesting.
/// `depth` is the value's.
fn check_key_value(message: &[u8], depth: usize) -> Option<()> {
    let kv = KeyValue::read(message)?;
    match kv.value {
        Some(value) => check_value(value, depth),
        None => Some(()),
    }
}

fn check_value(any: &[u8], depth: usize) -> Option<()> {
    if depth > MAX_NESTING {
        return None;
    }
    let Some(field) = the_value(any)? else {
        return Some(());
    };
    match (field.number, field.value) {
        (1, Value::Bytes(s)) => utf8(s).map(drop),
        (2 | 3, Value::Varint(_)) | (4, Value::Fixed64(_)) | (7, Value::Bytes(_)) => Some(()),
        (5, Value::Bytes(array)) => for_each(array, 1, |v| check_value(v, depth + 1)),
        (6, Value::Bytes(kvlist)) => for_each(kvlist, 1, |kv| check_key_value(kv, depth + 1)),
        _ => None,
    }
}

/// Counts an object's or array's entries against `--max-attributes`, and
/// writes the comma that separates them.
#[derive(Default)]
struct Entries(usize);

impl Entries {
    fn add(&mut self, out: &mut String, max: usize) -> Option<()> {
        if self.0 > 0 {
            out.push(',');
        }
        self.0 += 1;
        (self.0 <= max).then_some(())
    }
}

/// Calls `f` with the body of every field numbered `number`, which must be
/// length-delimited.
fn for_each<'a>(
    message: &'a [u8],
    number: u32,
    mut f: impl FnMut(&'a [u8]) -> Option<()>,
) -> Option<()> {
    for field in Fields::new(message) {
        let field = field.ok()?;
        if field.number == number {
            f(bytes(field)?)?;
        }
    }
    Some(())
}

/// Sets a message field seen for the first time; `None` the second time.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

fn bytes(field: Field<'_>) -> Option<&[u8]> {
    field.body()
}

fn text(field: Field<'_>) -> Option<&str> {
    utf8(field.body()?)
}

/// Almost every OTLP string is short ASCII (keys, names, ids in text), for
/// which `str::from_utf8`, a call that does not inline, cost more than the
/// check itself: about an eighth of the decode.
#[inline]
fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8, and every byte was just checked to be ASCII.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

fn varint(field: Field<'_>) -> Option<u64> {
    match field.value {
        Value::Varint(v) => Some(v),
        _ => None,
    }
}

fn fixed64(field: Field<'_>) -> Option<u64> {
    match field.value {
        Value::Fixed64(v) => Some(v),
        _ => None,
    }
}

fn fixed32(field: Field<'_>) -> Option<u32> {
    match field.value {
        Value::Fixed32(v) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::utf8;

    #[test]
    fn text_is_read_as_std_reads_it() {
        let cases: [&[u8]; 12] = [
            b"",
            b"service.name",
            b"a longer ASCII string that spans several words",
            "caf\u{e9}".as_bytes(),
            "\u{1f600} and more text".as_bytes(),
            "\u{0}\u{7f}".as_bytes(),
            &[0xff],
            &[b'a', 0x80],
            &[0xc3],
            &[0xc0, 0x80],
            &[0xed, 0xa0, 0x80],
            &[b'k', b'e', b'y', 0xf4, 0x90, 0x80, 0x80],
        ];
        for case in cases {
            assert_eq!(utf8(case), std::str::from_utf8(case).ok(), "{case:?}");
        }
    }
}
