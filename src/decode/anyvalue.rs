//! AnyValue and attribute sets → JSON text, and the text sanitising that
//! PostgreSQL needs.
//!
//! The text is written straight into a `String`: no intermediate tree, one pass
//! over each value. PostgreSQL's `text` and `jsonb` are stricter than OTLP: they
//! reject NUL (also as `\u0000` inside jsonb) and jsonb has no NaN or
//! infinities. Such values are rewritten, never dropped, and every rewrite is
//! counted in [`Sanitized`].

use std::sync::Arc;

use base64::Engine as _;

use crate::error::{Error, Reason, Result};
use crate::model::Sanitized;
use crate::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};

use super::Limits;

/// What NUL becomes: U+FFFD REPLACEMENT CHARACTER keeps the position of the
/// lost character visible to whoever reads the row.
const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// Writes JSON text for one message and counts what it had to sanitise.
///
/// Holds the limits so that every nested value is checked against them, and
/// the counters so that one message yields one [`Sanitized`].
#[derive(Debug)]
pub(super) struct JsonWriter {
    max_depth: usize,
    max_entries: usize,
    pub(super) sanitized: Sanitized,
}

impl JsonWriter {
    pub(super) fn new(limits: &Limits) -> Self {
        JsonWriter {
            max_depth: limits.max_value_depth,
            max_entries: limits.max_attributes,
            sanitized: Sanitized::default(),
        }
    }

    /// An attribute set as a new JSON object text.
    pub(super) fn attributes(&mut self, attributes: &[KeyValue]) -> Result<String> {
        let mut out = String::with_capacity(estimate_len(attributes));
        self.write_attributes(&mut out, attributes)?;
        Ok(out)
    }

