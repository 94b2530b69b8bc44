//! Files that must survive a crash: the spool's entries and the crash
//! guard's records share one framing and one way to reach the disk.
//!
//! A frame:
//!
//! | bytes | field                                  |
//! |-------|----------------------------------------|
//! | 4     | magic, one per kind of file            |
//! | 1     | format version                         |
//! | 4     | body length, u32 little-endian         |
//! | 4     | CRC32C of the body, u32 little-endian  |
//! | n     | body: a protobuf message               |
//!
//! A torn or damaged file is recognised, never trusted: a reader gets a
//! [`Damage`] that says what is wrong, and what to do with the file (move it
//! aside to a quarantine directory, or count no crash) is its own decision.
//! A new file becomes visible whole: it is written under a temporary name,
//! fsynced, renamed, and then its directory is fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

pub const HEADER_LEN: usize = 13;

/// One kind of framed file.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub magic: &'static [u8; 4],
    /// The version this code writes.
    pub version: u8,
    /// Older versions this code still reads; their bodies are told apart by
    /// the version [`Format::unframe`] returns.
    pub also_reads: &'static [u8],
    /// The largest body accepted, so that a damaged length never allocates.
    pub max_body: u32,
}

/// Why a file cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("{len} bytes, shorter than the header")]
    Short { len: u64 },
    #[error("not this kind of file (bad magic)")]
    BadMagic,
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("declared length {declared} above the limit")]
    TooLarge { declared: u64 },
    #[error("torn: body of {declared} bytes declared, {actual} present")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("body is not what the file should hold: {0}")]
    Undecodable(prost::DecodeError),
    #[error("file name is not a valid entry id")]
    BadName,
    #[error("file name does not match the entry id {inside:?}")]
    WrongName { inside: String },
}

impl Format {
    /// The frame around `body`, in this format's current version.
    pub fn frame(&self, body: &[u8]) -> Result<Vec<u8>> {
        let declared = u32::try_from(body.len())
            .ok()
            .filter(|n| *n <= self.max_body)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "a {} byte record, above the file format's limit of {}",
                    body.len(),
                    self.max_body
                ))
            })?;
        let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
        frame.extend_from_slice(self.magic);
        frame.push(self.version);
        frame.extend_from_slice(&declared.to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        frame.extend_from_slice(body);
        Ok(frame)
    }

    /// The verified body of a frame, and the version it was written in.
    pub fn unframe<'a>(&self, frame: &'a [u8]) -> std::result::Result<(u8, &'a [u8]), Damage> {
        let Some((header, body)) = frame.split_first_chunk::<HEADER_LEN>() else {
            return Err(Damage::Short {
                len: frame.len() as u64,
            });
        };
        if &header[..4] != self.magic {
            return Err(Damage::BadMagic);
        }
        let version = header[4];
        if version != self.version && !self.also_reads.contains(&version) {
            return Err(Damage::UnknownVersion(version));
        }
        let declared = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        let stored = u32::from_le_bytes([header[9], header[10], header[11], header[12]]);
        if declared > self.max_body {
            return Err(Damage::TooLarge {
                declared: declared.into(),
            });
        }
        if body.len() as u64 != u64::from(declared) {
            return Err(Damage::LengthMismatch {
                declared: declared.into(),
                actual: body.len() as u64,
            });
        }
        let computed = crc32c::crc32c(body);
        if computed != stored {
            return Err(Damage::Checksum { stored, computed });
        }
        Ok((version, body))
    }

    /// The largest valid file of this format.
    pub fn max_file(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.max_body)
    }
}

/// Reads a whole file, but never more than `max` bytes: a larger file is
/// returned cut at `max + 1`, which no valid frame matches.
pub fn read_bounded(file: &mut File, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    // `take`: a file that grows while being read is still bounded.
    io::Read::take(file, max + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Creates `path` with `contents`, durably and whole: under `tmp` first,
/// fsynced, renamed, then the directory fsynced. Returns the file's mtime.
/// On failure the temporary file is removed, best effort; a crash may leave
/// it, which the owner removes when it opens the directory.
pub fn create(path: &Path, tmp: &Path, contents: &[u8]) -> Result<SystemTime> {
    let written = write_new(tmp, contents).and_then(|mtime| fs::rename(tmp, path).map(|()| mtime));
    let mtime = written.map_err(|e| {
        let _ = fs::remove_file(tmp);
        io_at(path, e)
    })?;
    sync_dir(parent_dir(path).unwrap_or(Path::new(".")))?;
    Ok(mtime)
}

fn write_new(path: &Path, contents: &[u8]) -> io::Result<SystemTime> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    file.metadata()?.modified()
}

/// Replaces a file's whole contents in place: one write, and one fdatasync
/// when `durable`. For a small record rewritten on a hot path, where a torn
/// write reads as damage rather than as a wrong record.
pub fn overwrite(file: &mut File, contents: &[u8], durable: bool) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(contents)?;
    if file.metadata()?.len() != contents.len() as u64 {
        file.set_len(contents.len() as u64)?;
    }
    if durable {
        file.sync_data()?;
    }
    Ok(())
}

