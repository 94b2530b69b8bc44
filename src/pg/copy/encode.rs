//! PostgreSQL's binary COPY format, written straight into a buffer.
//!
//! spansink knows every column's type where it writes the value, so each
//! field goes in as its wire bytes: no per-value type check, no `dyn` call.
//! The format: a header, then per row an `int16` field count and per field an
//! `int32` length (-1 for NULL) and the bytes, then an `int16` -1 trailer
//! (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format").

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Reason, Result};

/// The 11-byte signature that opens every binary COPY stream.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The signature, the flags (no OIDs) and an empty header extension.
pub(crate) const HEADER_LEN: usize = SIGNATURE.len() + 4 + 4;

const NULL_LENGTH: i32 = -1;
const TRAILER: i16 = -1;

/// `jsonb`'s binary form is this version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;

/// A `timestamptz` value: microseconds since 2000-01-01T00:00:00Z, PostgreSQL's
/// own representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamptz(i64);

/// 2000-01-01T00:00:00Z in microseconds since the Unix epoch.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl Timestamptz {
    /// Rounds toward minus infinity (not toward zero), so that every instant
    /// maps to the microsecond that contains it, before 1970 as after. The
    /// exact value is kept in the `*_unix_nano` columns.
    pub fn from_unix_nano(ns: i64) -> Self {
        // |ns / 1000| < 9.3e15, far from overflowing when shifted by 9.5e14.
        Timestamptz(ns.div_euclid(1_000) - PG_EPOCH_UNIX_MICROS)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0 + PG_EPOCH_UNIX_MICROS
    }
}

/// One binary COPY stream in the making. The header is written on creation;
/// rows are appended with [`CopyEncoder::row`]; [`CopyEncoder::take`] hands
/// over what is buffered so far, so a long stream can leave in chunks.
#[derive(Debug)]
pub struct CopyEncoder {
    buf: BytesMut,
}

