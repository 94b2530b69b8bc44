//! Chaos: two instances over a stream with poison in it, while processes are
//! killed (SIGKILL, SIGTERM) and restarted, stopped past their session timeout
//! (SIGSTOP), their PostgreSQL connections terminated, the offsets rows
//! locked, and the brokers that lead the partitions taken down. At the end every good span is stored
//! exactly once, the dead letters on the DLQ topic are exactly the poison
//! messages (a copy republished after a kill between the broker's
//! acknowledgement and the spool delete is allowed: consumers drop it by id),
//! and the dead-letter ledger holds exactly them.
//!
//! Bounded for CI (about 90 s of chaos). `SPANSINK_CHAOS_SECS` runs it longer
//! and `SPANSINK_CHAOS_SEED` repeats a run; the seed is printed.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::exposition::metric_value;
use common::kafka::{header, produce, producer, read_all};
use common::spansink::{wait_for, Instance};
use common::traffic::{assert_traces_exact, generator, marked_message, span_count, stored_offsets};
use nix::sys::signal::{kill, Signal};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spansink::kafka::mock::MockKafka;
use spansink::poison::record::dead_letter_id;

const TOPIC: &str = "otlp_spans";
const DLQ: &str = "spansink.dlq";
const GROUP: &str = "g-chaos";
const PARTITIONS: i32 = 4;

/// One instance slot: its spool outlives each process in it.
struct Slot {
    spool: PathBuf,
    process: Option<Instance>,
}

impl Slot {
    fn start(&mut self, bootstrap: &str, db: &str) {
        self.process = Some(Instance::spawn_with_spool(
            bootstrap,
            db,
            GROUP,
            Some(&self.spool),
            &["--batch-max-messages=8"],
        ));
    }

    fn running(&mut self) -> &mut Instance {
        self.process.as_mut().expect("started")
    }
}

/// What was produced: good spans by partition end offset, and the poison.
#[derive(Default)]
struct Stream {
    good_spans: usize,
    poison: BTreeSet<(i32, i64)>,
    ends: std::collections::BTreeMap<i32, i64>,
}