/// Moves a damaged file into `quarantine`, never deleting it (it may hold the
/// only copy of a message) and keeping any earlier file of the same name.
/// Returns where it went; `None` if it was gone already.
pub fn quarantine(from: &Path, quarantine: &Path) -> Result<Option<PathBuf>> {
    let name = from.file_name().unwrap_or_default();
    let mut to = quarantine.join(name);
    if fs::symlink_metadata(&to).is_ok() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut unique = name.to_owned();
        unique.push(format!(".{nanos}"));
        to = quarantine.join(unique);
    }
    match fs::rename(from, &to) {
        Ok(()) => {}
        // Another task moved it first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(from, e)),
    }
    sync_dir(quarantine)?;
    sync_dir(parent_dir(from).unwrap_or(Path::new(".")))?;
    Ok(Some(to))
}

/// Creates `dir` and makes it, and its own entry in its parent, durable: the
/// directories must survive a crash before any file in them can.
pub fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    sync_dir(dir)?;
    match parent_dir(dir) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Removes the temporary files a crash left in `dir`: their writes never
/// reached the rename, so nothing depended on them.
pub fn remove_temporary(dir: &Path, is_temporary: impl Fn(&str) -> bool) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(|e| io_at(dir, e))? {
        let entry = entry.map_err(|e| io_at(dir, e))?;
        if entry.file_name().to_str().is_some_and(&is_temporary) {
            fs::remove_file(entry.path()).map_err(|e| io_at(&entry.path(), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes a directory's entries (creations, renames, unlinks) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// The directory holding `path`; `.` for a relative single component.
fn parent_dir(path: &Path) -> Option<&Path> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".")),
        other => other,
    }
}

pub fn io_at(path: &Path, e: io::Error) -> Error {
    Error::io(path.display().to_string(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Format = Format {
        magic: b"TEST",
        version: 2,
        also_reads: &[1],
        max_body: 64,
    };

    #[test]
    fn a_frame_round_trips_with_its_version() {
        let frame = TEST.frame(b"body").unwrap();
        assert_eq!(TEST.unframe(&frame).unwrap(), (2, &b"body"[..]));
        let mut old = frame.clone();
        old[4] = 1;
        assert_eq!(TEST.unframe(&old).unwrap().0, 1);
    }

    #[test]
    fn every_kind_of_damage_is_recognised() {
        let frame = TEST.frame(b"body").unwrap();
        let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = frame.clone();
            f(&mut bytes);
            TEST.unframe(&bytes).unwrap_err()
        };
        assert!(matches!(
            damaged(&|b| b.truncate(5)),
            Damage::Short { len: 5 }
        ));
        assert!(matches!(damaged(&|b| b[0] = b'X'), Damage::BadMagic));
        assert!(matches!(damaged(&|b| b[4] = 9), Damage::UnknownVersion(9)));
        assert!(matches!(damaged(&|b| b[8] = 0xff), Damage::TooLarge { .. }));
        assert!(matches!(
            damaged(&|b| {
                b.pop();
            }),
            Damage::LengthMismatch { .. }
        ));
        assert!(matches!(
            damaged(&|b| b[HEADER_LEN] ^= 1),
            Damage::Checksum { .. }
        ));
        assert!(TEST.frame(&[0; 65]).is_err());
    }

    #[test]
    fn a_created_file_is_whole_and_its_temporary_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let tmp = dir.path().join("a.tmp");
        create(&path, &tmp, b"contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"contents");
        assert!(!tmp.exists());
        // A temporary file a crash left is never written into: create fails.
        fs::write(&tmp, b"left by a crash").unwrap();
        assert!(create(&path, &tmp, b"other").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"contents");
    }

    #[test]
    fn quarantine_keeps_earlier_files_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let aside = dir.path().join("quarantine");
        create_dir(&aside).unwrap();
        for body in [&b"one"[..], b"two"] {
            let path = dir.path().join("x.dl");
            fs::write(&path, body).unwrap();
            assert!(quarantine(&path, &aside).unwrap().is_some());
        }
        assert_eq!(fs::read_dir(&aside).unwrap().count(), 2);
        assert!(quarantine(&dir.path().join("gone"), &aside)
            .unwrap()
            .is_none());
    }

    #[test]
    fn temporary_files_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.tmp"), b"").unwrap();
        fs::write(dir.path().join("b.dl"), b"").unwrap();
        assert_eq!(
            remove_temporary(dir.path(), |n| n.ends_with(".tmp")).unwrap(),
            1
        );
        assert!(dir.path().join("b.dl").exists());
    }
}
