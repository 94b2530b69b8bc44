//! Partition ownership and the failure paths around it, black box: the real
//! binary against the embedded broker and the local PostgreSQL, stopped with
//! SIGSTOP past its session timeout, restarted against a database that does
//! not answer, and cut off from PostgreSQL right after a COMMIT. Nothing may be
//! lost, stored twice, misfiled or dead-lettered because of it.

mod common;

use std::time::Duration;

use common::db::TestDb;
use common::exposition::metric_max;
use common::kafka::{header, produce, producer, read_all, DLQ, TOPIC};
use common::pgproxy::PgProxy;
use common::spansink::{wait_for, Instance};
use common::traffic::{
    assert_traces_exact, generator, marked_message, produce_traffic, span_count, stored_offsets,
};
use nix::sys::signal::{kill, Signal};
use spansink::kafka::mock::MockKafka;

fn cluster(partitions: i32) -> (MockKafka, String) {
    common::kafka::cluster(partitions, true)
}

/// Holds every `ingest_offsets` row locked, as a slow or stuck reader would,
/// for `hold`; returns once the lock is taken.
async fn lock_offsets(db: &TestDb, hold: Duration) -> tokio::task::JoinHandle<()> {
    let mut client = db.client().await;
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let tx = client.transaction().await.expect("begin");
        tx.query("SELECT * FROM ingest_offsets FOR UPDATE", &[])
            .await
            .expect("lock");
        let _ = locked_tx.send(());
        tokio::time::sleep(hold).await;
        tx.rollback().await.expect("unlock");
    });
    locked.await.expect("locked");
    task
}

