//! Scale-out, black box: three replicas in one consumer group share an
//! 8-partition topic under a steady stream; a fourth joins, then one of the
//! first three is stopped with SIGTERM, as a StatefulSet scaled down stops it.
//! Throughout, PostgreSQL holds exactly the spans below its stored offsets
//! (read in one snapshot), the stored offsets never move back, and Kafka's
//! committed offsets never pass PostgreSQL's; at the end every span is stored
//! once and both offsets stand at the end of every partition.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::db::TestDb;
use common::exposition::metric_value;
use common::kafka::{committed_offsets, end_offsets, read_all, DLQ, TOPIC};
use common::spansink::{binary, wait_for, Instance};
use common::traffic::{assert_traces_exact, generator, produce_traffic, Produced};

const GROUP: &str = "g-scale";
const PARTITIONS: i32 = 8;
const WAVES: usize = 40;
/// Messages per wave: the same number on every partition.
const WAVE: usize = 6 * PARTITIONS as usize;
const SPANS_PER_MESSAGE: usize = 4;

fn spawn(bootstrap: &str, db: &TestDb) -> Instance {
    Instance::spawn(bootstrap, &db.url, GROUP, &["--batch-max-messages=50"])
}

/// Partitions this instance holds now (0 while it is not up).
async fn assigned(instance: &Instance) -> usize {
    metric_value(
        &instance.scrape().await,
        "spansink_assigned_partitions",
        &[],
    )
    .unwrap_or(0.0) as usize
}

/// Whether each of `instances` holds at least one partition and together
/// they hold every partition once.
async fn shared_by(instances: &[&Instance]) -> bool {
    let mut total = 0;
    for instance in instances {
        let n = assigned(instance).await;
        if n == 0 {
            return false;
        }
        total += n;
    }
    total == PARTITIONS as usize
}

/// Waits until `instances` share the partitions, as [`shared_by`] tells.
async fn wait_until_shared(what: &str, instances: &[&Instance]) {
    wait_for(what, Duration::from_secs(60), || shared_by(instances)).await;
}

/// One consistent look at PostgreSQL: the stored offsets and the span counts
/// of the same snapshot.
struct Snapshot {
    offsets: BTreeMap<i32, i64>,
    spans: i64,
    distinct: i64,
}