    /// Appends an attribute set as a JSON object.
    ///
    /// Keys are written in order, duplicates included: jsonb keeps the last
    /// value of a duplicated key, which is also what OTLP consumers that fold
    /// attributes into a map do.
    pub(super) fn write_attributes(
        &mut self,
        out: &mut String,
        attributes: &[KeyValue],
    ) -> Result<()> {
        self.check_entries(attributes.len(), "attribute set")?;
        out.push('{');
        for (i, kv) in attributes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.write_str(out, &kv.key);
            out.push(':');
            self.write_value(out, kv.value.as_ref(), 1)
                .map_err(|e| super::in_context(e, || format!("attribute {:?}", kv.key)))?;
        }
        out.push('}');
        Ok(())
    }

    /// A value on its own (a log body) as JSON text; at depth 1 like an attribute value.
    pub(super) fn value(&mut self, value: Option<&AnyValue>) -> Result<String> {
        let mut out = String::with_capacity(value.map_or(4, estimate_value_len));
        self.write_value(&mut out, value, 1)?;
        Ok(out)
    }

    /// Appends one value; `depth` is 1 for the value of an attribute.
    fn write_value(
        &mut self,
        out: &mut String,
        value: Option<&AnyValue>,
        depth: usize,
    ) -> Result<()> {
        let Some(value) = value.and_then(|v| v.value.as_ref()) else {
            out.push_str("null");
            return Ok(());
        };
        match value {
            Value::StringValue(s) => self.write_str(out, s),
            Value::BoolValue(b) => write_bool(out, *b),
            Value::IntValue(i) => write_int(out, *i),
            Value::DoubleValue(d) => self.write_double(out, *d),
            Value::BytesValue(b) => write_bytes(out, b),
            Value::ArrayValue(a) => self.write_array(out, &a.values, depth)?,
            Value::KvlistValue(kv) => self.write_kvlist(out, &kv.values, depth)?,
        }
        Ok(())
    }

    fn write_array(&mut self, out: &mut String, values: &[AnyValue], depth: usize) -> Result<()> {
        // Checked before descending: this bound is what keeps the recursion,
        // and so the stack, small whatever the input.
        self.check_depth(depth)?;
        self.check_entries(values.len(), "array")?;
        out.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.write_value(out, Some(v), depth + 1)?;
        }
        out.push(']');
        Ok(())
    }

    fn write_kvlist(&mut self, out: &mut String, values: &[KeyValue], depth: usize) -> Result<()> {
        self.check_depth(depth)?;
        self.check_entries(values.len(), "key-value list")?;
        out.push('{');
        for (i, kv) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.write_str(out, &kv.key);
            out.push(':');
            self.write_value(out, kv.value.as_ref(), depth + 1)?;
        }
        out.push('}');
        Ok(())
    }

    fn check_depth(&self, depth: usize) -> Result<()> {
        if depth > self.max_depth {
            return Err(Error::input(
                Reason::ValueTooDeep,
                format!(
                    "value nests deeper than --max-value-depth {}",
                    self.max_depth
                ),
            ));
        }
        Ok(())
    }

    fn check_entries(&self, len: usize, what: &str) -> Result<()> {
        if len > self.max_entries {
            return Err(Error::input(
                Reason::TooManyAttributes,
                format!(
                    "{what} has {len} entries, more than --max-attributes {}",
                    self.max_entries
                ),
            ));
        }
        Ok(())
    }

    /// NaN and the infinities are not JSON numbers; they are written as the
    /// strings PostgreSQL's own `to_jsonb(float8)` produces.
    pub(super) fn write_double(&mut self, out: &mut String, d: f64) {
        if d.is_finite() {
            // Shortest text that reads back as the same double; `1.0` keeps its
            // fraction so that it stays a float for whoever reads it back.
            out.push_str(zmij::Buffer::new().format_finite(d));
            return;
        }
        self.sanitized.nonfinite_floats += 1;
        out.push_str(if d.is_nan() {
            "\"NaN\""
        } else if d > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        });
    }

    /// Appends `s` as a JSON string, NUL replaced.
    pub(super) fn write_str(&mut self, out: &mut String, s: &str) {
        out.reserve(s.len() + 2);
        out.push('"');
        let Some(first) = first_to_escape(s.as_bytes()) else {
            // Nearly every string: nothing to escape.
            out.push_str(s);
            out.push('"');
            return;
        };
        let mut clean_from = 0;
        for (i, &b) in s.as_bytes().iter().enumerate().skip(first) {
            if b >= 0x20 && b != b'"' && b != b'\\' {
                continue;
            }
            // `b` is ASCII, so `i` is on a character boundary.
            out.push_str(&s[clean_from..i]);
            clean_from = i + 1;
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0 => {
                    self.sanitized.nul_replaced += 1;
                    out.push_str(NUL_REPLACEMENT);
                }
                _ => push_unicode_escape(out, b),
            }
        }
        out.push_str(&s[clean_from..]);
        out.push('"');
    }

    /// `s` with every NUL replaced, for a `text` column. Moves `s` through
    /// untouched (no copy) in the common case.
    pub(super) fn text(&mut self, s: String) -> String {
        if !s.as_bytes().contains(&0) {
            return s;
        }
        self.replace_nuls(&s)
    }

    /// [`Self::text`] of borrowed text: one copy.
    pub(super) fn text_of(&mut self, s: &str) -> String {
        if !s.as_bytes().contains(&0) {
            return s.to_owned();
        }
        self.replace_nuls(s)
    }

    /// [`Self::text`] for a value that many rows share.
    pub(super) fn shared_text(&mut self, s: &str) -> Arc<str> {
        if !s.as_bytes().contains(&0) {
            return Arc::from(s);
        }
        Arc::from(self.replace_nuls(s))
    }

    fn replace_nuls(&mut self, s: &str) -> String {
        let nuls = s.bytes().filter(|&b| b == 0).count();
        self.sanitized.nul_replaced += nuls as u64;
        s.replace('\0', NUL_REPLACEMENT)
    }
}

pub(super) fn write_bool(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

/// jsonb stores numbers as numeric, exactly: no loss beyond 2^53.
pub(super) fn write_int(out: &mut String, i: i64) {
    out.push_str(itoa::Buffer::new().format(i));
}

/// Bytes as OTLP/JSON writes them: a string of standard base64 with padding.
pub(super) fn write_bytes(out: &mut String, b: &[u8]) {
    out.push('"');
    base64::engine::general_purpose::STANDARD.encode_string(b, out);
    out.push('"');
}

fn push_unicode_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u00");
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

/// A capacity guess for an attribute object, from its top level only, so that
/// the common flat attribute set is written without growing the string.
fn estimate_len(attributes: &[KeyValue]) -> usize {
    2 + attributes
        .iter()
        .map(|kv| kv.key.len() + 4 + kv.value.as_ref().map_or(4, estimate_value_len))
        .sum::<usize>()
}

fn estimate_value_len(value: &AnyValue) -> usize {
    match &value.value {
        Some(Value::StringValue(s)) => s.len() + 2,
        Some(Value::BytesValue(b)) => b.len() * 4 / 3 + 4,
        Some(Value::ArrayValue(a)) => 2 + a.values.len() * 8,
        Some(Value::KvlistValue(kv)) => 2 + kv.values.len() * 16,
        _ => 8,
    }
}

/// The index of the first byte JSON needs escaped (a control character, `"`
/// or `\\`), eight bytes at a time: attribute strings are scanned once each,
/// and almost none holds such a byte.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Non-zero exactly when some byte of `x` is zero (no false positives
    // when used only as a filter for the exact scan below).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let quote = has_zero(x ^ (ONES * u64::from(b'"')));
        let backslash = has_zero(x ^ (ONES * u64::from(b'\\')));
        if below_space | quote | backslash != 0 {
            return chunk.iter().position(|&b| needs_escape(b)).map(|i| at + i);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| needs_escape(b))
        .map(|i| at + i)
}

fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::otlp::common::v1::{ArrayValue, KeyValueList};

    fn limits(depth: usize, entries: usize) -> Limits {
        Limits {
            max_message_bytes: 1 << 20,
            max_value_depth: depth,
            max_attributes: entries,
            items: crate::decode::ItemLimits::UNLIMITED,
            accept_past: Duration::from_secs(1),
            accept_future: Duration::from_secs(1),
        }
    }

    fn v(value: Value) -> AnyValue {
        AnyValue { value: Some(value) }
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(v(value)),
        }
    }

    fn array(values: Vec<AnyValue>) -> Value {
        Value::ArrayValue(ArrayValue { values })
    }

    /// JSON text of one value, with the sanitising counters.
    fn json(value: Value) -> (String, Sanitized) {
        let mut w = JsonWriter::new(&limits(8, 16));
        let text = w.value(Some(&v(value))).unwrap();
        (text, w.sanitized)
    }

    /// `n` arrays nested in one another around an int.
    fn nested(n: usize) -> AnyValue {
        let mut value = v(Value::IntValue(1));
        for _ in 0..n {
            value = v(array(vec![value]));
        }
        value
    }

    #[test]
    fn scalars_are_json_scalars() {
        assert_eq!(
            json(Value::StringValue("a\"b\\c\n\u{1}é".into())).0,
            r#""a\"b\\c\n\u0001é""#
        );
        assert_eq!(json(Value::BoolValue(true)).0, "true");
        assert_eq!(json(Value::BoolValue(false)).0, "false");
        assert_eq!(json(Value::IntValue(-42)).0, "-42");
        assert_eq!(json(Value::DoubleValue(0.5)).0, "0.5");
        assert_eq!(json(Value::DoubleValue(1.0)).0, "1.0");
        assert_eq!(json(Value::DoubleValue(-1e300)).0, "-1e+300");
        assert_eq!(
            json(Value::BytesValue(vec![0, 1, 2, 0xff])).0,
            r#""AAEC/w==""#
        );
        let mut w = JsonWriter::new(&limits(8, 16));
        assert_eq!(w.value(Some(&AnyValue { value: None })).unwrap(), "null");
        assert_eq!(w.value(None).unwrap(), "null");
    }

    #[test]
    fn every_output_is_json_that_serde_reads_back() {
        let value = Value::KvlistValue(KeyValueList {
            values: vec![
                kv("s", Value::StringValue("\u{7f}\t\r\u{8}\u{c}\u{1f}".into())),
                kv("d", Value::DoubleValue(0.1 + 0.2)),
                kv(
                    "a",
                    array(vec![v(Value::IntValue(1)), AnyValue { value: None }]),
                ),
            ],
        });
        let (text, _) = json(value);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["s"], "\u{7f}\t\r\u{8}\u{c}\u{1f}");
        assert_eq!(parsed["d"].as_f64(), Some(0.1 + 0.2));
        assert_eq!(parsed["a"], serde_json::json!([1, null]));
    }

    #[test]
    fn ints_beyond_2_pow_53_are_exact() {
        assert_eq!(
            json(Value::IntValue(9_007_199_254_740_993)).0,
            "9007199254740993"
        );
        assert_eq!(json(Value::IntValue(i64::MIN)).0, "-9223372036854775808");
        assert_eq!(json(Value::IntValue(i64::MAX)).0, "9223372036854775807");
    }

    #[test]
    fn nonfinite_doubles_become_strings_and_are_counted() {
        for (d, text) in [
            (f64::NAN, r#""NaN""#),
            (f64::INFINITY, r#""Infinity""#),
            (f64::NEG_INFINITY, r#""-Infinity""#),
        ] {
            let (got, sanitized) = json(Value::DoubleValue(d));
            assert_eq!(got, text);
            assert_eq!(sanitized.nonfinite_floats, 1);
        }
        assert_eq!(json(Value::DoubleValue(1.5)).1.nonfinite_floats, 0);
    }

    #[test]
    fn arrays_and_kvlists_nest() {
        let value = Value::KvlistValue(KeyValueList {
            values: vec![
                kv(
                    "a",
                    array(vec![
                        v(Value::IntValue(1)),
                        v(Value::StringValue("x".into())),
                    ]),
                ),
                KeyValue {
                    key: "none".into(),
                    value: None,
                },
                kv("empty", array(vec![])),
            ],
        });
        assert_eq!(json(value).0, r#"{"a":[1,"x"],"none":null,"empty":[]}"#);
    }

    #[test]
    fn attribute_sets_keep_order_and_duplicates() {
        let mut w = JsonWriter::new(&limits(8, 16));
        let attrs = [kv("k", Value::IntValue(1)), kv("k", Value::IntValue(2))];
        assert_eq!(w.attributes(&attrs).unwrap(), r#"{"k":1,"k":2}"#);
        assert_eq!(w.attributes(&[]).unwrap(), "{}");
    }

    #[test]
    fn nul_is_replaced_and_counted_in_keys_values_and_text() {
        let mut w = JsonWriter::new(&limits(8, 16));
        let attrs = [kv("a\0b", Value::StringValue("\0x\0".into()))];
        let text = w.attributes(&attrs).unwrap();
        assert_eq!(text, "{\"a\u{FFFD}b\":\"\u{FFFD}x\u{FFFD}\"}");
        assert_eq!(w.sanitized.nul_replaced, 3);
        assert_eq!(w.text("n\0m".into()), "n\u{FFFD}m");
        assert_eq!(&*w.shared_text("plain"), "plain");
        assert_eq!(w.sanitized.nul_replaced, 4);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["a\u{FFFD}b"], "\u{FFFD}x\u{FFFD}");
    }

    #[test]
    fn depth_at_the_limit_passes_and_one_deeper_fails() {
        let mut w = JsonWriter::new(&limits(3, 16));
        let ok = [KeyValue {
            key: "k".into(),
            value: Some(nested(3)),
        }];
        assert_eq!(w.attributes(&ok).unwrap(), r#"{"k":[[[1]]]}"#);
        let deep = [KeyValue {
            key: "k".into(),
            value: Some(nested(4)),
        }];
        let err = w.attributes(&deep).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::ValueTooDeep));
        assert!(err.to_string().contains("\"k\""), "{err}");
        // A kvlist counts as a level like an array does.
        let kvlist = Value::KvlistValue(KeyValueList {
            values: vec![KeyValue {
                key: "in".into(),
                value: Some(nested(3)),
            }],
        });
        let err = w.value(Some(&v(kvlist))).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::ValueTooDeep));
    }

    #[test]
    fn entry_limit_applies_to_sets_arrays_and_kvlists() {
        let mut w = JsonWriter::new(&limits(8, 2));
        let two = [kv("a", Value::IntValue(1)), kv("b", Value::IntValue(2))];
        assert!(w.attributes(&two).is_ok());
        let three = [
            kv("a", Value::IntValue(1)),
            kv("b", Value::IntValue(2)),
            kv("c", Value::IntValue(3)),
        ];
        let err = w.attributes(&three).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::TooManyAttributes));
        let long = array(vec![v(Value::IntValue(1)); 3]);
        let err = w.value(Some(&v(long))).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::TooManyAttributes));
        let map = Value::KvlistValue(KeyValueList {
            values: three.to_vec(),
        });
        let err = w.value(Some(&v(map))).unwrap_err();
        assert_eq!(err.reason(), Some(Reason::TooManyAttributes));
    }

    #[test]
    fn the_first_byte_to_escape_is_found_in_any_position() {
        assert_eq!(first_to_escape(b""), None);
        assert_eq!(
            first_to_escape(b"plain text, longer than eight bytes"),
            None
        );
        assert_eq!(
            first_to_escape("é and ü: non-ASCII is not escaped".as_bytes()),
            None
        );
        for special in [b'"', b'\\', b'\n', 0, 0x1f] {
            for at in 0..20 {
                let mut s = vec![b'a'; 20];
                s[at] = special;
                assert_eq!(first_to_escape(&s), Some(at), "{special} at {at}");
            }
        }
        // Bytes just above the escaped ones are not escaped.
        assert_eq!(first_to_escape(b" !#$%&'()*+,-./[]^_`{|}~\x7f"), None);
    }
}
