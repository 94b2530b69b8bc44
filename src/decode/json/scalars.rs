//! The proto3 JSON formats of single fields: `null` as the default, 64-bit
//! integers as numbers or decimal strings, doubles with their named
//! non-finite values, and bytes as base64. Apart so that every mirror type
//! and AnyValue read a field the same way.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

/// `null` reads as the default, as proto3 JSON parsers do.
pub(super) fn nullable<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An integer as a JSON number or a decimal string; `null` is 0.
pub(super) fn int<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64> + TryFrom<i64> + FromStr + Default,
{
    Ok(d.deserialize_any(IntVisitor::<T>(PhantomData))?
        .unwrap_or_default())
}

pub(super) fn opt_int<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<i64>, D::Error> {
    d.deserialize_any(IntVisitor::<i64>(PhantomData))
}

struct IntVisitor<T>(PhantomData<T>);

impl<T> Visitor<'_> for IntVisitor<T>
where
    T: TryFrom<u64> + TryFrom<i64> + FromStr,
{
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer in range, as a number or a decimal string")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Option<T>, E> {
        T::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Option<T>, E> {
        T::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Option<T>, E> {
        v.parse()
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Option<T>, E> {
        Ok(None)
    }
}

/// A double as a JSON number, a decimal string, or "NaN", "Infinity", "-Infinity".
pub(super) fn opt_double<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    struct DoubleVisitor;
    impl Visitor<'_> for DoubleVisitor {
        type Value = Option<f64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, or \"NaN\", \"Infinity\" or \"-Infinity\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Option<f64>, E> {
            Ok(Some(v))
        }
        // Integers beyond 2^53 round, as any JSON reader of a double would.
        #[allow(clippy::cast_precision_loss)]
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Option<f64>, E> {
            Ok(Some(v as f64))
        }
        #[allow(clippy::cast_precision_loss)]
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Option<f64>, E> {
            Ok(Some(v as f64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Option<f64>, E> {
            match v {
                "NaN" => Ok(Some(f64::NAN)),
                "Infinity" => Ok(Some(f64::INFINITY)),
                "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
                // Rust also reads "inf" and "nan"; only the three names above are OTLP.
                _ => match v.parse::<f64>() {
                    Ok(d) if d.is_finite() => Ok(Some(d)),
                    _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
                },
            }
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Option<f64>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(DoubleVisitor)
}

/// Standard or URL-safe base64, padded or not, as proto3 JSON parsers accept.
pub(super) fn opt_bytes<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<u8>>, D::Error> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

    struct BytesVisitor;
    impl Visitor<'_> for BytesVisitor {
        type Value = Option<Vec<u8>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("base64 text")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Option<Vec<u8>>, E> {
            STANDARD
                .decode(v)
                .or_else(|_| URL_SAFE.decode(v))
                .map(Some)
                .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Option<Vec<u8>>, E> {
            Ok(None)
        }
    }
    d.deserialize_any(BytesVisitor)
}
