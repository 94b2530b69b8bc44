//! The poison spool: dead letters waiting to be published to the DLQ topic.
//!
//! Durable order on the poison path: a dead letter is written here (the file
//! and then its directory fsynced) before its partition's offset moves past it
//! in PostgreSQL, and it is removed only after the DLQ broker acknowledged it.
//! A crash anywhere in between leaves the entry here to be published again; its
//! id lets a DLQ consumer drop that duplicate.
//!
//! One file per entry, `<id>.dl`, framed so that a torn or damaged file is
//! recognised rather than published:
//!
//! | bytes | field                                     |
//! |-------|-------------------------------------------|
//! | 4     | magic `SPDL`                              |
//! | 1     | format version (1)                        |
//! | 4     | body length, u32 little-endian            |
//! | 4     | CRC32C of the body, u32 little-endian     |
//! | n     | body: the `DeadLetter` protobuf           |
//!
//! A damaged entry is moved to `quarantine/`, never deleted: it may hold the
//! only copy of a message. An entry the DLQ topic refuses for its size is
//! moved to `oversize/` once a marker for it is published.
//!
//! One process owns a spool directory: `open` takes an exclusive lock on
//! `.lock` inside it, held until the spool is dropped, so that a second
//! process (an instance or `spansink spool drain`) refuses to start on it
//! rather than publish or discard entries behind the owner's back. The
//! spool's id (`spool.id`, made at first open) names it in the dead-letter
//! ledger. Every call blocks on the filesystem; async callers use
//! `spawn_blocking`. Concurrent calls from the owner's tasks are safe.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

mod dir;
mod entry;

use crate::error::{Error, Result};
use crate::metric;
use crate::otlp::spansink::v1::DeadLetter;
use crate::poison::durable;
use dir::{lock_dir, read_id, read_or_make_id, ID_FILE};
use entry::{check_id, entry_name, file_meta, is_tmp_name, read_entry, ENTRY_SUFFIX, TMP_SUFFIX};
pub use entry::{decode, encode, MAX_BODY_BYTES};

const QUARANTINE_DIR: &str = "quarantine";
const OVERSIZE_DIR: &str = "oversize";

/// Makes each temporary file name unique, so that two tasks spooling the same
/// dead letter at once never write into one file.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// At this many entries the spool is full: consumption pauses.
    pub max_entries: usize,
    /// At this many bytes on disk the spool is full: consumption pauses.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Written,
    /// An entry with this id was already spooled; nothing was written.
    AlreadyPresent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub id: String,
    /// Size of the entry's file.
    pub bytes: u64,
    /// When the entry was written (the file's modification time).
    pub created: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    pub entries: usize,
    pub bytes: u64,
    pub oldest: Option<SystemTime>,
}

pub use crate::poison::durable::Damage;

#[derive(Debug, Clone, Copy)]
struct Meta {
    bytes: u64,
    created: SystemTime,
}

/// What this process knows is in the directory; it is the only writer.
#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Meta>,
    bytes: u64,
}

