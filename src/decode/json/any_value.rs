//! AnyValue and the key-values that nest in it, read straight into the prost
//! types. Apart from the mirror types because it is the one recursive type,
//! read by hand so that each level of nesting costs little stack.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::Result;
use crate::otlp::common::v1 as common;

use super::mirror::IntoProto;
use super::scalars::{nullable, opt_bytes, opt_double, opt_int};

#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct KeyValue {
    #[serde(deserialize_with = "nullable")]
    key: String,
    value: Option<AnyValue>,
}

impl KeyValue {
    fn into_key_value(self) -> common::KeyValue {
        common::KeyValue {
            key: self.key,
            value: self.value.map(|v| v.0),
        }
    }
}

impl IntoProto for KeyValue {
    type Proto = common::KeyValue;
    fn into_proto(self) -> Result<Self::Proto> {
        Ok(self.into_key_value())
    }
}

/// An AnyValue, read straight into the prost type. It is the one recursive
/// type and the most frequent one, so it skips the mirror-and-convert step:
/// no second pass over nested values, and fewer stack frames per level.
pub(super) struct AnyValue(pub(super) common::AnyValue);

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(AnyValueVisitor)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum AnyValueField {
    #[serde(alias = "string_value")]
    StringValue,
    #[serde(alias = "bool_value")]
    BoolValue,
    #[serde(alias = "int_value")]
    IntValue,
    #[serde(alias = "double_value")]
    DoubleValue,
    #[serde(alias = "array_value")]
    ArrayValue,
    #[serde(alias = "kvlist_value")]
    KvlistValue,
    #[serde(alias = "bytes_value")]
    BytesValue,
    #[serde(other)]
    Unknown,
}

struct AnyValueVisitor;

impl<'de> Visitor<'de> for AnyValueVisitor {
    type Value = AnyValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AnyValue object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<AnyValue, A::Error> {
        let mut value = None;
        while let Some(field) = map.next_key()? {
            // Each kind is read in its own function: this frame stays on the
            // stack once per nesting level, so it holds nothing else.
            let next = match field {
                AnyValueField::ArrayValue => read_array(&mut map)?,
                AnyValueField::KvlistValue => read_kvlist(&mut map)?,
                AnyValueField::Unknown => {
                    map.next_value::<de::IgnoredAny>()?;
                    None
                }
                scalar => read_scalar(&mut map, scalar)?,
            };
            if next.is_some() {
                if value.is_some() {
                    return Err(de::Error::custom(
                        "an AnyValue holds more than one of stringValue, boolValue, intValue, \
                         doubleValue, arrayValue, kvlistValue and bytesValue",
                    ));
                }
                value = next;
            }
        }
        Ok(AnyValue(common::AnyValue { value }))
    }
}

type ValueResult<E> = std::result::Result<Option<common::any_value::Value>, E>;

fn read_scalar<'de, A: MapAccess<'de>>(map: &mut A, field: AnyValueField) -> ValueResult<A::Error> {
    use common::any_value::Value;
    Ok(match field {
        AnyValueField::StringValue => map.next_value::<Option<String>>()?.map(Value::StringValue),
        AnyValueField::BoolValue => map.next_value::<Option<bool>>()?.map(Value::BoolValue),
        AnyValueField::IntValue => map.next_value::<Int64>()?.0.map(Value::IntValue),
        AnyValueField::DoubleValue => map.next_value::<Double>()?.0.map(Value::DoubleValue),
        AnyValueField::BytesValue => map.next_value::<Base64>()?.0.map(Value::BytesValue),
        AnyValueField::ArrayValue | AnyValueField::KvlistValue | AnyValueField::Unknown => None,
    })
}

fn read_array<'de, A: MapAccess<'de>>(map: &mut A) -> ValueResult<A::Error> {
    let values = map.next_value::<Values<AnyValue>>()?.0;
    Ok(values.map(|values| {
        common::any_value::Value::ArrayValue(common::ArrayValue {
            // The same layout: collected in place, without a new allocation.
            values: values.into_iter().map(|v| v.0).collect(),
        })
    }))
}

fn read_kvlist<'de, A: MapAccess<'de>>(map: &mut A) -> ValueResult<A::Error> {
    let values = map.next_value::<Values<KeyValue>>()?.0;
    Ok(values.map(|values| {
        common::any_value::Value::KvlistValue(common::KeyValueList {
            values: values.into_iter().map(KeyValue::into_key_value).collect(),
        })
    }))
}

/// `{"values": [...]}`, the shape of both ArrayValue and KeyValueList; `null`
/// is no value. Read by hand, like [`AnyValue`], to keep nesting cheap.
struct Values<T>(Option<Vec<T>>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Values<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Not `deserialize_any`: serde_json's is a far bigger stack frame, and
        // this one is on the stack once per nesting level.
        d.deserialize_option(ValuesVisitor(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ValuesField {
    Values,
    #[serde(other)]
    Unknown,
}

struct ValuesVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ValuesVisitor<T> {
    type Value = Values<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with a \"values\" array")
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Values<T>, E> {
        Ok(Values(None))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Values<T>, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Values<T>, A::Error> {
        let mut values = Vec::new();
        while let Some(field) = map.next_key()? {
            match field {
                ValuesField::Values => {
                    values = map.next_value_seed(List(PhantomData))?;
                }
                ValuesField::Unknown => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(Values(Some(values)))
    }
}

/// A JSON array read into a `Vec`, `null` as empty: [`Values`]'s items.
struct List<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for List<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Vec<T>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Vec<T>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Vec<T>, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(items)
    }
}

/// `intValue`: `null` (no value), a number, or a decimal string.
struct Int64(Option<i64>);

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        opt_int(d).map(Int64)
    }
}

/// `doubleValue`: `null` (no value), a number, or a string.
struct Double(Option<f64>);

impl<'de> Deserialize<'de> for Double {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        opt_double(d).map(Double)
    }
}

/// `bytesValue`: `null` (no value) or base64 text.
struct Base64(Option<Vec<u8>>);

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        opt_bytes(d).map(Base64)
    }
}