async fn snapshot(db: &TestDb) -> Snapshot {
    let mut client = db.client().await;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .expect("begin");
    let offsets = tx
        .query(
            "SELECT partition, next_offset FROM ingest_offsets WHERE consumer_group = $1 AND topic = $2",
            &[&GROUP, &TOPIC],
        )
        .await
        .expect("offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let counts = tx
        .query_one(
            "SELECT count(*), count(DISTINCT (tenant_id, trace_id, span_id, start_time)) FROM spans",
            &[],
        )
        .await
        .expect("counts");
    tx.commit().await.expect("commit");
    Snapshot {
        offsets,
        spans: counts.get(0),
        distinct: counts.get(1),
    }
}

/// Whether `produced` knows every message below `offsets`: a message can be
/// stored before its producer has recorded the acknowledgement.
fn covers(produced: &Produced, offsets: &BTreeMap<i32, i64>) -> bool {
    let ends = produced.end_offsets();
    offsets
        .iter()
        .all(|(p, next)| ends.get(p).copied().unwrap_or(0) >= *next)
}

/// Samples the offsets until `stop`; returns the samples taken and every
/// violation seen.
async fn watch_offsets(
    db: &TestDb,
    bootstrap: &str,
    produced: &Mutex<Produced>,
    stop: &AtomicBool,
) -> (usize, Vec<String>) {
    let mut violations = Vec::new();
    let mut samples = 0;
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        // Kafka first: PostgreSQL's offsets only grow, so a Kafka offset read
        // earlier may never pass them.
        let kafka = {
            let bootstrap = bootstrap.to_string();
            tokio::task::spawn_blocking(move || {
                committed_offsets(&bootstrap, GROUP, TOPIC, PARTITIONS)
            })
            .await
            .expect("committed offsets")
        };
        let snap = snapshot(db).await;
        samples += 1;
        for (p, committed) in kafka.iter().enumerate() {
            let stored = snap.offsets.get(&(p as i32)).copied().unwrap_or(0);
            if let Some(committed) = committed {
                if *committed > stored {
                    violations.push(format!(
                        "partition {p}: Kafka committed {committed}, PostgreSQL stored {stored}"
                    ));
                }
            }
        }
        for (p, before) in &last {
            let now = snap.offsets.get(p).copied().unwrap_or(0);
            if now < *before {
                violations.push(format!(
                    "partition {p}: stored offset moved back from {before} to {now}"
                ));
            }
        }
        if snap.distinct != snap.spans {
            violations.push(format!(
                "{} spans stored, {} distinct",
                snap.spans, snap.distinct
            ));
        }
        // The producer records acknowledgements a wave at a time.
        let mut expected = None;
        for _ in 0..100 {
            let known = produced.lock().expect("produced").clone();
            if covers(&known, &snap.offsets) {
                expected = Some(known.spans_below(&snap.offsets) as i64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match expected {
            Some(expected) if expected != snap.spans => violations.push(format!(
                "offsets {:?}: {} spans stored, {expected} produced below them",
                snap.offsets, snap.spans
            )),
            Some(_) => {}
            None => violations.push(format!("offsets {:?} past what was produced", snap.offsets)),
        }
        last = snap.offsets;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (samples, violations)
}

/// `spansink healthcheck` against `addr`: whether it exited 0.
fn healthcheck(addr: &str) -> bool {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("SPANSINK_") {
            cmd.env_remove(k);
        }
    }
    cmd.args([
        "healthcheck",
        &format!("--metrics-addr={addr}"),
        "--timeout=2s",
    ])
    .output()
    .expect("healthcheck")
    .status
    .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_and_leave_under_load_and_store_every_span_once() {
    let db = Arc::new(TestDb::migrated().await);
    let (_kafka, bootstrap) = common::kafka::cluster(PARTITIONS, true);

    let mut first: Vec<Instance> = (0..3).map(|_| spawn(&bootstrap, &db)).collect();
    wait_until_shared(
        "three replicas sharing the partitions",
        &first.iter().collect::<Vec<_>>(),
    )
    .await;

    let produced = Arc::new(Mutex::new(Produced::default()));
    let producing = tokio::spawn({
        let (bootstrap, produced) = (bootstrap.clone(), produced.clone());
        async move {
            let mut gen = generator(90, SPANS_PER_MESSAGE);
            for _ in 0..WAVES {
                let wave = produce_traffic(&bootstrap, TOPIC, PARTITIONS, WAVE, &mut gen).await;
                produced.lock().expect("produced").extend(wave);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let watching = tokio::spawn({
        let (db, bootstrap, produced, stop) = (
            db.clone(),
            bootstrap.clone(),
            produced.clone(),
            stop.clone(),
        );
        async move { watch_offsets(&db, &bootstrap, &produced, &stop).await }
    });

    // Scale out: a fourth replica takes partitions over from the three.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fourth = spawn(&bootstrap, &db);
    wait_until_shared(
        "four replicas sharing the partitions",
        &first.iter().chain([&fourth]).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        !producing.is_finished(),
        "the stream must still run while the group grows: make it longer"
    );

    // Scale in: one of the first three is stopped as an orchestrator stops it,
    // mid-stream, and its partitions move to the others.
    let mut leaving = first.remove(0);
    assert!(assigned(&leaving).await > 0);
    let leaving_addr = leaving.metrics_addr.clone();
    assert!(healthcheck(&leaving_addr), "{}", leaving.logs());
    leaving.sigterm();
    let status = leaving
        .wait_exit(Duration::from_secs(30))
        .expect("exits within its drain after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        leaving.logs()
    );
    assert!(
        !healthcheck(&leaving_addr),
        "the health check fails once the instance is gone"
    );
    wait_until_shared(
        "three replicas sharing the partitions again",
        &first.iter().chain([&fourth]).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        !producing.is_finished(),
        "the stream must still run while the group shrinks: make it longer"
    );

    producing.await.expect("producer");
    let produced = produced.lock().expect("produced").clone();
    let ends = produced.end_offsets();
    assert_eq!(ends.len(), PARTITIONS as usize);
    wait_for(
        "both offsets at the end of every partition",
        Duration::from_secs(90),
        || async {
            let snap = snapshot(&db).await;
            let kafka = committed_offsets(&bootstrap, GROUP, TOPIC, PARTITIONS);
            snap.offsets == ends
                && kafka
                    .iter()
                    .enumerate()
                    .all(|(p, o)| *o == ends.get(&(p as i32)).copied())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (samples, violations) = watching.await.expect("offset watcher");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(samples >= 20, "only {samples} offset samples");
    eprintln!(
        "{samples} offset samples, {} spans in {} messages",
        produced.total_spans(),
        WAVES * WAVE
    );

    let snap = snapshot(&db).await;
    assert_eq!(snap.spans as usize, produced.total_spans());
    assert_eq!(snap.distinct, snap.spans);
    assert_eq!(produced.total_spans(), WAVES * WAVE * SPANS_PER_MESSAGE);
    assert_traces_exact(&db).await;
    let broker_ends = end_offsets(&bootstrap, TOPIC, PARTITIONS);
    assert_eq!(
        broker_ends,
        (0..PARTITIONS).map(|p| ends[&p]).collect::<Vec<_>>()
    );
    assert!(
        read_all(&bootstrap, DLQ).is_empty(),
        "nothing dead-lettered"
    );
    for instance in first.iter().chain([&fourth]) {
        assert_eq!(
            metric_value(
                &instance.scrape().await,
                "spansink_partition_worker_overlaps_total",
                &[]
            ),
            Some(0.0)
        );
    }
}
