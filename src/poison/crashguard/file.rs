//! A crash-guard record on disk.
//!
//! Version 2, written since: the durable frame (magic `SPCG`) around a
//! `CrashGuardRecord` protobuf. Version 1, still read so that a record an
//! earlier release left counts its crash after an upgrade, is a fixed layout
//! with its checksum at the end:
//!
//! | bytes | field                                               |
//! |-------|-----------------------------------------------------|
//! | 4     | magic `SPCG`                                        |
//! | 1     | format version (1)                                  |
//! | 1     | flags: 1 = a range is in flight, 2 = a suspect,     |
//! |       | 4 = waiting on PostgreSQL or backing off            |
//! | 4     | crashes, u32 LE                                     |
//! | 8     | instance, u64 LE                                    |
//! | 8     | first offset, i64 LE                                |
//! | 8     | last offset, i64 LE                                 |
//! | 8     | suspect offset, i64 LE                              |
//! | 4     | suspect crashes, u32 LE                             |
//! | 2 + 2 | group and topic lengths, u16 LE                     |
//! | n     | group, then topic (a check against name collisions) |
//! | 4     | CRC32C of everything before, u32 LE                 |

use prost::Message as _;

use super::rules::{Record, Suspect};
use crate::error::Result;
use crate::otlp::spansink::v1 as pb;
use crate::poison::durable::Format;

const MAGIC: &[u8; 4] = b"SPCG";
const FORMAT: Format = Format {
    magic: MAGIC,
    version: 2,
    // Version 1 is not a frame: see `decode`.
    also_reads: &[],
    max_body: 1 << 20,
};
const CRC_LEN: usize = 4;
const FLAG_ACTIVE: u8 = 1;
const FLAG_SUSPECT: u8 = 2;
const FLAG_WAITING: u8 = 4;

/// The largest file a record can be, of either version.
pub fn max_len() -> u64 {
    FORMAT.max_file()
}

pub fn encode(group: &str, topic: &str, record: &Record) -> Result<Vec<u8>> {
    let message = pb::CrashGuardRecord {
        group: group.to_string(),
        topic: topic.to_string(),
        instance: record.instance,
        range: record
            .range
            .map(|(first, last)| pb::OffsetRange { first, last }),
        crashes: record.crashes,
        suspect: record.suspect.map(|s| pb::Suspect {
            offset: s.offset,
            crashes: s.crashes,
        }),
        waiting: record.waiting,
    };
    FORMAT.frame(&message.encode_to_vec())
}

/// A whole record, with the group and topic it names; `None` if torn,
/// damaged or of an unknown version.
pub fn decode(bytes: &[u8]) -> Option<(String, String, Record)> {
    if bytes.get(..5) == Some(&[MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], 1][..]) {
        return decode_v1(bytes);
    }
    let (_, body) = FORMAT.unframe(bytes).ok()?;
    let m = pb::CrashGuardRecord::decode(body).ok()?;
    let record = Record {
        instance: m.instance,
        range: m.range.map(|r| (r.first, r.last)),
        crashes: m.crashes,
        suspect: m.suspect.map(|s| Suspect {
            offset: s.offset,
            crashes: s.crashes,
        }),
        waiting: m.waiting,
    };
    Some((m.group, m.topic, record))
}

/// Reads fixed-size fields off the front of a slice.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

/// A whole version 1 record; `None` if torn.
fn decode_v1(bytes: &[u8]) -> Option<(String, String, Record)> {
    let (body, crc) = bytes.split_last_chunk::<CRC_LEN>()?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return None;
    }
    let mut f = Fields(body);
    if &f.take::<4>()? != MAGIC || f.take::<1>()? != [1] {
        return None;
    }
    let [flags] = f.take::<1>()?;
    let crashes = u32::from_le_bytes(f.take()?);
    let instance = u64::from_le_bytes(f.take()?);
    let first = i64::from_le_bytes(f.take()?);
    let last = i64::from_le_bytes(f.take()?);
    let suspect_offset = i64::from_le_bytes(f.take()?);
    let suspect_crashes = u32::from_le_bytes(f.take()?);
    let group_len = u16::from_le_bytes(f.take()?);
    let topic_len = u16::from_le_bytes(f.take()?);
    let group = std::str::from_utf8(f.bytes(group_len.into())?).ok()?;
    let topic = std::str::from_utf8(f.bytes(topic_len.into())?).ok()?;
    if !f.0.is_empty() {
        return None;
    }
    let record = Record {
        instance,
        range: (flags & FLAG_ACTIVE != 0).then_some((first, last)),
        crashes,
        suspect: (flags & FLAG_SUSPECT != 0).then_some(Suspect {
            offset: suspect_offset,
            crashes: suspect_crashes,
        }),
        waiting: flags & FLAG_WAITING != 0,
    };
    Some((group.to_string(), topic.to_string(), record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            instance: 7,
            range: Some((10, 20)),
            crashes: 4,
            suspect: Some(Suspect {
                offset: 12,
                crashes: 2,
            }),
            waiting: true,
        }
    }

    #[test]
    fn a_record_round_trips_with_its_group_and_topic() {
        let bytes = encode("spansink", "otlp_spans", &record()).unwrap();
        assert_eq!(&bytes[..5], b"SPCG\x02");
        let (group, topic, back) = decode(&bytes).unwrap();
        assert_eq!(
            (group.as_str(), topic.as_str(), back),
            ("spansink", "otlp_spans", record())
        );
        let ended = Record {
            range: None,
            suspect: None,
            ..record()
        };
        let bytes = encode("g", "t", &ended).unwrap();
        assert_eq!(decode(&bytes).map(|(_, _, r)| r), Some(ended));
    }

    #[test]
    fn a_torn_or_flipped_record_reads_as_none() {
        let bytes = encode("spansink", "otlp_spans", &record()).unwrap();
        for cut in [0, 1, 5, 13, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 0x80;
        assert_eq!(decode(&flipped), None);
    }

    /// Written by the release before version 2: a batch of offset 7 alone in
    /// flight, by a process that never ended it.
    const V1: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/spool-v1/inflight/c26854a901d3602b-0.range"
    ));

    #[test]
    fn a_version_1_record_is_read() {
        let (group, topic, record) = decode(V1).unwrap();
        assert_eq!((group.as_str(), topic.as_str()), ("spansink", "otlp_spans"));
        assert_eq!(record.range, Some((7, 7)));
        assert_eq!(
            (record.crashes, record.suspect, record.waiting),
            (0, None, false)
        );
        let mut flipped = V1.to_vec();
        flipped[12] ^= 1;
        assert_eq!(decode(&flipped), None);
    }
}
