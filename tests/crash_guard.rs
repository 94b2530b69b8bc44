//! The crash guard against a real filesystem. Each `CrashGuard::open` is a new
//! process; `die` is that process ending without ending its range (SIGKILL,
//! an abort, the OOM killer), which dropping an `InFlight` never does.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Arc;

#[path = "common/fixtures.rs"]
mod fixtures;

use spansink::poison::crashguard::{CrashGuard, InFlight};
use spansink::poison::spool::{Spool, SpoolConfig};

const GROUP: &str = "spansink";
const TOPIC: &str = "otlp_spans";

fn process(dir: &Path, threshold: u32) -> Arc<CrashGuard> {
    Arc::new(CrashGuard::open(dir, threshold).unwrap())
}

/// The process dies with the range in flight.
fn die(in_flight: InFlight) {
    std::mem::forget(in_flight);
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn ranges_that_end_count_no_crash() {
    let dir = tempfile::tempdir().unwrap();
    let guard = process(dir.path(), 3);
    assert_eq!(guard.threshold(), 3);
    for first in [0, 100, 200] {
        let in_flight = guard.begin(GROUP, TOPIC, 0, first, first + 99).unwrap();
        assert_eq!(in_flight.crashes(), 0);
    }
    drop(guard);
    // A range that ended leaves nothing that a restart counts as a crash.
    let guard = process(dir.path(), 3);
    let first = guard.begin(GROUP, TOPIC, 0, 300, 399).unwrap();
    assert_eq!(first.crashes(), 0);
    die(first);
    // A retry of the same range by the same process is no crash either.
    assert_eq!(guard.begin(GROUP, TOPIC, 0, 300, 399).unwrap().crashes(), 0);
    assert!(CrashGuard::open(dir.path(), 0).is_err());
}

#[test]
fn deaths_on_overlapping_ranges_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let begin_after_crash = |first, last| {
        let in_flight = process(dir.path(), 3)
            .begin(GROUP, TOPIC, 4, first, last)
            .unwrap();
        let crashes = in_flight.crashes();
        die(in_flight);
        crashes
    };
    assert_eq!(begin_after_crash(10, 20), 0);
    assert_eq!(begin_after_crash(10, 20), 1);
    assert_eq!(begin_after_crash(15, 30), 2);
    // Other partitions are not affected.
    let guard = process(dir.path(), 3);
    assert_eq!(guard.begin(GROUP, TOPIC, 5, 10, 20).unwrap().crashes(), 0);
    assert_eq!(
        guard
            .begin(GROUP, "otlp_logs", 4, 10, 20)
            .unwrap()
            .crashes(),
        0
    );
    drop(guard);
    // The partition moved on: the count starts over.
    assert_eq!(begin_after_crash(31, 40), 0);
    assert_eq!(begin_after_crash(31, 40), 1);
}

#[test]
fn only_a_message_that_crashed_the_process_alone_is_convicted() {
    let dir = tempfile::tempdir().unwrap();
    let threshold = 2;
    let mut batch = 0;
    for _ in 0..threshold {
        let in_flight = process(dir.path(), threshold)
            .begin(GROUP, TOPIC, 0, 0, 9)
            .unwrap();
        batch = in_flight.crashes();
        die(in_flight);
    }
    assert_eq!(batch, 1);
    let guard = process(dir.path(), threshold);
    let whole = guard.begin(GROUP, TOPIC, 0, 0, 9).unwrap();
    assert_eq!(whole.crashes(), threshold);
    // Isolating: offsets 0..2 are fine, 3 kills the process.
    for offset in 0..3 {
        let one = guard.begin(GROUP, TOPIC, 0, offset, offset).unwrap();
        assert_eq!(one.crashes(), 0);
    }
    let one = guard.begin(GROUP, TOPIC, 0, 3, 3).unwrap();
    assert_eq!(one.crashes(), 0);
    die(one);
    die(whole);
    drop(guard);
    let mut count = 0;
    for expected in 1..=threshold {
        // The next process resumes at offset 3 and, isolating again, reaches it first.
        let guard = process(dir.path(), threshold);
        let batch = guard.begin(GROUP, TOPIC, 0, 3, 9).unwrap();
        let one = guard.begin(GROUP, TOPIC, 0, 3, 3).unwrap();
        count = one.crashes();
        assert_eq!(count, expected);
        die(one);
        die(batch);
    }
    assert!(count >= threshold, "offset 3 is dead-lettered");
}

