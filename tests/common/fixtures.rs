//! Files written by an earlier release, which this one must still read.
#![allow(dead_code)]

use std::path::Path;

/// A spool directory written by the release before the crash guard's format
/// version 2: `spool.id`, one dead letter (group `spansink`, topic
/// `otlp_spans`, partition 0, offset 5, reason `bad_protobuf`) and a crash-guard
/// record of offset 7 alone in flight in a process that died.
pub const SPOOL_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-v1");
pub const SPOOL_V1_ID: &str = "3e05e580d0362c2817a1dbf91f7c39c3";
pub const SPOOL_V1_ENTRY: &str = "c26854a901d3602b-0-5";

/// Copies a fixture directory, so that a test may change its copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