impl Default for CopyEncoder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl CopyEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An encoder whose buffer holds `capacity` bytes before it grows.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity.max(HEADER_LEN));
        buf.put_slice(SIGNATURE);
        buf.put_i32(0);
        buf.put_i32(0);
        CopyEncoder { buf }
    }

    /// Appends one row of `fields` fields, which `write` appends. When `write`
    /// fails the row is taken back whole, so the buffer never holds half a
    /// row that the caller would have to know to discard.
    pub fn row(&mut self, fields: i16, write: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let start = self.buf.len();
        self.buf.put_i16(fields);
        let written = write(self);
        if written.is_err() {
            self.buf.truncate(start);
        }
        written
    }

    pub fn null(&mut self) {
        self.buf.put_i32(NULL_LENGTH);
    }

    pub fn int2(&mut self, v: i16) {
        self.buf.put_i32(2);
        self.buf.put_i16(v);
    }

    pub fn int4(&mut self, v: i32) {
        self.buf.put_i32(4);
        self.buf.put_i32(v);
    }

    pub fn int8(&mut self, v: i64) {
        self.buf.put_i32(8);
        self.buf.put_i64(v);
    }

    pub fn int8_opt(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    pub fn timestamptz(&mut self, v: Timestamptz) {
        self.int8(v.0);
    }

    pub fn text(&mut self, v: &str) -> Result<()> {
        self.bytea(v.as_bytes())
    }

    pub fn text_opt(&mut self, v: Option<&str>) -> Result<()> {
        self.bytea_opt(v.map(str::as_bytes))
    }

    pub fn bytea(&mut self, v: &[u8]) -> Result<()> {
        self.length(v.len())?;
        self.buf.put_slice(v);
        Ok(())
    }

    pub fn bytea_opt(&mut self, v: Option<&[u8]>) -> Result<()> {
        match v {
            Some(v) => self.bytea(v),
            None => {
                self.null();
                Ok(())
            }
        }
    }

    /// `json` is JSON text that `decode` wrote; PostgreSQL parses it, so it
    /// is not checked here.
    pub fn jsonb(&mut self, json: &str) -> Result<()> {
        self.length(json.len().saturating_add(1))?;
        self.buf.put_u8(JSONB_VERSION);
        self.buf.put_slice(json.as_bytes());
        Ok(())
    }

    /// An integer as `numeric`: digits in base 10 000, most significant
    /// first, with the weight of the first and no trailing zero digits.
    pub fn numeric(&mut self, v: i128) {
        const NUMERIC_NEG: u16 = 0x4000;
        let mut digits = [0u16; 10];
        let mut n = v.unsigned_abs();
        let mut count = 0;
        while n > 0 {
            digits[count] = (n % 10_000) as u16;
            n /= 10_000;
            count += 1;
        }
        // digits[..count] is least significant first; zeros at the low end
        // are implied by the weight.
        let low_zeros = digits[..count].iter().take_while(|d| **d == 0).count();
        let sent = &digits[low_zeros..count];
        self.buf.put_i32(8 + 2 * sent.len() as i32);
        self.buf.put_i16(sent.len() as i16);
        self.buf.put_i16(count.saturating_sub(1) as i16);
        self.buf.put_u16(if v < 0 { NUMERIC_NEG } else { 0 });
        self.buf.put_i16(0);
        for d in sent.iter().rev() {
            self.buf.put_u16(*d);
        }
    }

    /// A one-dimensional `bigint[]` without NULLs, indexed from 1.
    pub fn int8_array(&mut self, values: &[i64]) -> Result<()> {
        const INT8_OID: i32 = 20;
        self.length(20 + 12 * values.len())?;
        self.buf.put_i32(1);
        self.buf.put_i32(0);
        self.buf.put_i32(INT8_OID);
        self.buf.put_i32(values.len() as i32);
        self.buf.put_i32(1);
        for v in values {
            self.int8(*v);
        }
        Ok(())
    }

    /// Bytes buffered and not yet taken.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What is buffered so far, leaving the encoder empty and ready for the
    /// next row. The memory is shared with the returned bytes, not copied.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// The rest of the stream, with its trailer.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_i16(TRAILER);
        self.buf.freeze()
    }

    /// A field's length is an `int32` on the wire; a longer value cannot be
    /// sent at all (PostgreSQL itself refuses fields above 1 GB).
    fn length(&mut self, len: usize) -> Result<()> {
        let len = i32::try_from(len).map_err(|_| {
            Error::input(
                Reason::PgProgramLimit,
                format!("a value of {len} bytes is too large for a COPY field"),
            )
        })?;
        self.buf.put_i32(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = b"PGCOPY\n\xff\r\n\0".to_vec();
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        h
    }

    #[test]
    fn an_empty_stream_is_the_header_and_the_trailer() {
        let bytes = CopyEncoder::new().finish();
        assert_eq!(bytes.len(), HEADER_LEN + 2);
        assert_eq!(&bytes[..HEADER_LEN], header());
        assert_eq!(&bytes[HEADER_LEN..], b"\xff\xff");
    }

    #[test]
    fn a_row_is_its_field_count_then_length_prefixed_fields() {
        let mut enc = CopyEncoder::new();
        enc.row(7, |r| {
            r.text("ab")?;
            r.bytea(&[0xde, 0xad])?;
            r.int2(-2);
            r.int4(3);
            r.int8(-4);
            r.text_opt(None)?;
            r.timestamptz(Timestamptz::from_unix_nano(946_684_800_000_001_000));
            Ok(())
        })
        .unwrap();
        let bytes = enc.finish();
        #[rustfmt::skip]
        let row: &[u8] = &[
            0, 7,
            0, 0, 0, 2, b'a', b'b',
            0, 0, 0, 2, 0xde, 0xad,
            0, 0, 0, 2, 0xff, 0xfe,
            0, 0, 0, 4, 0, 0, 0, 3,
            0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfc,
            0xff, 0xff, 0xff, 0xff,
            0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1,
            0xff, 0xff,
        ];
        assert_eq!(&bytes[..HEADER_LEN], header());
        assert_eq!(&bytes[HEADER_LEN..], row);
    }

    #[test]
    fn null_is_length_minus_one_with_no_bytes_and_empty_is_not_null() {
        let mut enc = CopyEncoder::new();
        let _ = enc.take();
        enc.null();
        enc.int8_opt(None);
        enc.bytea_opt(None).unwrap();
        enc.text("").unwrap();
        enc.bytea_opt(Some(&[])).unwrap();
        assert_eq!(
            &enc.take()[..],
            [[0xff; 4], [0xff; 4], [0xff; 4], [0; 4], [0; 4]].concat()
        );
    }

    #[test]
    fn jsonb_is_version_byte_then_text() {
        let mut enc = CopyEncoder::new();
        let _ = enc.take();
        enc.jsonb(r#"{"a":1}"#).unwrap();
        assert_eq!(&enc.take()[..], b"\0\0\0\x08\x01{\"a\":1}");
    }

    #[test]
    fn a_failed_row_leaves_nothing_behind() {
        let mut enc = CopyEncoder::new();
        enc.row(1, |r| r.text("kept")).unwrap();
        let before = enc.buffered();
        let err = enc
            .row(2, |r| {
                r.text("dropped")?;
                Err(Error::input(Reason::PgDataException, "no"))
            })
            .unwrap_err();
        assert_eq!(err.reason(), Some(Reason::PgDataException));
        assert_eq!(enc.buffered(), before);
    }

    #[test]
    fn taking_chunks_splits_the_stream_without_losing_a_byte() {
        let mut whole = CopyEncoder::new();
        let mut chunked = CopyEncoder::new();
        let mut chunks = Vec::new();
        for i in 0..100 {
            for enc in [&mut whole, &mut chunked] {
                enc.row(2, |r| {
                    r.int8(i);
                    r.text("x")
                })
                .unwrap();
            }
            if chunked.buffered() > 64 {
                chunks.push(chunked.take());
            }
        }
        chunks.push(chunked.finish());
        assert!(chunks.len() > 2);
        assert_eq!(chunks.concat(), whole.finish());
    }

    #[test]
    fn timestamps_round_down_to_the_microsecond() {
        assert_eq!(Timestamptz::from_unix_nano(946_684_800_000_000_000).0, 0);
        assert_eq!(Timestamptz::from_unix_nano(1_999).unix_micros(), 1);
        // Before 1970, down means further into the past, not toward zero.
        assert_eq!(Timestamptz::from_unix_nano(-1).unix_micros(), -1);
        assert_eq!(Timestamptz::from_unix_nano(-1_000).unix_micros(), -1);
        assert_eq!(Timestamptz::from_unix_nano(-1_001).unix_micros(), -2);
        // The extremes of i64 nanoseconds stay representable.
        let _ = Timestamptz::from_unix_nano(i64::MIN).unix_micros();
        let _ = Timestamptz::from_unix_nano(i64::MAX).unix_micros();
    }
}
