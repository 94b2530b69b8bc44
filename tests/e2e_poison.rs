//! The poison path end to end: isolation down to the message, the spool, the
//! DLQ topic and its headers, crashes at every step of the durable order, the
//! circuit breaker, replay, and PostgreSQL outages that must not dead-letter.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::db::TestDb;
use common::exposition::{metric_value, samples, series};
use common::kafka::{fixture, header, produce, producer, read_all, DLQ, TOPIC};
use common::spansink::{http_get, http_post, wait_for, Instance};
use common::traffic::{generator, marked_message, span_count, stored_offsets};
use prost::Message as _;
use rdkafka::message::Message as _;
use spansink::kafka::mock::MockKafka;

fn cluster(partitions: i32) -> (MockKafka, String) {
    common::kafka::cluster(partitions, true)
}

/// Gives the DLQ partition a broker of its own and stops only that broker:
/// fetching, the group and the source topic carry on (`broker_down(-1)` would
/// stop them too). `broker_up(3)` ends the outage.
fn dlq_broker_down(kafka: &MockKafka, group: &str) {
    kafka.partition_leader(DLQ, 0, 3).expect("leader");
    kafka.partition_leader(TOPIC, 0, 1).expect("leader");
    kafka.group_coordinator(group, 1).expect("coordinator");
    kafka.broker_down(3).expect("down");
}

fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "dl"))
                .count()
        })
        .unwrap_or(0)
}