impl Index {
    /// Returns whether the id was already there.
    fn insert(&mut self, id: String, meta: Meta) -> bool {
        self.bytes += meta.bytes;
        match self.entries.insert(id, meta) {
            Some(old) => {
                self.bytes -= old.bytes;
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.entries.remove(id) {
            self.bytes -= old.bytes;
        }
    }

    fn stats(&self) -> SpoolStats {
        SpoolStats {
            entries: self.entries.len(),
            bytes: self.bytes,
            oldest: self.entries.values().map(|m| m.created).min(),
        }
    }
}

#[derive(Debug)]
pub struct Spool {
    config: SpoolConfig,
    quarantine: PathBuf,
    /// Inspection only: nothing is created, removed or quarantined.
    read_only: bool,
    index: Mutex<Index>,
    /// Names this spool in the dead-letter ledger; empty when read-only and never written.
    id: String,
    /// Held for the spool's life: the directory's exclusive lock.
    _lock: Option<File>,
}

impl Spool {
    /// Creates the directory (and `quarantine/`), removes leftover temporary
    /// files and reads every entry back: a torn or corrupt one is moved to
    /// `quarantine/`, counted and logged, and never blocks opening.
    pub fn open(config: SpoolConfig) -> Result<Spool> {
        let quarantine = config.dir.join(QUARANTINE_DIR);
        for dir in [&config.dir, &quarantine, &config.dir.join(OVERSIZE_DIR)] {
            durable::create_dir(dir)?;
        }
        let lock = lock_dir(&config.dir)?;
        let id = read_or_make_id(&config.dir)?;
        let spool = Spool {
            config,
            quarantine,
            read_only: false,
            index: Mutex::new(Index::default()),
            id,
            _lock: Some(lock),
        };
        spool.recover()?;
        spool.record_capacity();
        spool.record_metrics();
        Ok(spool)
    }

    /// Opens an existing spool for inspection: lists entries by their file
    /// metadata and changes nothing on disk, not even a damaged entry.
    pub fn open_read_only(dir: &Path) -> Result<Spool> {
        let spool = Spool {
            config: SpoolConfig {
                dir: dir.to_path_buf(),
                max_entries: usize::MAX,
                max_bytes: u64::MAX,
            },
            quarantine: dir.join(QUARANTINE_DIR),
            read_only: true,
            index: Mutex::new(Index::default()),
            id: read_id(dir)
                .map_err(|e| durable::io_at(&dir.join(ID_FILE), e))?
                .unwrap_or_default(),
            _lock: None,
        };
        let mut index = Index::default();
        for name in spool.entry_names()? {
            let path = spool.config.dir.join(&name);
            let meta = match File::open(&path).and_then(|f| file_meta(&f)) {
                Ok(meta) => meta,
                // Published and removed by the running instance meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(durable::io_at(&path, e)),
            };
            index.insert(name.trim_end_matches(ENTRY_SUFFIX).to_string(), meta);
        }
        *spool.lock() = index;
        Ok(spool)
    }

    /// Spools a dead letter, idempotently by its id. Never refuses because the
    /// spool is full: the poison is identified and must not be lost; fullness
    /// only pauses consumption (see [`Spool::is_full`]).
    pub fn put(&self, dead_letter: &DeadLetter) -> Result<PutOutcome> {
        self.writable("put")?;
        let id = dead_letter.id.as_str();
        check_id(id)?;
        if self.lock().entries.contains_key(id) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        let frame = encode(dead_letter)?;
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.config.dir.join(format!(".{id}.{seq}{TMP_SUFFIX}"));
        let path = self.entry_path(id);
        let created = durable::create(&path, &tmp, &frame)?;
        let meta = Meta {
            bytes: frame.len() as u64,
            created,
        };
        // A concurrent put of the same id may have renamed first: its file was
        // replaced by an equivalent one, and the entry counts once.
        let existed = self.lock().insert(id.to_string(), meta);
        self.record_metrics();
        Ok(if existed {
            PutOutcome::AlreadyPresent
        } else {
            PutOutcome::Written
        })
    }

    /// Consumption must pause: the DLQ is not keeping up.
    pub fn is_full(&self) -> bool {
        let index = self.lock();
        index.entries.len() >= self.config.max_entries || index.bytes >= self.config.max_bytes
    }

    /// Every entry, oldest first.
    pub fn list(&self) -> Result<Vec<EntryInfo>> {
        let mut list: Vec<EntryInfo> = self
            .lock()
            .entries
            .iter()
            .map(|(id, meta)| EntryInfo {
                id: id.clone(),
                bytes: meta.bytes,
                created: meta.created,
            })
            .collect();
        list.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(list)
    }

    /// Reads and verifies one entry. A damaged entry is quarantined (unless the
    /// spool is read-only) and reported as an [`Error::Io`] of kind
    /// `InvalidData`; a missing one as kind `NotFound`.
    pub fn read(&self, id: &str) -> Result<DeadLetter> {
        check_id(id)?;
        let path = self.entry_path(id);
        let (_, verified) = read_entry(&path).map_err(|e| durable::io_at(&path, e))?;
        let damage = match verified {
            Ok(d) if d.id == id => return Ok(d),
            Ok(d) => Damage::WrongName { inside: d.id },
            Err(damage) => damage,
        };
        let what = if self.read_only {
            format!("{damage}")
        } else {
            self.quarantine(&entry_name(id), &damage)?;
            self.lock().remove(id);
            self.record_metrics();
            format!("{damage}; moved to quarantine")
        };
        Err(Error::io(
            format!("spool entry {id}"),
            io::Error::new(io::ErrorKind::InvalidData, what),
        ))
    }

    /// Deletes an entry after the DLQ acknowledged it, or when superseded.
    /// Removing an entry that is not there succeeds.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.writable("remove")?;
        check_id(id)?;
        let path = self.entry_path(id);
        match fs::remove_file(&path) {
            Ok(()) => durable::sync_dir(&self.config.dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(durable::io_at(&path, e)),
        }
        self.lock().remove(id);
        self.record_metrics();
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        self.lock().stats()
    }

    /// Sets the spool gauges; the oldest entry's age changes with time alone,
    /// so the owner calls this periodically as well.
    pub fn record_metrics(&self) {
        let stats = self.stats();
        let age = stats
            .oldest
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(metric::SPOOL_ENTRIES).set(stats.entries as f64);
        metrics::gauge!(metric::SPOOL_BYTES).set(stats.bytes as f64);
        metrics::gauge!(metric::SPOOL_OLDEST_AGE_SECONDS).set(age);
    }

    /// How many files `quarantine/` holds, for operators.
    pub fn quarantined(&self) -> Result<usize> {
        match fs::read_dir(&self.quarantine) {
            Ok(dir) => dir
                .map(|e| e.map(|_| ()))
                .collect::<io::Result<Vec<()>>>()
                .map(|v| v.len())
                .map_err(|e| durable::io_at(&self.quarantine, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(durable::io_at(&self.quarantine, e)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The spool's id, as the dead-letter ledger names it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Moves an entry the DLQ topic refuses for its size to `oversize/`, where
    /// an operator finds it whole (`spansink replay --from-spool <dir>/oversize`),
    /// once a marker for it is published. It no longer counts in the spool.
    pub fn set_aside_oversize(&self, id: &str) -> Result<PathBuf> {
        self.writable("set aside")?;
        check_id(id)?;
        let dir = self.config.dir.join(OVERSIZE_DIR);
        let to = dir.join(entry_name(id));
        let from = self.entry_path(id);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(to),
            Err(e) => return Err(durable::io_at(&from, e)),
        }
        durable::sync_dir(&dir)?;
        durable::sync_dir(&self.config.dir)?;
        self.lock().remove(id);
        self.record_metrics();
        Ok(to)
    }

    fn record_capacity(&self) {
        metrics::gauge!(metric::SPOOL_CAPACITY_ENTRIES).set(self.config.max_entries as f64);
        metrics::gauge!(metric::SPOOL_CAPACITY_BYTES).set(self.config.max_bytes as f64);
    }

    /// Brings the directory back to a state where every `.dl` file is a whole,
    /// verified entry, and indexes them.
    fn recover(&self) -> Result<()> {
        let dir = &self.config.dir;
        let listing = fs::read_dir(dir).map_err(|e| durable::io_at(dir, e))?;
        let mut index = Index::default();
        for entry in listing {
            let entry = entry.map_err(|e| durable::io_at(dir, e))?;
            let file_type = entry
                .file_type()
                .map_err(|e| durable::io_at(&entry.path(), e))?;
            if !file_type.is_file() {
                continue; // quarantine/, the crash guard's inflight/, lost+found
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                tracing::warn!(file = ?entry.file_name(), "ignoring a spool file with a non-UTF-8 name");
                continue;
            };
            if dir::is_own_file(&name) {
                continue;
            }
            if is_tmp_name(&name) {
                // A put that never reached its rename: its poison was not yet
                // acknowledged as spooled, so the offset did not move past it.
                fs::remove_file(entry.path()).map_err(|e| durable::io_at(&entry.path(), e))?;
                tracing::info!(file = %name, "removed an unfinished spool write");
            } else if let Some(id) = name.strip_suffix(ENTRY_SUFFIX) {
                if let Some(meta) = self.recover_entry(&name, id)? {
                    index.insert(id.to_string(), meta);
                }
            } else {
                tracing::warn!(file = %name, "ignoring a file that is not a spool entry");
            }
        }
        durable::sync_dir(dir)?;
        *self.lock() = index;
        Ok(())
    }

    /// One entry at open: its metadata if whole, else it goes to quarantine.
    fn recover_entry(&self, name: &str, id: &str) -> Result<Option<Meta>> {
        let path = self.config.dir.join(name);
        let damage = if check_id(id).is_err() {
            Damage::BadName
        } else {
            match read_entry(&path).map_err(|e| durable::io_at(&path, e))? {
                (meta, Ok(d)) if d.id == id => return Ok(Some(meta)),
                (_, Ok(d)) => Damage::WrongName { inside: d.id },
                (_, Err(damage)) => damage,
            }
        };
        self.quarantine(name, &damage)?;
        Ok(None)
    }

    /// Moves a damaged file aside: it may hold the only copy of a message.
    fn quarantine(&self, name: &str, damage: &Damage) -> Result<()> {
        let Some(to) = durable::quarantine(&self.config.dir.join(name), &self.quarantine)? else {
            return Ok(());
        };
        metrics::counter!(metric::SPOOL_QUARANTINED).increment(1);
        tracing::warn!(
            file = %name,
            why = %damage,
            moved_to = %to.display(),
            "damaged spool entry quarantined"
        );
        Ok(())
    }

    /// Names of the `.dl` files, for the read-only listing.
    fn entry_names(&self) -> Result<Vec<String>> {
        let dir = &self.config.dir;
        let listing = fs::read_dir(dir).map_err(|e| durable::io_at(dir, e))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| durable::io_at(dir, e))?;
            let is_file = entry
                .file_type()
                .map_err(|e| durable::io_at(&entry.path(), e))?
                .is_file();
            match entry.file_name().to_str() {
                Some(name) if is_file && name.ends_with(ENTRY_SUFFIX) && !is_tmp_name(name) => {
                    names.push(name.to_string())
                }
                _ => {}
            }
        }
        Ok(names)
    }

    fn entry_path(&self, id: &str) -> PathBuf {
        self.config.dir.join(entry_name(id))
    }

    fn writable(&self, operation: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::config(
                "spool",
                format!("{operation} on a spool opened read-only"),
            ));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}
