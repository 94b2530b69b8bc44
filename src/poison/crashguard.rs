//! The crash guard: poison that kills the whole process (a stack overflow, an
//! OOM kill, an abort) must not crash-loop it forever.
//!
//! Before a batch is processed, its partition's offset range is recorded
//! durably in `<spool dir>/inflight/`. A record still there when the next
//! process begins that partition again was left by a process that died with
//! the range in flight: a crash. The caller isolates a range that crashed the
//! process `threshold` times, one message at a time, and dead-letters a single
//! message that did.
//!
//! Crashes are counted twice, because a batch and a message need different
//! evidence:
//! - `crashes`: consecutive deaths with an overlapping range in flight. It
//!   decides when a batch is isolated.
//! - the suspect: a single offset that was alone in flight when the process
//!   died, and how many times. Only that convicts a message; a message that was
//!   merely part of a crashing batch is innocent until isolated.
//!
//! Each record names the process instance that wrote it, so that a range this
//! process begins again (a retry after a transient failure) is not a crash.
//! Open one guard per process and share it.
//!
//! Only a death the range may have caused counts. [`InFlight`] ends its record
//! when it is dropped, so a clean stop, an abort at the drain deadline and a
//! revocation leave nothing behind. While the worker waits on PostgreSQL (the
//! pool, a lock, a commit) or backs off, the record says so
//! ([`InFlight::set_waiting`]) and a death then does not count. Once SIGTERM
//! has arrived, [`CrashGuard::stopping`] records it: an orchestrator's SIGKILL
//! after its grace period is not the message's fault, and the next start
//! clears that process's records.
//!
//! One small file per partition, overwritten in place by every `begin` (one
//! write and one fdatasync on the hot path), with a CRC32C so that a write torn
//! by a crash reads as no record. The waiting flag is a rewrite without
//! fdatasync: it must survive the process, not the machine.
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::metric;
use crate::poison::spool::{parent_dir, sync_dir};

const INFLIGHT_DIR: &str = "inflight";
const MAGIC: &[u8; 4] = b"SPCG";
const FORMAT_VERSION: u8 = 1;
const FIXED_LEN: usize = 50;
const CRC_LEN: usize = 4;
const MAX_RECORD: usize = FIXED_LEN + 2 * u16::MAX as usize + CRC_LEN;
const FLAG_ACTIVE: u8 = 1;
const FLAG_SUSPECT: u8 = 2;
const FLAG_WAITING: u8 = 4;
const RECORD_SUFFIX: &str = ".range";
const STOPPING_SUFFIX: &str = ".stopping";
const TMP_SUFFIX: &str = ".tmp";

#[derive(Debug)]
pub struct CrashGuard {
    dir: PathBuf,
    threshold: u32,
    /// Names this process's records; random, so a restart differs.
    instance: u64,
}

/// A single offset that was alone in flight when the process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suspect {
    offset: i64,
    crashes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    instance: u64,
    /// `None` once the range ended.
    range: Option<(i64, i64)>,
    crashes: u32,
    suspect: Option<Suspect>,
    /// The range waits on PostgreSQL or backs off: a death now is not its fault.
    waiting: bool,
}

/// What `begin` decided: the record to write and what to tell the caller.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    record: Record,
    count: u32,
    /// A range left by a process that died, overlapping or not.
    found_dead: bool,
}

struct Key<'a> {
    group: &'a str,
    topic: &'a str,
    partition: i32,
}

impl CrashGuard {
    pub fn open(spool_dir: &Path, threshold: u32) -> Result<CrashGuard> {
        if threshold == 0 {
            return Err(Error::config("--crash-threshold", "must be at least 1"));
        }
        let dir = spool_dir.join(INFLIGHT_DIR);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        remove_tmp_files(&dir)?;
        clear_stopped(&dir)?;
        sync_dir(&dir)?;
        sync_dir(spool_dir)?;
        if let Some(parent) = parent_dir(spool_dir) {
            sync_dir(parent)?;
        }
        Ok(CrashGuard {
            dir,
            threshold,
            instance: rand::random(),
        })
    }