/// Produces good messages around one bad payload on partition 0; returns the
/// good spans and the bad message's offset.
async fn good_bad_good(bootstrap: &str, seed: u64, bad: &[u8], tenant: &str) -> (usize, i64) {
    let p = producer(bootstrap);
    let mut gen = generator(seed, 5);
    let mut good = 0;
    for _ in 0..3 {
        let (t, payload, n) = marked_message(&mut gen, "good");
        produce(&p, TOPIC, 0, Some(&t), &payload).await;
        good += n;
    }
    let (_, bad_offset) = produce(&p, TOPIC, 0, Some(tenant), bad).await;
    for _ in 0..3 {
        let (t, payload, n) = marked_message(&mut gen, "good");
        produce(&p, TOPIC, 0, Some(&t), &payload).await;
        good += n;
    }
    (good, bad_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_poison_fixture_gives_one_dead_letter_and_the_partition_moves_on() {
    let expected_reasons = [
        ("poison_garbage.bin", "bad_protobuf", "decode"),
        ("poison_truncated.pb", "bad_protobuf", "decode"),
        ("poison_invalid_utf8_name.pb", "invalid_utf8", "decode"),
        ("poison_trace_id_15_bytes.pb", "invalid_id", "validate"),
    ];
    for (i, (file, reason, stage)) in expected_reasons.iter().enumerate() {
        let db = TestDb::migrated().await;
        let (_kafka, bootstrap) = cluster(1);
        let (good, bad_offset) =
            good_bad_good(&bootstrap, 100 + i as u64, &fixture(file), "acme").await;
        let instance = Instance::spawn(
            &bootstrap,
            &db.url,
            "g-fixtures",
            &["--batch-max-messages=100"],
        );
        wait_for(
            &format!("{file}: good rows and one dead letter"),
            Duration::from_secs(60),
            || async {
                span_count(&db).await as usize == good && read_all(&bootstrap, DLQ).len() == 1
            },
        )
        .await;
        assert_eq!(
            stored_offsets(&db, "g-fixtures", TOPIC).await.get(&0),
            Some(&7),
            "{file}: moved on"
        );

        let records = read_all(&bootstrap, DLQ);
        assert_eq!(records.len(), 1, "{file}");
        let r = &records[0];
        assert_eq!(
            r.payload(),
            Some(&fixture(file)[..]),
            "{file}: value unchanged"
        );
        assert_eq!(
            header(r, "X-Scope-OrgID").as_deref(),
            Some("acme"),
            "{file}: original header kept"
        );
        assert_eq!(
            header(r, "spansink.dlq.reason").as_deref(),
            Some(*reason),
            "{file}"
        );
        assert_eq!(
            header(r, "spansink.dlq.stage").as_deref(),
            Some(*stage),
            "{file}"
        );
        assert_eq!(
            header(r, "spansink.dlq.source.topic").as_deref(),
            Some(TOPIC)
        );
        assert_eq!(
            header(r, "spansink.dlq.source.partition").as_deref(),
            Some("0")
        );
        assert_eq!(
            header(r, "spansink.dlq.source.offset"),
            Some(bad_offset.to_string())
        );
        assert_eq!(header(r, "spansink.dlq.tenant").as_deref(), Some("acme"));
        assert_eq!(header(r, "__connect.errors.topic").as_deref(), Some(TOPIC));
        assert_eq!(
            header(r, "__connect.errors.offset"),
            Some(bad_offset.to_string())
        );
        let id = header(r, "spansink.dlq.id").expect("id");
        assert_eq!(
            id,
            spansink::poison::record::dead_letter_id("g-fixtures", TOPIC, 0, bad_offset)
        );
        assert!(header(r, "spansink.dlq.error").is_some_and(|e| !e.is_empty()));
        assert!(header(r, "spansink.dlq.first.failure")
            .is_some_and(|t| humantime::parse_rfc3339(&t).is_ok()));
        wait_for("spool emptied", Duration::from_secs(20), || async {
            spool_files(&instance.spool) == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_postgres_failure_is_bisected_down_to_one_message() {
    let db = TestDb::migrated().await;
    // The database refuses one marker span (SQLSTATE 23514), as a schema rule would.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE spans ADD CONSTRAINT no_marker CHECK (name <> 'refused-marker')",
        )
        .await
        .expect("constraint");
    let (_kafka, bootstrap) = cluster(1);
    let p = producer(&bootstrap);
    let mut gen = generator(200, 4);
    let mut good = 0;
    let mut marker_offset = 0;
    for i in 0..20 {
        let name = if i == 13 { "refused-marker" } else { "good" };
        let (t, payload, n) = marked_message(&mut gen, name);
        let (_, offset) = produce(&p, TOPIC, 0, Some(&t), &payload).await;
        if i == 13 {
            marker_offset = offset;
        } else {
            good += n;
        }
    }
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-bisect",
        &["--batch-max-messages=20", "--batch-linger=2s"],
    );
    wait_for(
        "good rows and one dead letter",
        Duration::from_secs(60),
        || async { span_count(&db).await as usize == good && read_all(&bootstrap, DLQ).len() == 1 },
    )
    .await;
    let records = read_all(&bootstrap, DLQ);
    assert_eq!(
        header(&records[0], "spansink.dlq.source.offset"),
        Some(marker_offset.to_string())
    );
    assert_eq!(
        header(&records[0], "spansink.dlq.sqlstate").as_deref(),
        Some("23514")
    );
    assert_eq!(
        header(&records[0], "spansink.dlq.reason").as_deref(),
        Some("pg_integrity_violation")
    );
    assert_eq!(
        stored_offsets(&db, "g-bisect", TOPIC).await.get(&0),
        Some(&20)
    );
    assert!(instance.logs().contains("isolated a poison message"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_outage_keeps_dead_letters_in_the_spool_until_the_broker_returns() {
    let db = TestDb::migrated().await;
    let (kafka, bootstrap) = cluster(1);
    dlq_broker_down(&kafka, "g-dlqdown");
    let (good, _) = good_bad_good(&bootstrap, 300, &fixture("poison_garbage.bin"), "acme").await;
    let p = producer(&bootstrap);
    produce(
        &p,
        TOPIC,
        0,
        Some("globex"),
        &fixture("poison_truncated.pb"),
    )
    .await;
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-dlqdown",
        &["--dlq-message-timeout=2s", "--batch-max-messages=100"],
    );
    wait_for(
        "good rows stored, two entries spooled",
        Duration::from_secs(60),
        || async { span_count(&db).await as usize == good && spool_files(&instance.spool) == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        spool_files(&instance.spool),
        2,
        "the spool holds them while the DLQ is down"
    );

    kafka.broker_up(3).expect("up");
    wait_for(
        "DLQ received both, spool empty",
        Duration::from_secs(60),
        || async { spool_files(&instance.spool) == 0 && read_all(&bootstrap, DLQ).len() >= 2 },
    )
    .await;
    let ids: BTreeMap<String, usize> =
        read_all(&bootstrap, DLQ)
            .iter()
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(header(r, "spansink.dlq.id").unwrap_or_default())
                    .or_default() += 1;
                m
            });
    assert_eq!(ids.len(), 2, "two distinct dead letters: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_spool_and_dlq_ack_publishes_after_restart() {
    let db = TestDb::migrated().await;
    let (kafka, bootstrap) = cluster(1);
    dlq_broker_down(&kafka, "g-kill-dlq");
    let spool = tempfile::tempdir().expect("spool");
    let (good, _) = good_bad_good(&bootstrap, 400, &fixture("poison_garbage.bin"), "acme").await;
    let mut first = Instance::spawn_with_spool(
        &bootstrap,
        &db.url,
        "g-kill-dlq",
        Some(spool.path()),
        &["--dlq-message-timeout=2s"],
    );
    wait_for(
        "committed and spooled, not yet published",
        Duration::from_secs(60),
        || async { span_count(&db).await as usize == good && spool_files(spool.path()) == 1 },
    )
    .await;
    assert_eq!(
        stored_offsets(&db, "g-kill-dlq", TOPIC).await.get(&0),
        Some(&7)
    );
    first.kill9();
    kafka.broker_up(3).expect("up");
    let _second =
        Instance::spawn_with_spool(&bootstrap, &db.url, "g-kill-dlq", Some(spool.path()), &[]);
    wait_for(
        "published after restart",
        Duration::from_secs(60),
        || async { read_all(&bootstrap, DLQ).len() == 1 && spool_files(spool.path()) == 0 },
    )
    .await;
    assert_eq!(span_count(&db).await as usize, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_spool_and_postgres_commit_dead_letters_exactly_once() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let spool = tempfile::tempdir().expect("spool");
    let p = producer(&bootstrap);
    let mut gen = generator(500, 5);
    let (t, payload, first_good) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&t), &payload).await;
    let mut first =
        Instance::spawn_with_spool(&bootstrap, &db.url, "g-kill-pg", Some(spool.path()), &[]);
    wait_for(
        "the partition has an offset row",
        Duration::from_secs(60),
        || async { stored_offsets(&db, "g-kill-pg", TOPIC).await.get(&0) == Some(&1) },
    )
    .await;
    // Hold the partition's offset row: the next batch spools its poison, then
    // blocks on the fence, before its commit.
    let (locker, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("locker");
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; SELECT * FROM ingest_offsets FOR UPDATE")
        .await
        .expect("lock");
    let (bad_part, bad_offset) =
        produce(&p, TOPIC, 0, Some("acme"), &fixture("poison_garbage.bin")).await;
    assert_eq!((bad_part, bad_offset), (0, 1));
    wait_for(
        "spooled before the commit",
        Duration::from_secs(60),
        || async { spool_files(spool.path()) == 1 },
    )
    .await;
    first.kill9();
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(
        stored_offsets(&db, "g-kill-pg", TOPIC).await.get(&0),
        Some(&1),
        "the commit never happened"
    );

    let _second =
        Instance::spawn_with_spool(&bootstrap, &db.url, "g-kill-pg", Some(spool.path()), &[]);
    wait_for(
        "dead-lettered after restart",
        Duration::from_secs(60),
        || async {
            stored_offsets(&db, "g-kill-pg", TOPIC).await.get(&0) == Some(&2)
                && spool_files(spool.path()) == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = read_all(&bootstrap, DLQ);
    assert_eq!(records.len(), 1, "exactly one dead letter");
    assert_eq!(
        header(&records[0], "spansink.dlq.source.offset").as_deref(),
        Some("1")
    );
    assert_eq!(span_count(&db).await as usize, first_good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_aborts_the_process_is_dead_lettered_after_repeated_crashes() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let spool = tempfile::tempdir().expect("spool");
    let p = producer(&bootstrap);
    let mut gen = generator(600, 5);
    let mut good = 0;
    let mut abort_offset = 0;
    for i in 0..6 {
        let name = if i == 3 { "ABORT-ME" } else { "good" };
        let (t, payload, n) = marked_message(&mut gen, name);
        let (_, offset) = produce(&p, TOPIC, 0, Some(&t), &payload).await;
        if i == 3 {
            abort_offset = offset;
        } else {
            good += n;
        }
    }
    let flags = [
        "--fault-abort-marker=ABORT-ME",
        "--crash-threshold=2",
        "--batch-max-messages=10",
        "--batch-linger=1s",
    ];
    let mut crashes = 0;
    loop {
        let mut instance =
            Instance::spawn_with_spool(&bootstrap, &db.url, "g-abort", Some(spool.path()), &flags);
        let done = async {
            stored_offsets(&db, "g-abort", TOPIC).await.get(&0) == Some(&6)
                && read_all(&bootstrap, DLQ).len() == 1
        };
        // Each life ends in an abort until the guard convicts the message.
        match instance.wait_exit(Duration::from_secs(40)) {
            Some(status) => {
                assert!(!status.success(), "only an abort ends it");
                crashes += 1;
                assert!(crashes <= 12, "the crash loop must end");
            }
            None => {
                assert!(
                    done.await,
                    "running without crashing means the message was dead-lettered"
                );
                break;
            }
        }
    }
    assert!(crashes >= 2, "it took repeated crashes: {crashes}");
    let records = read_all(&bootstrap, DLQ);
    assert_eq!(
        header(&records[0], "spansink.dlq.reason").as_deref(),
        Some("crash_loop")
    );
    assert_eq!(
        header(&records[0], "spansink.dlq.source.offset"),
        Some(abort_offset.to_string())
    );
    assert_eq!(span_count(&db).await as usize, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_entry_is_quarantined_and_the_forwarder_carries_on() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let spool_dir = tempfile::tempdir().expect("spool");
    // A committed dead letter (offset 0 below the stored offset 1) and a torn one.
    db.client()
        .await
        .execute(
            "INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at) VALUES ('g-torn', $1, 0, 1, now())",
            &[&TOPIC],
        )
        .await
        .expect("offset");
    {
        let spool = spansink::poison::spool::Spool::open(spansink::poison::spool::SpoolConfig {
            dir: spool_dir.path().to_path_buf(),
            max_entries: 100,
            max_bytes: 1 << 20,
        })
        .expect("spool");
        let mut dl = spansink::otlp::spansink::v1::DeadLetter {
            id: spansink::poison::record::dead_letter_id("g-torn", TOPIC, 0, 0),
            group: "g-torn".into(),
            topic: TOPIC.into(),
            partition: 0,
            offset: 0,
            payload: fixture("poison_garbage.bin"),
            stage: "decode".into(),
            reason: "bad_protobuf".into(),
            error: "not protobuf".into(),
            attempts: 1,
            ..Default::default()
        };
        spool.put(&dl).expect("put");
        dl.id = spansink::poison::record::dead_letter_id("g-torn", TOPIC, 0, 99);
        dl.offset = 99;
        spool.put(&dl).expect("put");
    }
    let torn = spool_dir.path().join(format!(
        "{}.dl",
        spansink::poison::record::dead_letter_id("g-torn", TOPIC, 0, 99)
    ));
    let bytes = std::fs::read(&torn).expect("read");
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).expect("tear");

    let _instance =
        Instance::spawn_with_spool(&bootstrap, &db.url, "g-torn", Some(spool_dir.path()), &[]);
    wait_for(
        "the good entry published",
        Duration::from_secs(60),
        || async { read_all(&bootstrap, DLQ).len() == 1 && spool_files(spool_dir.path()) == 0 },
    )
    .await;
    let quarantined = std::fs::read_dir(spool_dir.path().join("quarantine"))
        .expect("quarantine")
        .count();
    assert_eq!(quarantined, 1, "the torn entry is kept aside, not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fully_poisoned_stream_trips_the_circuit_breaker_instead_of_filling_the_dlq() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let p = producer(&bootstrap);
    for _ in 0..300 {
        produce(&p, TOPIC, 0, Some("acme"), b"{\"not\": \"protobuf\"}").await;
    }
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-breaker",
        &[
            "--breaker-min-messages=50",
            "--breaker-window=200",
            "--breaker-cooldown=1h",
            "--batch-max-messages=25",
        ],
    );
    wait_for(
        "breaker open and unready",
        Duration::from_secs(60),
        || async {
            http_get(&instance.metrics_addr, "/readyz")
                .await
                .is_some_and(|(code, body)| code == 503 && body.contains("circuit breaker"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dead = read_all(&bootstrap, DLQ).len();
    assert!(
        dead < 100,
        "the breaker stopped the flood: {dead} dead letters of 300"
    );
    let metrics = instance.scrape().await;
    assert_eq!(
        metric_value(
            &metrics,
            "spansink_circuit_breaker_state",
            &[("topic", "otlp_spans")]
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(stored_offsets(&db, "g-breaker", TOPIC)
        .await
        .get(&0)
        .is_none_or(|o| *o < 300));

    // The operator closes it: the documented endpoint.
    let (code, _) = http_post(&instance.admin_addr, "/breaker/close", &[]).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reingests_a_dead_letter_once_its_rule_is_relaxed_and_twice_changes_nothing() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let p = producer(&bootstrap);
    // Spans from ten days ago: outside a 1-day window.
    let mut gen = generator(700, 6);
    let old = gen.next_message(SystemTime::now() - Duration::from_secs(10 * 86400));
    let spans = old.span_count;
    produce(
        &p,
        TOPIC,
        0,
        Some(&old.tenant),
        &old.request.encode_to_vec(),
    )
    .await;
    let instance = Instance::spawn(&bootstrap, &db.url, "g-replay", &["--accept-past=1d"]);
    wait_for(
        "dead-lettered for its timestamp",
        Duration::from_secs(60),
        || async { read_all(&bootstrap, DLQ).len() == 1 && spool_files(&instance.spool) == 0 },
    )
    .await;
    let records = read_all(&bootstrap, DLQ);
    assert_eq!(
        header(&records[0], "spansink.dlq.reason").as_deref(),
        Some("timestamp_out_of_window")
    );
    assert_eq!(span_count(&db).await, 0);

    let replay = |extra: &[&str]| common::spansink::replay(&bootstrap, &db.url, extra);
    // Under the old rule it still fails; a dry run writes nothing.
    let report = replay(&["--accept-past=1d"]);
    assert!(report.contains("failed again: 1"), "{report}");
    let report = replay(&["--dry-run", "--accept-past=30d"]);
    assert!(report.contains("replayed:     1"), "{report}");
    assert_eq!(span_count(&db).await, 0);
    // The rule relaxed: re-ingested.
    let report = replay(&["--accept-past=30d"]);
    assert!(report.contains("replayed:     1"), "{report}");
    assert_eq!(span_count(&db).await as usize, spans);
    // Twice: nothing changes.
    let before: i64 = db
        .client()
        .await
        .query_one("SELECT sum(span_count)::bigint FROM traces", &[])
        .await
        .expect("sum")
        .get(0);
    let report = replay(&["--accept-past=30d"]);
    assert!(
        report.contains(&format!("spans inserted 0, already stored {spans}")),
        "{report}"
    );
    assert_eq!(span_count(&db).await as usize, spans);
    let after: i64 = db
        .client()
        .await
        .query_one("SELECT sum(span_count)::bigint FROM traces", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_during_a_stream_sends_nothing_to_the_dlq() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(2);
    let (proxy, url) = common::pgproxy::PgProxy::for_url(&db.url).await;
    let mut gen = generator(800, 10);
    let instance = Instance::spawn(&bootstrap, &url, "g-pgdown", &[]);
    let mut produced = common::traffic::produce_traffic(&bootstrap, TOPIC, 2, 10, &mut gen).await;
    wait_for("first rows", Duration::from_secs(60), || async {
        span_count(&db).await > 0
    })
    .await;

    proxy.block();
    produced.extend(common::traffic::produce_traffic(&bootstrap, TOPIC, 2, 20, &mut gen).await);
    // Lag shows, in messages and in seconds, while nothing can commit.
    wait_for("lag reported", Duration::from_secs(30), || async {
        let metrics = samples(&instance.scrape().await);
        let positive = |name: &str| series(&metrics, name, &[]).any(|s| s.value > 0.0);
        positive("spansink_consumer_lag_messages") && positive("spansink_consumer_lag_seconds")
    })
    .await;
    assert_eq!(
        read_all(&bootstrap, DLQ).len(),
        0,
        "an outage is never poison"
    );
    assert_eq!(spool_files(&instance.spool), 0);

    proxy.unblock();
    wait_for(
        "every span after the outage",
        Duration::from_secs(90),
        || async { span_count(&db).await as usize == produced.total_spans() },
    )
    .await;
    assert_eq!(read_all(&bootstrap, DLQ).len(), 0);
    assert_eq!(
        stored_offsets(&db, "g-pgdown", TOPIC).await,
        produced.end_offsets()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_pauses_consumption_and_readiness_until_it_drains() {
    let db = TestDb::migrated().await;
    let (kafka, bootstrap) = cluster(1);
    dlq_broker_down(&kafka, "g-spoolfull");
    let p = producer(&bootstrap);
    produce(&p, TOPIC, 0, Some("acme"), &fixture("poison_garbage.bin")).await;
    let mut gen = generator(900, 5);
    let (t, payload, good) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&t), &payload).await;
    produce(&p, TOPIC, 0, Some("acme"), &fixture("poison_truncated.pb")).await;
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-spoolfull",
        &[
            "--spool-max-entries=1",
            "--batch-max-messages=1",
            "--dlq-message-timeout=2s",
        ],
    );
    wait_for(
        "spool full and not ready",
        Duration::from_secs(60),
        || async {
            http_get(&instance.metrics_addr, "/readyz")
                .await
                .is_some_and(|(code, body)| code == 503 && body.contains("spool full"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        spool_files(&instance.spool),
        1,
        "consumption paused at the limit; nothing dropped"
    );
    assert_eq!(
        stored_offsets(&db, "g-spoolfull", TOPIC).await.get(&0),
        Some(&1)
    );

    kafka.broker_up(3).expect("up");
    wait_for(
        "drained, consumed to the end, ready again",
        Duration::from_secs(60),
        || async {
            stored_offsets(&db, "g-spoolfull", TOPIC).await.get(&0) == Some(&3)
                && spool_files(&instance.spool) == 0
                && http_get(&instance.metrics_addr, "/readyz")
                    .await
                    .is_some_and(|(code, _)| code == 200)
        },
    )
    .await;
    assert_eq!(span_count(&db).await as usize, good);
    assert_eq!(read_all(&bootstrap, DLQ).len(), 2);
}

fn distinct_ids(records: &[rdkafka::message::OwnedMessage]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| header(r, "spansink.dlq.id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_deploy_opens_the_breaker_within_min_messages_and_replay_stores_every_dead_letter() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    // A deploy gone wrong: every insert into spans fails with a data exception.
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION bad_deploy() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'bad deploy' USING ERRCODE = '22023'; END $$;
             CREATE TRIGGER bad_deploy BEFORE INSERT ON spans
               FOR EACH ROW EXECUTE FUNCTION bad_deploy();",
        )
        .await
        .expect("trigger");
    let mut gen = generator(1000, 3);
    let produced = common::traffic::produce_traffic(&bootstrap, TOPIC, 1, 400, &mut gen).await;
    // The breaker's defaults, and the default batch size (larger than the minimum).
    let instance = Instance::spawn(&bootstrap, &db.url, "g-deploy", &["--batch-linger=200ms"]);
    wait_for(
        "breaker open and unready",
        Duration::from_secs(90),
        || async {
            http_get(&instance.metrics_addr, "/readyz")
                .await
                .is_some_and(|(code, body)| code == 503 && body.contains("circuit breaker"))
        },
    )
    .await;
    assert_eq!(
        metric_value(
            &instance.scrape().await,
            "spansink_circuit_breaker_state",
            &[("topic", "otlp_spans")]
        ),
        Some(2.0)
    );
    wait_for(
        "committed dead letters published",
        Duration::from_secs(60),
        || async { spool_files(&instance.spool) == 0 },
    )
    .await;
    let dead = distinct_ids(&read_all(&bootstrap, DLQ));
    assert!(
        !dead.is_empty() && dead.len() <= 100,
        "at most --breaker-min-messages dead letters: {}",
        dead.len()
    );
    let ledger = common::traffic::ledger_count(&db).await;
    assert_eq!(
        ledger as usize,
        dead.len(),
        "the ledger holds every dead letter"
    );

    // The deploy is rolled back and the breaker closed: the rest is stored,
    // and replay stores what was dead-lettered.
    db.client()
        .await
        .batch_execute("DROP TRIGGER bad_deploy ON spans")
        .await
        .expect("drop trigger");
    let (code, _) = http_post(&instance.admin_addr, "/breaker/close", &[]).await;
    assert_eq!(code, 200);
    wait_for("the partition done", Duration::from_secs(60), || async {
        stored_offsets(&db, "g-deploy", TOPIC).await == produced.end_offsets()
    })
    .await;
    let report = common::spansink::replay(&bootstrap, &db.url, &[]);
    assert!(
        report.contains(&format!("replayed:     {}", dead.len())),
        "{report}"
    );
    assert_eq!(span_count(&db).await as usize, produced.total_spans());
    common::traffic::assert_traces_exact(&db).await;
    let replayed: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL",
            &[],
        )
        .await
        .expect("ledger")
        .get(0);
    assert_eq!(replayed as usize, dead.len(), "replay marks what it stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_dead_letter_is_set_aside_with_a_marker_and_blocks_nothing() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let p = producer(&bootstrap);
    // Two poison messages: one larger than the DLQ accepts, one small.
    let big = vec![0xffu8; 8000];
    let (_, big_offset) = produce(&p, TOPIC, 0, Some("acme"), &big).await;
    let (_, small_offset) = produce(&p, TOPIC, 0, Some("acme"), b"\xff\xff small").await;
    let mut gen = generator(1001, 5);
    let (t, payload, good) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&t), &payload).await;
    // As a DLQ topic whose max.message.bytes is below the message would.
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-oversize",
        &["--kafka=message.max.bytes=4000"],
    );
    wait_for("both dead letters out", Duration::from_secs(60), || async {
        read_all(&bootstrap, DLQ).len() == 2 && spool_files(&instance.spool) == 0
    })
    .await;
    assert_eq!(span_count(&db).await as usize, good);
    let records = read_all(&bootstrap, DLQ);
    let by_offset = |offset: i64| {
        records
            .iter()
            .find(|r| header(r, "spansink.dlq.source.offset") == Some(offset.to_string()))
            .unwrap_or_else(|| panic!("no record for offset {offset}"))
    };
    let marker = by_offset(big_offset);
    assert_eq!(marker.payload(), None, "the marker carries no value");
    assert_eq!(
        header(marker, "spansink.dlq.oversize"),
        Some(big.len().to_string())
    );
    assert!(header(marker, "spansink.dlq.refused").is_some());
    assert_eq!(
        by_offset(small_offset).payload(),
        Some(&b"\xff\xff small"[..])
    );
    // The whole record is kept, readable as a spool of its own.
    let kept = instance.spool.join("oversize");
    assert_eq!(spool_files(&kept), 1);
    let listed = std::process::Command::new(common::spansink::binary())
        .args(["spool", &format!("--spool-dir={}", kept.display()), "list"])
        .output()
        .expect("spool list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&format!("@{big_offset}")), "{listed}");
    assert_eq!(
        metric_value(&instance.scrape().await, "spansink_dlq_oversize_total", &[]),
        Some(1.0)
    );
}
