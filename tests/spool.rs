//! The poison spool against a real filesystem.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use spansink::cmd::spool::{format_list, format_show};
use spansink::error::{Class, Error};
use spansink::otlp::spansink::v1::{DeadLetter, Header};
use spansink::poison::record::dead_letter_id;
use spansink::poison::spool::{self, PutOutcome, Spool, SpoolConfig};

const GROUP: &str = "spansink";
const TOPIC: &str = "otlp_spans";

fn letter(offset: i64) -> DeadLetter {
    DeadLetter {
        id: dead_letter_id(GROUP, TOPIC, 1, offset),
        group: GROUP.into(),
        topic: TOPIC.into(),
        partition: 1,
        offset,
        timestamp_ms: Some(1_700_000_000_000),
        key: None,
        headers: vec![
            Header {
                key: "X-Scope-OrgID".into(),
                value: Some(b"acme".to_vec()),
            },
            Header {
                key: "trace".into(),
                value: Some(vec![0xff, 0xfe]),
            },
        ],
        payload: vec![0x0a, 0xff, 0xff, 0x01],
        tenant: Some("acme".into()),
        stage: "decode".into(),
        reason: "bad_protobuf".into(),
        error: "bad_protobuf: buffer underflow".into(),
        sqlstate: None,
        attempts: 1,
        first_failure_unix_ms: 1_700_000_001_000,
        instance: "host-1".into(),
        version: "0.1.0".into(),
        spool_id: String::new(),
    }
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_entries: 1000,
        max_bytes: 1 << 30,
    }
}

/// What the spool keeps besides entries: its lock, its id, and the folders
/// for damaged and oversize entries.
const SPOOL_OWN: [&str; 4] = [".lock", "oversize", "quarantine", "spool.id"];

fn with_own(entries: &[String]) -> Vec<String> {
    let mut all: Vec<String> = entries.to_vec();
    all.extend(SPOOL_OWN.iter().map(|s| s.to_string()));
    all.sort();
    all
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn entry_path(dir: &Path, d: &DeadLetter) -> PathBuf {
    dir.join(format!("{}.dl", d.id))
}

fn io_kind(e: &Error) -> Option<ErrorKind> {
    match e {
        Error::Io { source, .. } => Some(source.kind()),
        _ => None,
    }
}

/// Runs `f` with a recorder of its own and returns the value of one metric.
fn with_metrics<T>(metric: &str, f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let recorder: PrometheusRecorder = PrometheusBuilder::new().build_recorder();
    let out = metrics::with_local_recorder(&recorder, f);
    let text = recorder.handle().render();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok());
    (out, value)
}

#[test]
fn an_entry_reads_back_as_put_stays_one_entry_when_put_again_and_is_gone_once_removed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let d = letter(42);

    assert_eq!(spool.put(&d).unwrap(), PutOutcome::Written);
    let listed = spool.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, d.id);
    assert_eq!(
        listed[0].bytes,
        fs::metadata(entry_path(dir.path(), &d)).unwrap().len()
    );
    assert_eq!(spool.read(&d.id).unwrap(), d);

    // The same poison spooled again (after a crash, a lost fence) is one entry.
    let mut again = d.clone();
    again.attempts = 2;
    assert_eq!(spool.put(&again).unwrap(), PutOutcome::AlreadyPresent);
    assert_eq!(spool.list().unwrap().len(), 1);
    assert_eq!(spool.read(&d.id).unwrap().attempts, 1);
    assert_eq!(file_names(dir.path()), with_own(&[format!("{}.dl", d.id)]));

    spool.remove(&d.id).unwrap();
    assert!(spool.list().unwrap().is_empty());
    assert!(!entry_path(dir.path(), &d).exists());
    let gone = spool.read(&d.id).unwrap_err();
    assert_eq!(io_kind(&gone), Some(ErrorKind::NotFound));
    assert_eq!(gone.class(), Class::Transient);
    // Removing twice (an ack replayed) is fine.
    spool.remove(&d.id).unwrap();
    assert_eq!(spool.stats().entries, 0);
}

#[test]
fn an_entry_is_complete_on_disk_once_put_returns() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let d = letter(7);
    spool.put(&d).unwrap();

    assert_eq!(file_names(dir.path()), with_own(&[format!("{}.dl", d.id)]));
    let on_disk = fs::read(entry_path(dir.path(), &d)).unwrap();
    assert_eq!(on_disk, spool::encode(&d).unwrap());
    assert_eq!(spool::decode(&on_disk).unwrap(), d);

    // A new process sees it as it was.
    drop(spool);
    let reopened = Spool::open(config(dir.path())).unwrap();
    assert_eq!(reopened.read(&d.id).unwrap(), d);
}