/// The largest value of the series of `name`.
async fn metric(instance: &Instance, name: &str) -> Option<f64> {
    metric_max(&instance.scrape().await, name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_assignment_with_a_locked_offsets_row_loses_and_duplicates_nothing() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-lost",
        &["--batch-max-messages=20", "--drain-timeout=20s"],
    );
    // A steady stream for the whole test, so that batches are in flight at
    // every stop.
    let stream = tokio::spawn({
        let bootstrap = bootstrap.clone();
        async move {
            let mut gen = generator(70, 3);
            let mut produced = common::traffic::Produced::default();
            for _ in 0..60 {
                produced.extend(produce_traffic(&bootstrap, TOPIC, 1, 50, &mut gen).await);
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            produced
        }
    });
    wait_for("ingest under way", Duration::from_secs(60), || async {
        span_count(&db).await > 0
    })
    .await;
    // Three times: a batch waits on the locked row while the process is
    // stopped past its session timeout; the group gives the partition away
    // and back meanwhile.
    for _ in 0..3 {
        let locker = lock_offsets(&db, Duration::from_secs(14)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        kill(instance.pid(), Signal::SIGSTOP).expect("SIGSTOP");
        tokio::time::sleep(Duration::from_secs(10)).await;
        kill(instance.pid(), Signal::SIGCONT).expect("SIGCONT");
        locker.await.expect("locker");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let produced = stream.await.expect("producer");
    wait_for("every span stored", Duration::from_secs(120), || async {
        span_count(&db).await as usize >= produced.total_spans()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(span_count(&db).await as usize, produced.total_spans());
    assert_traces_exact(&db).await;
    assert_eq!(
        stored_offsets(&db, "g-lost", TOPIC).await,
        produced.end_offsets()
    );
    let logs = instance.logs();
    assert!(
        logs.matches("lost=true").count() >= 3,
        "the test must lose the assignment to mean anything:\n{logs}"
    );
    assert_eq!(
        metric(&instance, "spansink_partition_worker_overlaps_total").await,
        Some(0.0)
    );
    assert!(
        read_all(&bootstrap, DLQ).is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_against_a_slow_database_never_dead_letter_a_good_message() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let spool = tempfile::tempdir().expect("spool");
    let p = producer(&bootstrap);
    let mut gen = generator(71, 5);
    let flags = ["--drain-timeout=2s", "--crash-threshold=3"];
    let mut first =
        Instance::spawn_with_spool(&bootstrap, &db.url, "g-slow", Some(spool.path()), &flags);
    let (t, payload, first_spans) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&t), &payload).await;
    wait_for(
        "the first message stored",
        Duration::from_secs(60),
        || async { span_count(&db).await == first_spans as i64 },
    )
    .await;

    // The database stops answering for the partition's offsets row; one valid
    // message arrives, and the instance is restarted three times meanwhile,
    // each SIGTERM 8 s after it started.
    let locker = lock_offsets(&db, Duration::from_secs(60)).await;
    let (t, payload, second_spans) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&t), &payload).await;
    for restart in 0..3 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        first.sigterm();
        let status = first.wait_exit(Duration::from_secs(30)).expect("exits");
        assert!(status.success(), "restart {restart}: {status:?}");
        first =
            Instance::spawn_with_spool(&bootstrap, &db.url, "g-slow", Some(spool.path()), &flags);
    }
    locker.abort();
    let _ = locker.await;

    wait_for("the message stored", Duration::from_secs(60), || async {
        span_count(&db).await == (first_spans + second_spans) as i64
    })
    .await;
    assert_eq!(stored_offsets(&db, "g-slow", TOPIC).await.get(&0), Some(&2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        read_all(&bootstrap, DLQ).is_empty(),
        "a message that killed nothing is never dead-lettered"
    );
    assert!(!first.logs().contains("crash_loop"), "{}", first.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_acknowledgement_then_sigterm_publishes_the_poison_exactly_once() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1);
    let (proxy, proxied_url) = PgProxy::for_url(&db.url).await;
    let spool = tempfile::tempdir().expect("spool");
    // A long backoff, so that SIGTERM arrives while the batch waits to retry.
    let flags = [
        "--retry-initial=5s",
        "--retry-max=5s",
        "--batch-linger=1s",
        "--batch-max-messages=10",
    ];
    let mut instance = Instance::spawn_with_spool(
        &bootstrap,
        &proxied_url,
        "g-ack",
        Some(spool.path()),
        &flags,
    );
    wait_for("assigned", Duration::from_secs(60), || async {
        instance.logs().contains("partition assigned")
    })
    .await;

    proxy.lose_next_commit_ack();
    let p = producer(&bootstrap);
    let mut gen = generator(72, 5);
    let mut good = 0;
    let (t, payload, n) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&t), &payload).await;
    good += n;
    let (_, poison_offset) = produce(&p, TOPIC, 0, Some("acme"), b"\xff\xff not protobuf").await;
    let (t, payload, n) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&t), &payload).await;
    good += n;

    wait_for(
        "the COMMIT's reply lost",
        Duration::from_secs(60),
        || async { proxy.commits_lost() == 1 },
    )
    .await;
    // The batch committed on the server, but the worker did not hear it and
    // now backs off; shutdown comes before it can ask.
    tokio::time::sleep(Duration::from_secs(1)).await;
    instance.sigterm();
    let status = instance.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(status.success(), "{status:?}\n{}", instance.logs());
    assert_eq!(span_count(&db).await as usize, good, "the batch did commit");

    // Whether the last drain pass published it or the next start does, it
    // is published, and once.
    let _again = Instance::spawn_with_spool(&bootstrap, &db.url, "g-ack", Some(spool.path()), &[]);
    wait_for(
        "the dead letter published",
        Duration::from_secs(60),
        || async { !read_all(&bootstrap, DLQ).is_empty() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let records = read_all(&bootstrap, DLQ);
    assert_eq!(records.len(), 1, "published exactly once");
    assert_eq!(
        header(&records[0], "spansink.dlq.source.offset"),
        Some(poison_offset.to_string())
    );
    let ledger = common::traffic::ledger_count(&db).await;
    assert_eq!(ledger, 1);
}