    /// Durably records that `[first, last]` of a partition is about to be
    /// processed. Returns how many times the process died with this range in
    /// flight: for a batch (`first < last`), deaths with any overlapping range;
    /// for a single message (`first == last`), deaths with that message alone.
    pub fn begin(
        self: &Arc<Self>,
        group: &str,
        topic: &str,
        partition: i32,
        first: i64,
        last: i64,
    ) -> Result<InFlight> {
        if first > last {
            return Err(Error::config(
                "crash guard range",
                format!("first offset {first} after last {last}"),
            ));
        }
        let key = Key::new(group, topic, partition)?;
        let path = self.path(&key);
        let (file, previous) = open_record(&path, &key)?;
        let step = next_step(previous, self.instance, first, last);
        if step.found_dead {
            self.report_dead(&key, previous, &step);
        }
        let bytes = encode(&key, &step.record);
        match file {
            Some(file) => overwrite(file, &bytes, true).map_err(|e| io_at(&path, e))?,
            None => self.create(&path, &bytes)?,
        }
        Ok(InFlight {
            guard: Arc::clone(self),
            group: group.to_string(),
            topic: topic.to_string(),
            path,
            record: step.record,
            crashes: step.count,
            ended: false,
        })
    }

    /// SIGTERM has arrived: whatever kills this process from now on (the
    /// orchestrator's SIGKILL after its grace period) is no message's fault.
    /// Durable, so that the next start clears this process's records.
    pub fn stopping(&self) -> Result<()> {
        let path = self
            .dir
            .join(format!("{:016x}{STOPPING_SUFFIX}", self.instance));
        self.create(&path, &self.instance.to_le_bytes())
    }

    /// Ends a record: not made durable, since a lost end costs one crash
    /// counted in excess, never a lost message.
    fn end(&self, group: &str, topic: &str, path: &Path) -> Result<()> {
        let key = Key::new(group, topic, 0)?;
        let file = match OpenOptions::new().write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_at(path, e)),
        };
        let idle = Record {
            instance: self.instance,
            range: None,
            crashes: 0,
            suspect: None,
            waiting: false,
        };
        overwrite(file, &encode(&key, &idle), false).map_err(|e| io_at(path, e))
    }

    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    fn path(&self, key: &Key<'_>) -> PathBuf {
        self.dir.join(format!(
            "{:08x}{:08x}-{}{RECORD_SUFFIX}",
            crc32c::crc32c(key.group.as_bytes()),
            crc32c::crc32c(key.topic.as_bytes()),
            key.partition
        ))
    }

    /// The partition's first record: whole before its name appears.
    fn create(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_data()))
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_at(path, e));
        }
        sync_dir(&self.dir)
    }

    fn report_dead(&self, key: &Key<'_>, previous: Option<Record>, step: &Step) {
        metrics::counter!(metric::CRASH_GUARD_RANGES).increment(1);
        let (first, last) = previous.and_then(|r| r.range).unwrap_or_default();
        tracing::warn!(
            group = key.group,
            topic = key.topic,
            partition = key.partition,
            first,
            last,
            crashes = step.record.crashes,
            suspect = ?step.record.suspect.map(|s| (s.offset, s.crashes)),
            threshold = self.threshold,
            "the process died while this range was in flight"
        );
    }
}

/// A range in flight, recorded by [`CrashGuard::begin`]. Dropping it ends the
/// record: the process survived the range, whatever became of it (committed,
/// dead-lettered, fenced, stopped or aborted).
#[derive(Debug)]
pub struct InFlight {
    guard: Arc<CrashGuard>,
    group: String,
    topic: String,
    path: PathBuf,
    record: Record,
    crashes: u32,
    ended: bool,
}

impl InFlight {
    /// How many times the process died with this range in flight: for a batch,
    /// deaths with any overlapping range; for a single message, deaths with
    /// that message alone.
    pub fn crashes(&self) -> u32 {
        self.crashes
    }