#[test]
fn damaged_entries_are_quarantined_at_open_and_good_ones_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let spool = Spool::open(config(path)).unwrap();
    let letters: Vec<DeadLetter> = (1..=4).map(letter).collect();
    for d in &letters {
        spool.put(d).unwrap();
    }
    drop(spool);

    // Torn: cut to half its length.
    let torn = entry_path(path, &letters[0]);
    let len = fs::metadata(&torn).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&torn)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // Corrupt: one bit flipped in the body.
    let corrupt = entry_path(path, &letters[1]);
    let mut bytes = fs::read(&corrupt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&corrupt, bytes).unwrap();
    // Garbage under an entry's name, and an unfinished write.
    fs::write(
        path.join("0000000000000000-0-0.dl"),
        b"not a spool entry at all",
    )
    .unwrap();
    fs::write(path.join(format!(".{}.9.tmp", letters[2].id)), b"SPDL").unwrap();

    let (spool, quarantined) = with_metrics("spansink_spool_quarantined_total", || {
        Spool::open(config(path)).unwrap()
    });
    assert_eq!(quarantined, Some(3.0));
    assert_eq!(spool.quarantined().unwrap(), 3);
    let mut moved = file_names(&path.join("quarantine"));
    moved.sort();
    let mut expected = vec![
        format!("{}.dl", letters[0].id),
        format!("{}.dl", letters[1].id),
        "0000000000000000-0-0.dl".to_string(),
    ];
    expected.sort();
    assert_eq!(moved, expected, "quarantined, not deleted");

    let listed: Vec<String> = spool.list().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(listed.len(), 2);
    for d in &letters[2..] {
        assert!(listed.contains(&d.id));
        assert_eq!(spool.read(&d.id).unwrap(), *d);
    }
    assert!(
        !file_names(path).iter().any(|n| n.ends_with(".tmp")),
        "leftover temporary files are removed"
    );
    assert_eq!(spool.stats().entries, 2);
}

#[test]
fn an_entry_damaged_after_open_is_quarantined_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let d = letter(5);
    spool.put(&d).unwrap();
    fs::write(entry_path(dir.path(), &d), b"SPDL\x01garbage").unwrap();

    let err = spool.read(&d.id).unwrap_err();
    assert_eq!(io_kind(&err), Some(ErrorKind::InvalidData));
    assert!(err.to_string().contains("quarantine"), "{err}");
    assert!(spool.list().unwrap().is_empty());
    assert!(dir
        .path()
        .join("quarantine")
        .join(format!("{}.dl", d.id))
        .exists());
}

#[test]
fn an_entry_under_another_entrys_name_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let (a, b) = (letter(1), letter(2));
    spool.put(&a).unwrap();
    drop(spool);
    fs::rename(entry_path(dir.path(), &a), entry_path(dir.path(), &b)).unwrap();

    let spool = Spool::open(config(dir.path())).unwrap();
    assert!(spool.list().unwrap().is_empty());
    assert_eq!(spool.quarantined().unwrap(), 1);
}

#[test]
fn invalid_ids_are_refused_before_touching_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let mut d = letter(1);
    d.id = "../escape".into();
    assert_eq!(spool.put(&d).unwrap_err().class(), Class::Fatal);
    assert!(spool.read("../escape").is_err());
    assert!(!dir.path().parent().unwrap().join("escape.dl").exists());
}

#[test]
fn the_spool_reports_full_at_either_limit_yet_never_refuses_a_put() {
    let dir = tempfile::tempdir().unwrap();
    let by_entries = Spool::open(SpoolConfig {
        max_entries: 2,
        ..config(dir.path())
    })
    .unwrap();
    by_entries.put(&letter(1)).unwrap();
    assert!(!by_entries.is_full());
    by_entries.put(&letter(2)).unwrap();
    assert!(by_entries.is_full());
    // Full never refuses: the poison is already identified.
    assert_eq!(by_entries.put(&letter(3)).unwrap(), PutOutcome::Written);
    by_entries.remove(&letter(3).id).unwrap();
    by_entries.remove(&letter(2).id).unwrap();
    assert!(!by_entries.is_full());
    drop(by_entries);

    let one = spool::encode(&letter(1)).unwrap().len() as u64;
    let by_bytes = Spool::open(SpoolConfig {
        max_entries: 1000,
        max_bytes: one * 2,
        ..config(dir.path())
    })
    .unwrap();
    assert_eq!(by_bytes.stats().bytes, one, "totals are rebuilt at open");
    assert!(!by_bytes.is_full());
    by_bytes.put(&letter(2)).unwrap();
    assert!(by_bytes.is_full());
}

