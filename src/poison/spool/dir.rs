//! The spool directory itself: one owner at a time, and a name of its own.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use super::entry::TMP_SUFFIX;
use crate::error::{Error, Result};
use crate::poison::durable;

const LOCK_FILE: &str = ".lock";
pub(super) const ID_FILE: &str = "spool.id";

/// Files of the directory that are neither entries nor temporary files.
pub(super) fn is_own_file(name: &str) -> bool {
    name == LOCK_FILE || name == ID_FILE
}

/// Takes the directory's exclusive lock, or says who holds it.
pub(super) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| durable::io_at(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::config(
            "--spool-dir",
            format!(
                "{} is in use by another spansink process; each instance needs a spool directory of its own",
                dir.display()
            ),
        )),
        Err(fs::TryLockError::Error(e)) => Err(durable::io_at(&path, e)),
    }
}

/// The spool's id, if it has one.
pub(super) fn read_id(dir: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(dir.join(ID_FILE)) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The spool's id; made, durably, at its first open.
pub(super) fn read_or_make_id(dir: &Path) -> Result<String> {
    let path = dir.join(ID_FILE);
    if let Some(id) = read_id(dir).map_err(|e| durable::io_at(&path, e))? {
        return Ok(id);
    }
    let id = format!("{:032x}", rand::random::<u128>());
    let tmp = dir.join(format!(".{ID_FILE}{TMP_SUFFIX}"));
    let _ = fs::remove_file(&tmp);
    durable::create(&path, &tmp, id.as_bytes())?;
    Ok(id)
}