    /// Marks the range as waiting on PostgreSQL or backing off (true), or as
    /// being worked on again (false). Best effort: a failure only means that a
    /// death meanwhile may count.
    pub fn set_waiting(&mut self, waiting: bool) {
        if self.ended || self.record.waiting == waiting {
            return;
        }
        self.record.waiting = waiting;
        let written = Key::new(&self.group, &self.topic, 0).and_then(|key| {
            let file = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|e| io_at(&self.path, e))?;
            overwrite(file, &encode(&key, &self.record), false).map_err(|e| io_at(&self.path, e))
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot mark the crash-guard record as waiting");
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ended = true;
        if let Err(e) = self.guard.end(&self.group, &self.topic, &self.path) {
            tracing::warn!(error = %e, "cannot clear the batch's crash-guard record");
        }
    }
}

impl<'a> Key<'a> {
    fn new(group: &'a str, topic: &'a str, partition: i32) -> Result<Self> {
        for (setting, name) in [("group id", group), ("topic", topic)] {
            if name.len() > usize::from(u16::MAX) {
                return Err(Error::config(setting, "longer than 65535 bytes"));
            }
        }
        Ok(Key {
            group,
            topic,
            partition,
        })
    }
}

fn overlaps(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// The crash-counting rules, apart from the filesystem.
fn next_step(previous: Option<Record>, instance: u64, first: i64, last: i64) -> Step {
    let range = (first, last);
    let in_flight = previous.and_then(|p| p.range.map(|r| (p, r)));
    let (crashes, suspect, found_dead) = match in_flight {
        None => (0, None, false),
        // Died while waiting on PostgreSQL or backing off: not the range's doing.
        Some((p, old)) if p.instance != instance && p.waiting => {
            if overlaps(old, range) {
                (p.crashes, p.suspect, false)
            } else {
                (0, None, false)
            }
        }
        Some((p, old)) if p.instance != instance => {
            if overlaps(old, range) {
                (p.crashes.saturating_add(1), convict(p, old), true)
            } else {
                // The partition moved on while this process was down.
                (0, None, true)
            }
        }
        // This process began it and did not end it (a retry): no crash.
        Some((p, old)) if overlaps(old, range) => (p.crashes, p.suspect, false),
        Some(_) => (0, None, false),
    };
    let suspect = suspect.filter(|s| first <= s.offset && s.offset <= last);
    let count = if first == last {
        suspect.map_or(0, |s| s.crashes)
    } else {
        crashes
    };
    Step {
        record: Record {
            instance,
            range: Some(range),
            crashes,
            suspect,
            waiting: false,
        },
        count,
        found_dead,
    }
}

/// After a death with `old` in flight: a single offset alone in flight is the
/// culprit; a wider range convicts no one new.
fn convict(previous: Record, old: (i64, i64)) -> Option<Suspect> {
    if old.0 != old.1 {
        return previous.suspect;
    }
    let before = previous
        .suspect
        .filter(|s| s.offset == old.0)
        .map_or(0, |s| s.crashes);
    Some(Suspect {
        offset: old.0,
        crashes: before.saturating_add(1),
    })
}

/// Opens the partition's record file if there is one, and reads it. A torn or
/// foreign record reads as none.
fn open_record(path: &Path, key: &Key<'_>) -> Result<(Option<File>, Option<Record>)> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(io_at(path, e)),
    };
    let mut bytes = Vec::new();
    io::Read::take(&mut file, MAX_RECORD as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_at(path, e))?;
    let record = decode(&bytes, key);
    if record.is_none() && !bytes.is_empty() {
        tracing::warn!(file = %path.display(), "unreadable crash guard record (torn by a crash?); counting no crash");
    }
    Ok((Some(file), record))
}

/// Replaces the whole record at the start of the file.
fn overwrite(mut file: File, bytes: &[u8], durable: bool) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(bytes)?;
    // Records of one partition all have one length; this only trims a file
    // left longer by something else.
    if file.metadata()?.len() != bytes.len() as u64 {
        file.set_len(bytes.len() as u64)?;
    }
    if durable {
        file.sync_data()?;
    }
    Ok(())
}

