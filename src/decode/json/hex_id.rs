//! Trace and span ids, which OTLP/JSON writes as hex where proto3 JSON would
//! write base64. Apart because a bad id is its own reason to refuse a message.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::error::{Error, Reason, Result};

/// A hex trace or span id as sent. Text that is not hex is kept, not refused
/// by the parser, so that it is reported as [`Reason::InvalidId`] (the id is
/// wrong) rather than [`Reason::BadJson`] (the document is).
pub(super) struct HexId(std::result::Result<Vec<u8>, String>);

impl Default for HexId {
    fn default() -> Self {
        HexId(Ok(Vec::new()))
    }
}

impl HexId {
    pub(super) fn into_bytes(self, field: &str) -> Result<Vec<u8>> {
        self.0.map_err(|shown| {
            Error::input(
                Reason::InvalidId,
                format!("{field} {shown:?} is not a hex id"),
            )
        })
    }
}

impl<'de> Deserialize<'de> for HexId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct HexIdVisitor;
        impl Visitor<'_> for HexIdVisitor {
            type Value = HexId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a hex id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<HexId, E> {
                // Enough of the text to recognise it, bounded for a huge field.
                Ok(HexId(
                    hex::decode(v).map_err(|_| v.chars().take(64).collect()),
                ))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<HexId, E> {
                Ok(HexId::default())
            }
        }
        d.deserialize_any(HexIdVisitor)
    }
}