async fn produce_stream(bootstrap: String, seed: u64, stop: Arc<AtomicBool>) -> Stream {
    let p = producer(&bootstrap);
    let mut gen = generator(seed, 4);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stream = Stream::default();
    let mut i = 0i32;
    while !stop.load(Ordering::SeqCst) {
        let partition = i % PARTITIONS;
        i += 1;
        let (offset, poison) = if rng.random_ratio(1, 20) {
            let (_, o) =
                produce(&p, TOPIC, partition, Some("acme"), b"\xff\xff chaos poison").await;
            (o, true)
        } else {
            let (tenant, payload, n) = marked_message(&mut gen, "good");
            let (_, o) = produce(&p, TOPIC, partition, Some(&tenant), &payload).await;
            stream.good_spans += n;
            (o, false)
        };
        if poison {
            stream.poison.insert((partition, offset));
        }
        stream.ends.insert(partition, offset + 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stream
}

/// Holds every `ingest_offsets` row locked for `hold`.
async fn lock_offsets(db_url: String, hold: Duration) {
    let Ok((mut client, conn)) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await
    else {
        return;
    };
    tokio::spawn(conn);
    let Ok(tx) = client.transaction().await else {
        return;
    };
    let _ = tx
        .query("SELECT * FROM ingest_offsets FOR UPDATE", &[])
        .await;
    tokio::time::sleep(hold).await;
    let _ = tx.rollback().await;
}

async fn terminate_connections(db_url: &str) {
    if let Ok((client, conn)) = tokio_postgres::connect(db_url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'spansink'
                   AND pid <> pg_backend_pid()",
                &[],
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_under_chaos_store_every_good_span_once_and_dead_letter_exactly_the_poison() {
    let secs: u64 = std::env::var("SPANSINK_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let seed: u64 = std::env::var("SPANSINK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos: {secs} s, SPANSINK_CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let db = TestDb::migrated().await;
    let kafka = MockKafka::start(3).expect("mock kafka");
    kafka.create_topic(TOPIC, PARTITIONS).expect("topic");
    kafka.create_topic(DLQ, 1).expect("dlq topic");
    // The group's coordinator apart from the partitions' leaders: a broker
    // outage stops fetching and publishing, not the group. (The mock's group
    // coordinator aborts the whole process on a SyncGroup resent across a
    // reconnect, which a real broker answers.)
    kafka.group_coordinator(GROUP, 1).expect("coordinator");
    for p in 0..PARTITIONS {
        kafka.partition_leader(TOPIC, p, 2 + p % 2).expect("leader");
    }
    kafka.partition_leader(DLQ, 0, 3).expect("leader");
    let bootstrap = kafka.bootstrap_servers().to_string();
    let spools = tempfile::tempdir().expect("spools");
    let mut slots: Vec<Slot> = (0..2)
        .map(|i| Slot {
            spool: spools.path().join(format!("spool-{i}")),
            process: None,
        })
        .collect();
    for slot in &mut slots {
        slot.start(&bootstrap, &db.url);
    }
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn(produce_stream(
        bootstrap.clone(),
        seed,
        stop_producing.clone(),
    ));
    wait_for("ingest under way", Duration::from_secs(60), || async {
        span_count(&db).await > 0
    })
    .await;

    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut actions = Vec::new();
    while Instant::now() < deadline {
        let slot = rng.random_range(0..slots.len());
        let action = rng.random_range(0..6);
        match action {
            0 => {
                actions.push(format!("kill -9 instance {slot}"));
                slots[slot].running().kill9();
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                slots[slot].start(&bootstrap, &db.url);
            }
            1 => {
                actions.push(format!("SIGSTOP instance {slot} past its session timeout"));
                let pid = slots[slot].running().pid();
                let _ = kill(pid, Signal::SIGSTOP);
                tokio::time::sleep(Duration::from_millis(rng.random_range(7000..9000))).await;
                let _ = kill(pid, Signal::SIGCONT);
            }
            2 => {
                actions.push("pg_terminate_backend".to_string());
                terminate_connections(&db.url).await;
            }
            3 => {
                let hold = Duration::from_millis(rng.random_range(2000..8000));
                actions.push(format!("offsets rows locked for {hold:?}"));
                lock_offsets(db.url.clone(), hold).await;
            }
            4 => {
                let down = Duration::from_millis(rng.random_range(2000..6000));
                actions.push(format!("every partition leader down for {down:?}"));
                for broker in [2, 3] {
                    kafka.broker_down(broker).expect("down");
                }
                tokio::time::sleep(down).await;
                for broker in [2, 3] {
                    kafka.broker_up(broker).expect("up");
                }
            }
            _ => {
                actions.push(format!("SIGTERM and restart instance {slot}"));
                let running = slots[slot].running();
                running.sigterm();
                let _ = running.wait_exit(Duration::from_secs(40));
                slots[slot].start(&bootstrap, &db.url);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4000))).await;
    }
    stop_producing.store(true, Ordering::SeqCst);
    let stream = producing.await.expect("producer");
    eprintln!("chaos actions: {actions:#?}");
    for slot in &mut slots {
        if !slot.running().is_running() {
            slot.start(&bootstrap, &db.url);
        }
    }

    let expected_ids: BTreeSet<String> = stream
        .poison
        .iter()
        .map(|(p, o)| dead_letter_id(GROUP, TOPIC, *p, *o))
        .collect();
    wait_for(
        "every message committed and every dead letter published",
        Duration::from_secs(180),
        || async {
            let offsets = stored_offsets(&db, GROUP, TOPIC).await;
            let published: BTreeSet<String> = read_all(&bootstrap, DLQ)
                .iter()
                .filter_map(|r| header(r, "spansink.dlq.id"))
                .collect();
            offsets == stream.ends && published == expected_ids
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        span_count(&db).await as usize,
        stream.good_spans,
        "every good span, once (seed {seed})"
    );
    assert_traces_exact(&db).await;
    let published: BTreeSet<String> = read_all(&bootstrap, DLQ)
        .iter()
        .filter_map(|r| header(r, "spansink.dlq.id"))
        .collect();
    assert_eq!(
        published, expected_ids,
        "the DLQ holds exactly the poison (seed {seed})"
    );
    let ledger: BTreeSet<(i32, i64)> = db
        .client()
        .await
        .query(
            "SELECT partition, \"offset\" FROM dead_letters WHERE consumer_group = $1 AND topic = $2",
            &[&GROUP, &TOPIC],
        )
        .await
        .expect("ledger")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        ledger, stream.poison,
        "the ledger holds exactly the poison (seed {seed})"
    );
    for slot in &mut slots {
        let metrics = slot.running().scrape().await;
        assert!(
            metric_value(&metrics, "spansink_partition_worker_overlaps_total", &[]) == Some(0.0),
            "one worker per partition:\n{metrics}"
        );
    }
}