fn encode(key: &Key<'_>, record: &Record) -> Vec<u8> {
    let (first, last) = record.range.unwrap_or_default();
    let suspect = record.suspect.unwrap_or(Suspect {
        offset: 0,
        crashes: 0,
    });
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = flag(record.range.is_some(), FLAG_ACTIVE)
        | flag(record.suspect.is_some(), FLAG_SUSPECT)
        | flag(record.waiting, FLAG_WAITING);
    let (group, topic) = (key.group.as_bytes(), key.topic.as_bytes());
    let mut out = Vec::with_capacity(FIXED_LEN + group.len() + topic.len() + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(flags);
    out.extend_from_slice(&record.crashes.to_le_bytes());
    out.extend_from_slice(&record.instance.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&suspect.offset.to_le_bytes());
    out.extend_from_slice(&suspect.crashes.to_le_bytes());
    // Key::new bounds both lengths to u16.
    out.extend_from_slice(&(group.len() as u16).to_le_bytes());
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(group);
    out.extend_from_slice(topic);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
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

/// `None` for anything but a whole record of this partition's group and topic.
fn decode(bytes: &[u8], key: &Key<'_>) -> Option<Record> {
    let (group, topic, record) = decode_record(bytes)?;
    (group == key.group && topic == key.topic).then_some(record)
}

/// A whole record, with the group and topic it names; `None` if torn or foreign.
fn decode_record(bytes: &[u8]) -> Option<(String, String, Record)> {
    let (body, crc) = bytes.split_last_chunk::<CRC_LEN>()?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return None;
    }
    let mut f = Fields(body);
    if &f.take::<4>()? != MAGIC || f.take::<1>()? != [FORMAT_VERSION] {
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

/// At open: the records that processes left in flight after recording
/// SIGTERM are marked as waiting, since whatever killed those processes then
/// was not their range's doing (their crash counts so far stand); then the
/// markers go.
fn clear_stopped(dir: &Path) -> Result<()> {
    let mut stopped = Vec::new();
    let mut markers = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_at(dir, e))? {
        let path = entry.map_err(|e| io_at(dir, e))?.path();
        if path.to_string_lossy().ends_with(STOPPING_SUFFIX) {
            let bytes = fs::read(&path).map_err(|e| io_at(&path, e))?;
            if let Ok(instance) = <[u8; 8]>::try_from(bytes.as_slice()) {
                stopped.push(u64::from_le_bytes(instance));
            }
            markers.push(path);
        }
    }
    for entry in fs::read_dir(dir).map_err(|e| io_at(dir, e))? {
        let path = entry.map_err(|e| io_at(dir, e))?.path();
        if stopped.is_empty() || !path.to_string_lossy().ends_with(RECORD_SUFFIX) {
            continue;
        }
        let bytes = fs::read(&path).map_err(|e| io_at(&path, e))?;
        let Some((group, topic, record)) = decode_record(&bytes) else {
            continue;
        };
        if record.range.is_some() && !record.waiting && stopped.contains(&record.instance) {
            let excused = Record {
                waiting: true,
                ..record
            };
            let key = Key::new(&group, &topic, 0)?;
            fs::write(&path, encode(&key, &excused)).map_err(|e| io_at(&path, e))?;
            tracing::info!(file = %path.display(), "a range in flight when SIGTERM came is not counted as a crash");
        }
    }
    for marker in markers {
        fs::remove_file(&marker).map_err(|e| io_at(&marker, e))?;
    }
    Ok(())
}

fn remove_tmp_files(dir: &Path) -> Result<()> {
    let listing = fs::read_dir(dir).map_err(|e| io_at(dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| io_at(dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(|e| io_at(&entry.path(), e))?;
        }
    }
    Ok(())
}

fn io_at(path: &Path, e: io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;
    const DEAD: u64 = 2;

    fn active(instance: u64, first: i64, last: i64, crashes: u32) -> Record {
        Record {
            instance,
            range: Some((first, last)),
            crashes,
            suspect: None,
            waiting: false,
        }
    }

    #[test]
    fn a_record_round_trips_and_checks_its_key() {
        let key = Key::new("spansink", "otlp_spans", 3).unwrap();
        let record = Record {
            suspect: Some(Suspect {
                offset: 12,
                crashes: 2,
            }),
            ..active(7, 10, 20, 4)
        };
        let bytes = encode(&key, &record);
        assert_eq!(decode(&bytes, &key), Some(record));
        let other = Key::new("spansink", "otlp_logs", 3).unwrap();
        assert_eq!(decode(&bytes, &other), None);
        for cut in [0, 1, FIXED_LEN, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut], &key), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 0x80;
        assert_eq!(decode(&flipped, &key), None);
    }

    #[test]
    fn no_record_or_an_ended_one_counts_nothing() {
        assert_eq!(next_step(None, ME, 0, 9).count, 0);
        let ended = Record {
            range: None,
            ..active(DEAD, 0, 9, 3)
        };
        let step = next_step(Some(ended), ME, 0, 9);
        assert_eq!((step.count, step.found_dead), (0, false));
    }

    #[test]
    fn a_death_with_an_overlapping_range_counts() {
        let step = next_step(Some(active(DEAD, 0, 9, 2)), ME, 5, 14);
        assert_eq!(step.count, 3);
        assert!(step.found_dead);
        assert_eq!(step.record.range, Some((5, 14)));
        assert_eq!(step.record.instance, ME);
    }

    #[test]
    fn a_death_with_a_disjoint_range_resets() {
        let step = next_step(Some(active(DEAD, 0, 9, 2)), ME, 10, 19);
        assert_eq!((step.count, step.record.crashes), (0, 0));
    }

    #[test]
    fn a_retry_by_the_same_process_is_no_crash() {
        let step = next_step(Some(active(ME, 0, 9, 2)), ME, 0, 9);
        assert_eq!((step.count, step.found_dead), (2, false));
    }

    #[test]
    fn only_a_message_alone_in_flight_is_convicted() {
        // Isolating a batch that crashed three times: its first message is not
        // to blame for the batch's crashes.
        let isolating = next_step(Some(active(ME, 0, 9, 3)), ME, 0, 0);
        assert_eq!(isolating.count, 0);
        assert_eq!(isolating.record.crashes, 3);

        // The process dies with offset 4 alone in flight, twice.
        let mut record = active(ME, 4, 4, 3);
        for expected in 1..=2 {
            let batch = next_step(
                Some(Record {
                    instance: DEAD,
                    ..record
                }),
                ME,
                4,
                9,
            );
            assert!(batch.count >= 3, "the batch stays isolated");
            let single = next_step(Some(batch.record), ME, 4, 4);
            assert_eq!(single.count, expected);
            record = single.record;
        }
        // Its neighbour is still innocent.
        assert_eq!(next_step(Some(record), ME, 5, 5).count, 0);
    }

    #[test]
    fn a_suspect_outside_the_new_range_is_dropped() {
        let record = Record {
            suspect: Some(Suspect {
                offset: 4,
                crashes: 2,
            }),
            ..active(DEAD, 4, 9, 1)
        };
        assert_eq!(next_step(Some(record), ME, 6, 12).record.suspect, None);
    }

    #[test]
    fn a_death_while_waiting_on_postgres_does_not_count() {
        let waiting = Record {
            waiting: true,
            ..active(DEAD, 0, 9, 2)
        };
        let step = next_step(Some(waiting), ME, 0, 9);
        assert_eq!((step.count, step.found_dead), (2, false));
        let key = Key::new("g", "t", 0).unwrap();
        assert_eq!(decode(&encode(&key, &waiting), &key), Some(waiting));
    }
}
