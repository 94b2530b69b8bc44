//! One spool entry on disk: `<id>.dl`, a durable frame (magic `SPDL`,
//! format version 1) around the `DeadLetter` protobuf, and the rules for ids,
//! which become file names.

use std::fs::File;
use std::io;
use std::path::Path;

use prost::Message as _;

use super::Meta;
use crate::error::{Error, Result};
use crate::otlp::spansink::v1::DeadLetter;
use crate::poison::durable::{self, Damage, Format};

/// Largest body accepted. A dead letter holds one Kafka message, and Kafka
/// brokers refuse messages near this size long before it; a length above it
/// can only be damage. Nothing is allocated beyond the file's real size.
pub const MAX_BODY_BYTES: u32 = 1 << 30;
/// Version 1 is the only one so far: files of every release read as they are.
const FORMAT: Format = Format {
    magic: b"SPDL",
    version: 1,
    also_reads: &[],
    max_body: MAX_BODY_BYTES,
};
/// Entry ids are file names: kept to what `dead_letter_id` produces.
const MAX_ID_LEN: usize = 200;
pub(super) const ENTRY_SUFFIX: &str = ".dl";
pub(super) const TMP_SUFFIX: &str = ".tmp";

pub(super) fn entry_name(id: &str) -> String {
    format!("{id}{ENTRY_SUFFIX}")
}

pub(super) fn is_tmp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TMP_SUFFIX)
}

/// Ids become file names: ASCII letters, digits, `-` and `_`, as
/// `dead_letter_id` makes them. Anything else (a `/`, `..`) is refused.
pub(super) fn check_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::config(
            "spool entry id",
            format!("{id:?} is not a valid entry id"),
        ))
    }
}

/// The frame of one entry. Fails only for a dead letter too large to read back.
pub fn encode(dead_letter: &DeadLetter) -> Result<Vec<u8>> {
    FORMAT.frame(&dead_letter.encode_to_vec())
}

/// Verifies and decodes one entry's frame.
pub fn decode(frame: &[u8]) -> std::result::Result<DeadLetter, Damage> {
    let (_, body) = FORMAT.unframe(frame)?;
    DeadLetter::decode(body).map_err(Damage::Undecodable)
}

pub(super) type Verified = std::result::Result<DeadLetter, Damage>;

/// Reads a file no larger than the largest valid frame; a larger one is
/// damage, found without reading it.
pub(super) fn read_entry(path: &Path) -> io::Result<(Meta, Verified)> {
    let mut file = File::open(path)?;
    let meta = file_meta(&file)?;
    if meta.bytes > FORMAT.max_file() {
        let declared = meta.bytes - durable::HEADER_LEN as u64;
        return Ok((meta, Err(Damage::TooLarge { declared })));
    }
    let frame = durable::read_bounded(&mut file, FORMAT.max_file())?;
    Ok((meta, decode(&frame)))
}

pub(super) fn file_meta(file: &File) -> io::Result<Meta> {
    let metadata = file.metadata()?;
    Ok(Meta {
        bytes: metadata.len(),
        created: metadata.modified()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::spansink::v1::Header;

    fn letter(id: &str) -> DeadLetter {
        DeadLetter {
            id: id.to_string(),
            topic: "otlp_spans".into(),
            partition: 2,
            offset: 7,
            payload: vec![0xff, 0x00, 0x17],
            headers: vec![Header {
                key: "X-Scope-OrgID".into(),
                value: Some(b"acme".to_vec()),
            }],
            reason: "bad_protobuf".into(),
            ..Default::default()
        }
    }

    #[test]
    fn frame_round_trips() {
        let d = letter("a-1-2");
        let frame = encode(&d).unwrap();
        assert_eq!(&frame[..4], b"SPDL");
        assert_eq!(frame[4], 1);
        assert_eq!(decode(&frame).unwrap(), d);
    }

    #[test]
    fn a_checksummed_body_that_is_not_protobuf_is_undecodable() {
        let body = [0xff_u8; 8];
        let mut frame = Vec::new();
        frame.extend_from_slice(b"SPDL");
        frame.push(1);
        frame.extend_from_slice(&8_u32.to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        assert!(matches!(decode(&frame), Err(Damage::Undecodable(_))));
    }

    #[test]
    fn ids_that_are_not_plain_file_names_are_refused() {
        let id = crate::poison::record::dead_letter_id("g", "t", 0, 1);
        assert!(check_id(&id).is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a.dl", "é", &"x".repeat(201)] {
            assert!(check_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn temporary_names_are_told_from_entries() {
        assert!(is_tmp_name(".abc.3.tmp"));
        assert!(!is_tmp_name("abc.dl"));
        assert!(!is_tmp_name("abc.tmp"));
    }
}
