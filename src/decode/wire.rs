//! The protobuf wire format read in place: the fields of one message in
//! order, each with its number and its value, borrowed from the payload.
//!
//! It calls malformed what prost calls malformed: a varint longer than ten
//! bytes or past 64 bits, a key past 32 bits, field number 0, wire types 6
//! and 7, a length past the end. Groups (wire types 3 and 4, deprecated
//! since proto2 and absent from OTLP) are refused too.

/// Why a walk stopped: kept small, since every step of a walk returns it.
pub(super) struct Malformed(pub(super) &'static str);

pub(super) type Walk<T> = std::result::Result<T, Malformed>;

/// A field's value, as the wire carries it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// One protobuf field.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field<'a> {
    pub(super) number: u32,
    pub(super) value: Value<'a>,
}

impl<'a> Field<'a> {
    /// The bytes of a length-delimited field.
    #[inline]
    pub(super) fn body(&self) -> Option<&'a [u8]> {
        match self.value {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// The fields of one message, in order; an error for anything malformed.
pub(super) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(super) fn new(message: &'a [u8]) -> Self {
        Fields { rest: message }
    }

    // Inlined into every walk's loop in release builds: a call per field
    // was a third of the decode time. Not forced in debug builds, where
    // inlining swells the frames of the pre-scan's recursion.
    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    pub(super) fn next_field(&mut self) -> Walk<Option<Field<'a>>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n != 0 && key <= u64::from(u32::MAX))
            .ok_or(Malformed("a malformed field key"))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take()?)),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Malformed("a length beyond memory"))?;
                if self.rest.len() < len {
                    return Err(Malformed("a field longer than the message"));
                }
                let (body, rest) = self.rest.split_at(len);
                self.rest = rest;
                Value::Bytes(body)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take()?)),
            3 | 4 => return Err(Malformed("an unsupported wire type")),
            _ => return Err(Malformed("a wire type that does not exist")),
        };
        Ok(Some(Field { number, value }))
    }

    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    fn varint(&mut self) -> Walk<u64> {
        // Keys, lengths and small numbers fit in one byte.
        if let Some((&byte, rest)) = self.rest.split_first() {
            if byte < 0x80 {
                self.rest = rest;
                return Ok(u64::from(byte));
            }
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Walk<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte holds bit 63 only.
                if i == 9 && byte > 1 {
                    break;
                }
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(Malformed("a malformed varint"))
    }

    #[inline]
    fn take<const N: usize>(&mut self) -> Walk<[u8; N]> {
        let Some((bytes, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(Malformed("a field longer than the message"));
        };
        self.rest = rest;
        Ok(*bytes)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Walk<Field<'a>>;

    #[cfg_attr(not(debug_assertions), inline(always))]
    #[cfg_attr(debug_assertions, inline)]
    fn next(&mut self) -> Option<Self::Item> {
        self.next_field().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::encoding::{encode_key, encode_varint, WireType};

    fn fields(bytes: &[u8]) -> Walk<Vec<(u32, String)>> {
        Fields::new(bytes)
            .map(|f| f.map(|f| (f.number, format!("{:?}", f.value))))
            .collect()
    }

    #[test]
    fn reads_every_wire_type_in_order() {
        let mut buf = Vec::new();
        encode_key(1, WireType::Varint, &mut buf);
        encode_varint(300, &mut buf);
        encode_key(16, WireType::ThirtyTwoBit, &mut buf);
        buf.extend_from_slice(&7u32.to_le_bytes());
        encode_key(7, WireType::SixtyFourBit, &mut buf);
        buf.extend_from_slice(&9u64.to_le_bytes());
        encode_key(5, WireType::LengthDelimited, &mut buf);
        encode_varint(2, &mut buf);
        buf.extend_from_slice(b"ab");
        let read = fields(&buf).ok().unwrap();
        assert_eq!(
            read,
            [
                (1, "Varint(300)".to_string()),
                (16, "Fixed32(7)".to_string()),
                (7, "Fixed64(9)".to_string()),
                (5, "Bytes([97, 98])".to_string()),
            ]
        );
    }

    #[test]
    fn refuses_what_prost_refuses() {
        // Field number 0, a wire type that does not exist, a group, a varint
        // longer than ten bytes or overflowing 64 bits, a length past the end,
        // a fixed field cut short.
        let cases: [&[u8]; 7] = [
            &[0x00, 0x01],
            &[0x0e],
            &[0x0b, 0x0c],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            &[0x2a, 0x05, b'a'],
            &[0x39, 0x01, 0x02],
        ];
        for case in cases {
            assert!(fields(case).is_err(), "{case:?} was read");
            assert!(
                crate::otlp::trace::v1::Span::decode(case).is_err(),
                "prost read {case:?}"
            );
        }
    }

    #[test]
    fn varints_read_as_prost_writes_them() {
        let mut values: Vec<u64> = (0..64).flat_map(|b| [(1u64 << b) - 1, 1 << b]).collect();
        values.push(u64::MAX);
        for v in values {
            let mut buf = Vec::new();
            encode_key(1, WireType::Varint, &mut buf);
            encode_varint(v, &mut buf);
            assert_eq!(fields(&buf).ok().unwrap(), [(1, format!("Varint({v})"))]);
        }
        // The largest field number, and one past it (a key past 32 bits).
        let mut buf = Vec::new();
        encode_varint((u64::from(u32::MAX >> 3) << 3) | 2, &mut buf);
        buf.push(0);
        assert_eq!(fields(&buf).ok().unwrap().len(), 1);
        let mut buf = Vec::new();
        encode_varint(1 << 35, &mut buf);
        assert!(fields(&buf).is_err());
    }

    use prost::Message as _;
}