#[test]
fn stats_track_totals_and_the_oldest_entry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    assert_eq!(spool.stats().oldest, None);
    for offset in 1..=3 {
        spool.put(&letter(offset)).unwrap();
    }
    drop(spool);

    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let old = entry_path(dir.path(), &letter(2));
    OpenOptions::new()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    let (spool, age) = with_metrics("spansink_spool_oldest_entry_age_seconds", || {
        Spool::open(config(dir.path())).unwrap()
    });
    let stats = spool.stats();
    assert_eq!(stats.entries, 3);
    let on_disk: u64 = (1..=3)
        .map(|o| {
            fs::metadata(entry_path(dir.path(), &letter(o)))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(stats.bytes, on_disk);
    // Some filesystems keep coarser timestamps than the clock.
    let skew = match stats.oldest.unwrap().duration_since(hour_ago) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew < Duration::from_secs(2), "oldest is the aged entry");
    let age = age.unwrap();
    assert!((3600.0..3700.0).contains(&age), "age {age}");
    assert_eq!(spool.list().unwrap()[0].id, letter(2).id, "oldest first");

    let (_, entries) = with_metrics("spansink_spool_entries", || {
        spool.remove(&letter(2).id).unwrap()
    });
    assert_eq!(entries, Some(2.0));
    assert!(spool.stats().oldest.unwrap() > hour_ago);
}

#[test]
fn concurrent_puts_of_one_poison_leave_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path())).unwrap();
    let d = letter(9);
    let outcomes: Vec<PutOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| spool.put(&d).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == PutOutcome::Written)
            .count(),
        1
    );
    assert_eq!(spool.stats().entries, 1);
    assert_eq!(
        spool.stats().bytes,
        fs::metadata(entry_path(dir.path(), &d)).unwrap().len()
    );
    assert_eq!(
        file_names(dir.path()),
        with_own(&[format!("{}.dl", d.id)]),
        "no temporary file left"
    );
    assert_eq!(spool.read(&d.id).unwrap(), d);
}

#[test]
fn read_only_open_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let spool = Spool::open(config(path)).unwrap();
    let (good, bad) = (letter(1), letter(2));
    spool.put(&good).unwrap();
    spool.put(&bad).unwrap();
    drop(spool);
    fs::write(entry_path(path, &bad), b"garbage").unwrap();
    fs::write(path.join(".x.1.tmp"), b"").unwrap();
    let before = file_names(path);

    let spool = Spool::open_read_only(path).unwrap();
    assert_eq!(spool.list().unwrap().len(), 2);
    assert_eq!(spool.read(&good.id).unwrap(), good);
    assert_eq!(
        io_kind(&spool.read(&bad.id).unwrap_err()),
        Some(ErrorKind::InvalidData)
    );
    assert!(spool.put(&letter(3)).is_err());
    assert!(spool.remove(&good.id).is_err());
    assert_eq!(file_names(path), before);
    assert_eq!(spool.quarantined().unwrap(), 0);

    let missing = Spool::open_read_only(&path.join("nope")).unwrap_err();
    assert_eq!(io_kind(&missing), Some(ErrorKind::NotFound));
}

#[test]
fn list_and_show_print_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let spool = Spool::open(config(path)).unwrap();
    let (good, bad) = (letter(1), letter(2));
    spool.put(&good).unwrap();
    spool.put(&bad).unwrap();
    drop(spool);
    fs::write(entry_path(path, &bad), b"garbage").unwrap();

    let spool = Spool::open_read_only(path).unwrap();
    let list = format_list(&spool).unwrap();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    let line = lines.iter().find(|l| l.starts_with(&good.id)).unwrap();
    for part in [
        "otlp_spans/1@1",
        "tenant=acme",
        "stage=decode",
        "reason=bad_protobuf",
    ] {
        assert!(line.contains(part), "{line:?} lacks {part:?}");
    }
    let created = spool.list().unwrap()[0].created;
    let day = humantime::format_rfc3339_seconds(created).to_string();
    assert!(line.contains(&day[..10]), "{line:?}");
    let bad_line = lines.iter().find(|l| l.starts_with(&bad.id)).unwrap();
    assert!(bad_line.contains("unreadable"), "{bad_line:?}");
    assert!(lines[2].starts_with("2 entries, "), "{:?}", lines[2]);

    let show = format_show(&spool, &good.id).unwrap();
    for part in [
        good.id.as_str(),
        "otlp_spans",
        "offset:         1",
        "first failure:  2023-11-14T22:13:21.000Z",
        "2023-11-14T22:13:20.000Z",
        "bad_protobuf: buffer underflow",
        "host-1",
        "4 bytes: 0affff01",
        "X-Scope-OrgID=acme",
        "trace=hex:fffe",
    ] {
        assert!(show.contains(part), "{show} lacks {part:?}");
    }
    assert!(format_show(&spool, &bad.id).is_err());
}
