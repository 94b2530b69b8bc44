//! Recovery end to end: SIGKILL and restart, a rebalance between two
//! instances, PostgreSQL connections killed mid-stream, a panic in the write
//! path, and SIGTERM under load. Every span is stored exactly once.

mod common;

use std::time::Duration;

use common::db::TestDb;
use common::exposition::{metric_max, samples, series};
use common::kafka::{committed_offsets, end_offsets, produce, producer, TOPIC};
use common::spansink::{wait_for, Instance};
use common::traffic::{
    assert_traces_exact, generator, marked_message, produce_traffic, span_count, stored_offsets,
};
use spansink::kafka::mock::MockKafka;

fn cluster(partitions: i32) -> (MockKafka, String) {
    common::kafka::cluster(partitions, false)
}

async fn wait_stored(db: &TestDb, group: &str, expected_spans: usize, timeout: Duration) {
    wait_for(
        &format!("{expected_spans} spans stored"),
        timeout,
        || async { span_count(db).await == expected_spans as i64 },
    )
    .await;
    // And nothing more arrives after a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(span_count(db).await, expected_spans as i64);
    let _ = group;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_stores_every_span_once() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(4);
    let mut gen = generator(1, 40);
    let mut produced = produce_traffic(&bootstrap, TOPIC, 4, 400, &mut gen).await;

    // One message per transaction keeps the stream long enough to kill it midway.
    let mut first = Instance::spawn(&bootstrap, &db.url, "g-kill", &["--batch-max-messages=1"]);
    wait_for(
        "some batches committed",
        Duration::from_secs(30),
        || async { span_count(&db).await > 0 },
    )
    .await;
    first.kill9();
    let stored_at_kill = span_count(&db).await as usize;
    assert!(
        stored_at_kill < produced.total_spans(),
        "killed mid-stream, not after the end"
    );

    produced.extend(produce_traffic(&bootstrap, TOPIC, 4, 40, &mut gen).await);
    let _second = Instance::spawn(&bootstrap, &db.url, "g-kill", &[]);
    wait_stored(
        &db,
        "g-kill",
        produced.total_spans(),
        Duration::from_secs(60),
    )
    .await;
    assert_traces_exact(&db).await;
    assert_eq!(
        stored_offsets(&db, "g-kill", TOPIC).await,
        produced.end_offsets()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_a_rebalance_mid_stream_store_every_span_once() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(4);
    let mut gen = generator(2, 30);
    let mut produced = produce_traffic(&bootstrap, TOPIC, 4, 120, &mut gen).await;

    let mut a = Instance::spawn(&bootstrap, &db.url, "g-two", &["--batch-max-messages=5"]);
    wait_for("a started", Duration::from_secs(30), || async {
        span_count(&db).await > 0
    })
    .await;
    let b = Instance::spawn(&bootstrap, &db.url, "g-two", &["--batch-max-messages=5"]);
    produced.extend(produce_traffic(&bootstrap, TOPIC, 4, 120, &mut gen).await);
    wait_for("b took partitions", Duration::from_secs(30), || async {
        b.logs().contains("partition assigned")
    })
    .await;
    produced.extend(produce_traffic(&bootstrap, TOPIC, 4, 80, &mut gen).await);
    // A leaves: its partitions move to B.
    a.sigterm();
    assert!(a
        .wait_exit(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    produced.extend(produce_traffic(&bootstrap, TOPIC, 4, 40, &mut gen).await);

    wait_stored(
        &db,
        "g-two",
        produced.total_spans(),
        Duration::from_secs(60),
    )
    .await;
    assert_traces_exact(&db).await;
    assert_eq!(
        stored_offsets(&db, "g-two", TOPIC).await,
        produced.end_offsets()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_stream_lose_and_duplicate_nothing() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(4);
    let mut gen = generator(3, 40);
    let mut instance =
        Instance::spawn(&bootstrap, &db.url, "g-pgkill", &["--batch-max-messages=4"]);
    let mut produced = produce_traffic(&bootstrap, TOPIC, 4, 8, &mut gen).await;
    wait_for("ingest under way", Duration::from_secs(30), || async {
        span_count(&db).await > 0
    })
    .await;
    // Kill spansink's connections while they are inside a statement or a
    // transaction, for as long as traffic flows.
    let killer = tokio::spawn({
        let url = db.url.clone();
        async move {
            let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("admin");
            tokio::spawn(conn);
            let mut killed = 0i64;
            for _ in 0..600 {
                let row = admin
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = current_database() AND application_name = 'spansink'
                           AND state IN ('active', 'idle in transaction') AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .expect("terminate");
                killed += row.get::<_, i64>(0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            killed
        }
    });
    for _ in 0..10 {
        produced.extend(produce_traffic(&bootstrap, TOPIC, 4, 20, &mut gen).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let killed = killer.await.expect("killer");
    assert!(
        killed > 0,
        "the test must kill connections mid-transaction to mean anything"
    );
    wait_stored(
        &db,
        "g-pgkill",
        produced.total_spans(),
        Duration::from_secs(90),
    )
    .await;
    assert!(
        instance.is_running(),
        "spansink must survive killed connections"
    );
    assert_traces_exact(&db).await;
    assert_eq!(
        stored_offsets(&db, "g-pgkill", TOPIC).await,
        produced.end_offsets()
    );
    let metrics = instance.scrape().await;
    assert!(
        series(&samples(&metrics), "spansink_transient_retries_total", &[]).any(|s| s.value != 0.0),
        "retries are counted:\n{metrics}\n{}",
        instance.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_write_path_rolls_back_and_dead_letters_only_its_message() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(2);
    let mut gen = generator(4, 10);
    let p = producer(&bootstrap);
    // Partition 0: two good messages, then the marker, then another good one,
    // all in one batch.
    let mut good0 = 0;
    let mut marker_offset = 0;
    for name in ["ordinary", "ordinary", "panic-marker", "ordinary"] {
        let (tenant, payload, n) = marked_message(&mut gen, name);
        let (_, offset) = produce(&p, TOPIC, 0, Some(&tenant), &payload).await;
        if name == "panic-marker" {
            marker_offset = offset;
        } else {
            good0 += n;
        }
    }
    // Partition 1 is unaffected.
    let mut other = 0;
    let mut other_end = 0;
    for _ in 0..5 {
        let (tenant, payload, n) = marked_message(&mut gen, "ordinary");
        let (_, offset) = produce(&p, TOPIC, 1, Some(&tenant), &payload).await;
        other += n;
        other_end = offset + 1;
    }

    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-panic",
        &[
            "--batch-max-messages=10",
            "--batch-linger=1s",
            "--fault-panic-span-name=panic-marker",
        ],
    );
    wait_for(
        "both partitions at their end",
        Duration::from_secs(60),
        || async {
            let offsets = stored_offsets(&db, "g-panic", TOPIC).await;
            offsets.get(&0) == Some(&4) && offsets.get(&1) == Some(&other_end)
        },
    )
    .await;
    let client = db.client().await;
    let marked: i64 = client
        .query_one(
            "SELECT count(*) FROM spans WHERE name = 'panic-marker'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(marked, 0, "every transaction that panicked rolled back");
    assert_eq!(
        span_count(&db).await as usize,
        good0 + other,
        "the good messages around it are stored"
    );
    let dlq = common::kafka::read_all(&bootstrap, "spansink.dlq");
    assert_eq!(dlq.len(), 1, "only the panicking message is dead-lettered");
    assert_eq!(
        common::kafka::header(&dlq[0], "spansink.dlq.reason").as_deref(),
        Some("panic")
    );
    assert_eq!(
        common::kafka::header(&dlq[0], "spansink.dlq.source.offset"),
        Some(marker_offset.to_string())
    );
    let mut instance = instance;
    assert!(
        instance.is_running(),
        "a panic never takes the process down"
    );
    let metrics = instance.scrape().await;
    assert!(
        series(&samples(&metrics), "spansink_panics_total", &[]).any(|s| s.value != 0.0),
        "panics are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_with_offsets_matching_rows() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(4);
    let mut gen = generator(5, 40);
    let mut produced = produce_traffic(&bootstrap, TOPIC, 4, 100, &mut gen).await;
    let mut instance = Instance::spawn(&bootstrap, &db.url, "g-term", &["--batch-max-messages=3"]);
    wait_for("ingest under way", Duration::from_secs(30), || async {
        span_count(&db).await > 0
    })
    .await;
    // Keep producing while it shuts down.
    let more = tokio::spawn({
        let bootstrap = bootstrap.clone();
        async move {
            let mut gen = generator(6, 40);
            produce_traffic(&bootstrap, TOPIC, 4, 60, &mut gen).await
        }
    });
    instance.sigterm();
    let status = instance
        .wait_exit(Duration::from_secs(15))
        .expect("exit within the drain deadline");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        instance.logs()
    );
    produced.extend(more.await.expect("producer"));

    // Everything below each stored offset is stored, nothing above it.
    let stored = stored_offsets(&db, "g-term", TOPIC).await;
    assert_eq!(
        span_count(&db).await as usize,
        produced.spans_below(&stored)
    );
    assert_traces_exact(&db).await;
    // And Kafka's committed offsets say the same.
    let committed = committed_offsets(&bootstrap, "g-term", TOPIC, 4);
    for (p, next) in &stored {
        assert_eq!(committed[*p as usize], Some(*next), "partition {p}");
    }
    let ends = end_offsets(&bootstrap, TOPIC, 4);
    assert!(stored.iter().all(|(p, o)| *o <= ends[*p as usize]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_under_a_tight_memory_budget_is_stored_whole_within_the_budget() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(4);
    let mut gen = generator(9, 60);
    // About 20 KiB a message: 4 partitions of backlog against 768 KiB for batches
    // and one fetch slot, which the partitions take turns at.
    let produced = produce_traffic(&bootstrap, TOPIC, 4, 200, &mut gen).await;
    let budget: usize = 1 << 20;
    let prefetch = budget / 4;
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-budget",
        &[
            &format!("--max-inflight-bytes={budget}"),
            "--batch-max-bytes=131072",
            "--batch-max-messages=1000",
        ],
    );
    let want = produced.total_spans();
    let peaks = std::sync::Mutex::new([0.0f64; 3]);
    wait_for("the backlog stored", Duration::from_secs(120), || async {
        let scraped = instance.scrape().await;
        for (peak, name) in peaks.lock().expect("peaks").iter_mut().zip([
            "spansink_inflight_bytes",
            "spansink_fetching_partitions",
            "spansink_paused_partitions",
        ]) {
            if let Some(v) = metric_max(&scraped, name, &[]) {
                *peak = peak.max(v);
            }
        }
        span_count(&db).await as usize == want
    })
    .await;
    let [inflight, fetching, paused] = *peaks.lock().expect("peaks");
    assert!(inflight > 0.0, "the gauge moved");
    assert!(
        inflight <= (budget - prefetch) as f64,
        "in-flight bytes {inflight} above the batch share of the budget"
    );
    assert_eq!(fetching, 1.0, "one partition fetches at a time");
    assert!(
        paused >= 3.0,
        "the others wait for their turn, paused: {paused}"
    );
    assert_traces_exact(&db).await;
    assert_eq!(
        stored_offsets(&db, "g-budget", TOPIC).await,
        produced.end_offsets()
    );
}

/// Under a backlog nearly every batch is closed by the budget, and the message
/// that did not fit is carried into the next batch. The turn at the fetch slot
/// must still pass: otherwise a partition keeps its slot until its whole
/// backlog is stored, and the partitions behind it wait for all of it (under
/// a load that never lets up, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_take_turns_at_the_fetch_slot_while_every_batch_carries_a_message() {
    let db = TestDb::migrated().await;
    // Every batch takes at least a quarter of a second, so each partition's
    // backlog takes longer than a turn (2 s) to store.
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION slow_batch() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.25); RETURN NULL; END $$; \
             CREATE TRIGGER slow_batch AFTER INSERT ON spans \
             FOR EACH STATEMENT EXECUTE FUNCTION slow_batch();",
        )
        .await
        .expect("a slow spans table");
    let (_kafka, bootstrap) = cluster(2);
    let mut gen = generator(11, 20);
    let produced = produce_traffic(&bootstrap, TOPIC, 2, 400, &mut gen).await;
    let ends = produced.end_offsets();
    // One fetch slot, and batches that only the budget closes: no size,
    // count or linger limit is reached before it runs out.
    let _instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-turns",
        &[
            "--max-inflight-bytes=1048576",
            "--batch-max-bytes=524288",
            "--batch-max-messages=100000",
            "--batch-linger=60s",
        ],
    );
    // The stored offsets when the first partition has stored all it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let stored = loop {
        let stored = stored_offsets(&db, "g-turns", TOPIC).await;
        if ends.iter().any(|(p, end)| stored.get(p) == Some(end)) {
            break stored;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partition's backlog was stored in time: {stored:?} of {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for p in ends.keys() {
        assert!(
            stored.get(p).is_some_and(|o| *o > 0),
            "partition {p} stored nothing while the other stored its whole backlog: {stored:?} of {ends:?}"
        );
    }
    wait_stored(
        &db,
        "g-turns",
        produced.total_spans(),
        Duration::from_secs(120),
    )
    .await;
    assert_traces_exact(&db).await;
    assert_eq!(stored_offsets(&db, "g-turns", TOPIC).await, ends);
}

/// A partition that has stored all its broker holds passes its fetch turn on
/// at once when others wait, though no statistics have told spansink where
/// the partition ends: its own fetches did. Waiting instead for more to
/// arrive (a second, in case a fetch is on its way) made each turn of a
/// short backlog last a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_at_its_end_passes_its_turn_on_without_waiting_for_statistics() {
    const PARTITIONS: i32 = 12;
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(PARTITIONS);
    let mut gen = generator(12, 10);
    let produced = produce_traffic(&bootstrap, TOPIC, PARTITIONS, 24, &mut gen).await;
    let ends = produced.end_offsets();
    // One fetch slot, and no statistics within the test.
    let _instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-ends",
        &[
            "--max-inflight-bytes=1048576",
            "--batch-max-bytes=262144",
            "--kafka=statistics.interval.ms=600000",
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut first = None;
    let took = loop {
        let stored = stored_offsets(&db, "g-ends", TOPIC).await;
        let now = std::time::Instant::now();
        if !stored.is_empty() && first.is_none() {
            first = Some(now);
        }
        if stored == ends {
            break now - first.unwrap_or(now);
        }
        assert!(now < deadline, "not stored in time: {stored:?} of {ends:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Twelve turns, one after the other: each a resume, a fetch and a small
    // batch, then 50 ms with nothing more. Holding each turn a second after
    // its batch would take more than eleven seconds.
    assert!(
        took < Duration::from_secs(6),
        "{PARTITIONS} partitions took {took:?} to store two messages each, one fetch slot between them"
    );
    assert_traces_exact(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_timestamps_at_the_extremes_are_stored_and_keep_the_gauges_sane() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let p = producer(&bootstrap);
    let mut gen = generator(5, 5);
    let mut spans = 0;
    // Producers set the timestamp; the broker keeps whatever they sent.
    for ts in [i64::MIN, -1, i64::MAX, 0] {
        let (tenant, payload, n) = marked_message(&mut gen, "extreme");
        let record = FutureRecord::<[u8], [u8]>::to(TOPIC)
            .partition(0)
            .payload(&payload)
            .timestamp(ts)
            .headers(OwnedHeaders::new().insert(Header {
                key: "X-Scope-OrgID",
                value: Some(tenant.as_bytes()),
            }));
        p.send(record, Duration::from_secs(30)).await.expect("sent");
        spans += n;
    }
    let (tenant, payload, n) = marked_message(&mut gen, "ordinary");
    produce(&p, TOPIC, 0, Some(&tenant), &payload).await;
    spans += n;
    {
        use rdkafka::message::Message as _;
        let got: Vec<_> = common::kafka::read_all(&bootstrap, TOPIC)
            .iter()
            .map(|m| m.timestamp().to_millis())
            .collect();
        assert_eq!(got[0], Some(i64::MIN), "the extreme reaches the consumer");
        assert_eq!(got[2], Some(i64::MAX));
    }
    let mut instance = Instance::spawn(&bootstrap, &db.url, "g-extreme", &[]);
    wait_stored(&db, "g-extreme", spans, Duration::from_secs(60)).await;
    assert!(instance.is_running());
    let metrics = samples(&instance.scrape().await);
    for s in metrics.iter().filter(|s| {
        s.name.starts_with("spansink_consumer_lag_seconds")
            || s.name.starts_with("spansink_end_to_end")
    }) {
        assert!(s.value.is_finite() && s.value >= 0.0, "{s:?}");
    }
    assert!(!instance.logs().contains("panicked"), "{}", instance.logs());
}