#[test]
fn a_death_while_waiting_on_postgres_or_after_sigterm_is_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    die(process(dir.path(), 3).begin(GROUP, TOPIC, 0, 0, 9).unwrap());
    // Dies waiting for a lock, a commit, the pool or a backoff: no new crash.
    let mut waiting = process(dir.path(), 3).begin(GROUP, TOPIC, 0, 0, 9).unwrap();
    assert_eq!(waiting.crashes(), 1);
    waiting.set_waiting(true);
    die(waiting);
    let after_waiting = process(dir.path(), 3);
    let decoding = after_waiting.begin(GROUP, TOPIC, 0, 0, 9).unwrap();
    assert_eq!(decoding.crashes(), 1);
    // SIGTERM came, then the orchestrator's SIGKILL, mid-decode: no new crash.
    after_waiting.stopping().unwrap();
    die(decoding);
    let after_sigterm = process(dir.path(), 3);
    let in_flight = after_sigterm.begin(GROUP, TOPIC, 0, 0, 9).unwrap();
    assert_eq!(in_flight.crashes(), 1);
    // But a real death while working on it still counts.
    die(in_flight);
    assert_eq!(
        process(dir.path(), 3)
            .begin(GROUP, TOPIC, 0, 0, 9)
            .unwrap()
            .crashes(),
        2
    );
}

#[test]
fn a_torn_record_reads_as_no_crash() {
    let dir = tempfile::tempdir().unwrap();
    die(process(dir.path(), 3).begin(GROUP, TOPIC, 0, 0, 9).unwrap());
    let inflight = dir.path().join("inflight");
    let names = file_names(&inflight);
    assert_eq!(names.len(), 1, "one small file per partition");
    let record = inflight.join(&names[0]);
    let len = fs::metadata(&record).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&record)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let in_flight = process(dir.path(), 3).begin(GROUP, TOPIC, 0, 0, 9).unwrap();
    assert_eq!(in_flight.crashes(), 0);
    die(in_flight);
    // The record is whole again and counts the next crash.
    let next = process(dir.path(), 3).begin(GROUP, TOPIC, 0, 0, 9).unwrap();
    assert_eq!(next.crashes(), 1);
}

#[test]
fn the_crash_guard_lives_beside_the_spool_without_disturbing_it() {
    let dir = tempfile::tempdir().unwrap();
    let guard = process(dir.path(), 3);
    let _in_flight = guard.begin(GROUP, TOPIC, 0, 0, 9).unwrap();
    let spool = Spool::open(SpoolConfig {
        dir: dir.path().to_path_buf(),
        max_entries: 10,
        max_bytes: 1 << 20,
    })
    .unwrap();
    assert!(spool.list().unwrap().is_empty());
    assert_eq!(spool.quarantined().unwrap(), 0);
    assert_eq!(file_names(&dir.path().join("inflight")).len(), 1);
}

#[test]
fn a_record_left_by_the_previous_release_counts_its_crash() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::copy_dir(Path::new(fixtures::SPOOL_V1), dir.path());
    let guard = process(dir.path(), 3);
    // Offset 7 was alone in flight when that process died: it is the suspect.
    let again = guard.begin(GROUP, TOPIC, 0, 7, 7).unwrap();
    assert_eq!(again.crashes(), 1);
    die(again);
    // Rewritten in the current format, and read back by the next process.
    let next = process(dir.path(), 3);
    assert_eq!(next.begin(GROUP, TOPIC, 0, 7, 7).unwrap().crashes(), 2);
}
