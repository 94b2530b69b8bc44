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
//! write and one fdatasync on the hot path), framed with a CRC32C (see
//! [`file`]) so that a write torn by a crash reads as no record. The waiting
//! flag is a rewrite without fdatasync: it must survive the process, not the
//! machine.

mod file;
mod rules;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::metric;
use crate::poison::durable::{self, io_at};
use rules::{next_step, Record, Step};

const INFLIGHT_DIR: &str = "inflight";
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
        durable::create_dir(spool_dir)?;
        let dir = spool_dir.join(INFLIGHT_DIR);
        durable::create_dir(&dir)?;
        durable::remove_temporary(&dir, |name| name.ends_with(TMP_SUFFIX))?;
        clear_stopped(&dir)?;
        durable::sync_dir(&dir)?;
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
        let bytes = file::encode(group, topic, &step.record)?;
        match file {
            Some(mut file) => {
                durable::overwrite(&mut file, &bytes, true).map_err(|e| io_at(&path, e))?
            }
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
        let mut file = match OpenOptions::new().write(true).open(path) {
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
        let bytes = file::encode(group, topic, &idle)?;
        durable::overwrite(&mut file, &bytes, false).map_err(|e| io_at(path, e))
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
        durable::create(path, Path::new(&tmp), bytes).map(|_| ())
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
        let written = file::encode(&self.group, &self.topic, &self.record).and_then(|bytes| {
            let mut file = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|e| io_at(&self.path, e))?;
            durable::overwrite(&mut file, &bytes, false).map_err(|e| io_at(&self.path, e))
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

/// Opens the partition's record file if there is one, and reads it. A torn or
/// foreign record reads as none.
fn open_record(path: &Path, key: &Key<'_>) -> Result<(Option<File>, Option<Record>)> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, None)),
        Err(e) => return Err(io_at(path, e)),
    };
    let bytes = durable::read_bounded(&mut file, file::max_len()).map_err(|e| io_at(path, e))?;
    // Anything but a whole record of this partition's group and topic is none.
    let record = file::decode(&bytes)
        .filter(|(group, topic, _)| group == key.group && topic == key.topic)
        .map(|(_, _, record)| record);
    if record.is_none() && !bytes.is_empty() {
        tracing::warn!(file = %path.display(), "unreadable crash guard record (torn by a crash?); counting no crash");
    }
    Ok((Some(file), record))
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
        let Some((group, topic, record)) = file::decode(&bytes) else {
            continue;
        };
        if record.range.is_some() && !record.waiting && stopped.contains(&record.instance) {
            let excused = Record {
                waiting: true,
                ..record
            };
            let bytes = file::encode(&group, &topic, &excused)?;
            fs::write(&path, bytes).map_err(|e| io_at(&path, e))?;
            tracing::info!(file = %path.display(), "a range in flight when SIGTERM came is not counted as a crash");
        }
    }
    for marker in markers {
        fs::remove_file(&marker).map_err(|e| io_at(&marker, e))?;
    }
    Ok(())
}
