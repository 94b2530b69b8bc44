//! The DLQ topic and the spool forwarder, against the embedded Kafka and a real
//! PostgreSQL: what a dead-letter record looks like on the wire, that only
//! dead letters PostgreSQL committed past are published, and that a DLQ outage
//! loses and duplicates nothing.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::db::TestDb;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use spansink::kafka::mock::MockKafka;
use spansink::kafka::Setting as KafkaSetting;
use spansink::otlp::spansink::v1::{DeadLetter, Header};
use spansink::poison::dlq::{self, header, DlqConfig, DlqPublisher};
use spansink::poison::forward::{ForwardReport, Forwarder};
use spansink::poison::record;
use spansink::poison::spool::{Spool, SpoolConfig};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const DLQ: &str = "spansink.dlq";
const GROUP: &str = "g-dlq";
const SOURCE: &str = "otlp_spans";

fn dlq_config(kafka: &MockKafka, message_timeout: Duration) -> DlqConfig {
    DlqConfig {
        topic: DLQ.into(),
        client: spansink::kafka::Settings {
            brokers: kafka.bootstrap_servers().into(),
            overrides: vec![KafkaSetting {
                key: "reconnect.backoff.max.ms".into(),
                value: "500".into(),
            }],
        },
        instance: "test-1".into(),
        message_timeout,
    }
}

/// A dead letter of one source message, with every optional fact present.
fn letter(partition: i32, offset: i64) -> DeadLetter {
    DeadLetter {
        id: record::dead_letter_id(GROUP, SOURCE, partition, offset),
        group: GROUP.into(),
        topic: SOURCE.into(),
        partition,
        offset,
        timestamp_ms: Some(1_700_000_000_123),
        key: Some(b"trace-key".to_vec()),
        headers: vec![
            Header {
                key: "X-Scope-OrgID".into(),
                value: Some(b"acme".to_vec()),
            },
            Header {
                key: "no-value".into(),
                value: None,
            },
            Header {
                key: "binary".into(),
                value: Some(vec![0xff, 0x00, 0xfe]),
            },
        ],
        // Not valid protobuf, not UTF-8: must arrive as it left.
        payload: vec![0x0a, 0xff, 0x00, 0x80, 0x01, 0xc3],
        tenant: Some("acme".into()),
        stage: "write".into(),
        reason: "pg_data_exception".into(),
        error: "value \"1e400\" is out of range for type double precision".into(),
        sqlstate: Some("22003".into()),
        attempts: 2,
        first_failure_unix_ms: 1_700_000_005_007,
        instance: "test-1".into(),
        version: "0.1.0".into(),
        spool_id: String::new(),
    }
}

/// A database, a DLQ topic, a spool and its forwarder.
struct Drained {
    db: TestDb,
    kafka: MockKafka,
    spool: Arc<Spool>,
    forwarder: Forwarder,
    _dir: tempfile::TempDir,
}

impl Drained {
    async fn new() -> Self {
        let db = TestDb::migrated().await;
        let pool = spansink::pg::connect(&db.db_args()).await.expect("pool");
        let kafka = MockKafka::start(1).expect("mock kafka");
        kafka.create_topic(DLQ, 1).expect("topic");
        let dir = tempfile::tempdir().unwrap();
        let spool = spool(&dir);
        let publisher =
            Arc::new(DlqPublisher::new(&dlq_config(&kafka, Duration::from_secs(10))).unwrap());
        let forwarder = Forwarder::new(Arc::clone(&spool), publisher, pool);
        Drained {
            db,
            kafka,
            spool,
            forwarder,
            _dir: dir,
        }
    }
}

/// The dead letter as this spool holds it, once a batch spooled it.
fn spooled_letter(spool: &Spool, partition: i32, offset: i64) -> DeadLetter {
    DeadLetter {
        spool_id: spool.id().to_string(),
        ..letter(partition, offset)
    }
}

/// What a batch transaction records when it moves the offset past a dead letter.
async fn record_in_ledger(db: &TestDb, spool_id: &str, partition: i32, offset: i64) {
    let id = record::dead_letter_id(GROUP, SOURCE, partition, offset);
    db.client()
        .await
        .execute(
            "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", id, tenant_id,
                                       stage, reason, error, instance, spool_id)
             VALUES ($1, $2, $3, $4, $5, 'acme', 'write', 'pg_data_exception', 'e', 'test-1', $6)",
            &[&GROUP, &SOURCE, &partition, &offset, &id, &spool_id],
        )
        .await
        .expect("ledger row");
}

/// Every record of the single-partition `topic`, from the beginning.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "dlq-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while (records.len() as i64) < high - low {
        assert!(Instant::now() < deadline, "read {} records", records.len());
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            records.push(m.expect("record").detach());
        }
    }
    records
}

async fn read_dlq(kafka: &MockKafka) -> Vec<OwnedMessage> {
    let bootstrap = kafka.bootstrap_servers().to_string();
    tokio::task::spawn_blocking(move || read_topic(&bootstrap, DLQ))
        .await
        .expect("reader")
}

fn ids(records: &[OwnedMessage]) -> Vec<String> {
    records
        .iter()
        .map(|m| dlq::from_message(m).expect("a dead letter").id)
        .collect()
}

fn header_list(m: &OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    let h = m.headers().expect("headers");
    (0..h.count())
        .map(|i| {
            let x = h.get(i);
            (x.key.to_string(), x.value.map(<[u8]>::to_vec))
        })
        .collect()
}

fn text(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
    (key.to_string(), Some(value.as_bytes().to_vec()))
}

fn spool(dir: &tempfile::TempDir) -> Arc<Spool> {
    Arc::new(
        Spool::open(SpoolConfig {
            dir: dir.path().join("spool"),
            max_entries: 1000,
            max_bytes: 16 << 20,
        })
        .expect("spool"),
    )
}

fn spooled(spool: &Spool) -> BTreeSet<String> {
    spool
        .list()
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

async fn set_stored_offset(db: &TestDb, partition: i32, next: i64) {
    db.client()
        .await
        .execute(
            "INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (consumer_group, topic, partition)
             DO UPDATE SET next_offset = EXCLUDED.next_offset",
            &[&GROUP, &SOURCE, &partition, &next],
        )
        .await
        .expect("store offset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_arrives_unchanged_with_every_header_and_reads_back() {
    let kafka = MockKafka::start(1).expect("mock kafka");
    kafka.create_topic(DLQ, 1).expect("topic");
    let publisher = DlqPublisher::new(&dlq_config(&kafka, Duration::from_secs(10))).unwrap();
    assert_eq!(publisher.topic(), DLQ);

    let full = letter(3, 41);
    let bare = DeadLetter {
        key: None,
        headers: vec![],
        payload: vec![],
        timestamp_ms: None,
        tenant: None,
        sqlstate: None,
        stage: "decode".into(),
        reason: "bad_protobuf".into(),
        ..letter(3, 42)
    };
    assert_eq!(publisher.publish(&full).await.unwrap(), (0, 0));
    assert_eq!(publisher.publish(&bare).await.unwrap(), (0, 1));

    let records = read_dlq(&kafka).await;
    assert_eq!(records.len(), 2);
    let (first, second) = (&records[0], &records[1]);

    assert_eq!(first.payload(), Some(&full.payload[..]));
    assert_eq!(first.key(), Some(&b"trace-key"[..]));
    let mut expected: Vec<_> = full
        .headers
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    expected.extend([
        text(header::ID, &full.id),
        text(header::GROUP, GROUP),
        text(header::SOURCE_TOPIC, SOURCE),
        text(header::SOURCE_PARTITION, "3"),
        text(header::SOURCE_OFFSET, "41"),
        text(header::SOURCE_TIMESTAMP, "2023-11-14T22:13:20.123Z"),
        text(header::TENANT, "acme"),
        text(header::STAGE, "write"),
        text(header::REASON, "pg_data_exception"),
        text(header::ERROR, &full.error),
        text(header::SQLSTATE, "22003"),
        text(header::ATTEMPTS, "2"),
        text(header::SIZE, "6"),
        text(header::FIRST_FAILURE, "2023-11-14T22:13:25.007Z"),
        text(header::INSTANCE, "test-1"),
        text(header::VERSION, "0.1.0"),
        text(header::CONNECT_TOPIC, SOURCE),
        text(header::CONNECT_PARTITION, "3"),
        text(header::CONNECT_OFFSET, "41"),
        text(
            header::CONNECT_EXCEPTION_CLASS,
            "spansink.poison.pg_data_exception",
        ),
        text(header::CONNECT_EXCEPTION_MESSAGE, &full.error),
        text(header::CONNECT_STAGE, "TASK_PUT"),
    ]);
    assert_eq!(header_list(first), expected);
    assert_eq!(dlq::from_message(first).unwrap(), full);

    // Unknown facts are left out, a null key stays null.
    assert_eq!(second.key(), None);
    let second_headers = header_list(second);
    for absent in [header::SOURCE_TIMESTAMP, header::TENANT, header::SQLSTATE] {
        assert!(
            second_headers.iter().all(|(k, _)| k != absent),
            "{absent} present"
        );
    }
    assert!(second_headers.contains(&text(header::CONNECT_STAGE, "VALUE_CONVERTER")));
    assert_eq!(dlq::from_message(second).unwrap(), bare);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_dead_letters_the_ledger_holds_for_this_spool_are_published() {
    let Drained {
        db,
        kafka,
        spool,
        forwarder,
        _dir,
    } = Drained::new().await;

    // Partition 0 committed up to 7: offsets 3 and 7 as this spool's dead
    // letters, 5 as another instance's, 6 as a good message. Offsets 8 and 12
    // are not committed yet; partition 1 has nothing stored at all.
    set_stored_offset(&db, 0, 8).await;
    record_in_ledger(&db, spool.id(), 0, 3).await;
    record_in_ledger(&db, spool.id(), 0, 7).await;
    record_in_ledger(&db, "another-spool", 0, 5).await;
    for (p, o) in [(0, 3), (0, 5), (0, 6), (0, 7), (0, 8), (0, 12), (1, 0)] {
        spool.put(&spooled_letter(&spool, p, o)).unwrap();
    }
    let id = |p, o| record::dead_letter_id(GROUP, SOURCE, p, o);

    let report = forwarder.forward_once().await.unwrap();
    assert_eq!(
        report,
        ForwardReport {
            published: 2,
            pending: 3,
            failed: 0,
            discarded: 2,
            oversize: 0,
        }
    );
    assert_eq!(ids(&read_dlq(&kafka).await), vec![id(0, 3), id(0, 7)]);
    assert_eq!(
        spooled(&spool),
        BTreeSet::from([id(0, 8), id(0, 12), id(1, 0)])
    );

    // While running, entries not committed wait for their commit.
    let again = forwarder.forward_once().await.unwrap();
    assert_eq!((again.published, again.pending), (0, 3));
    record_in_ledger(&db, spool.id(), 0, 8).await;
    set_stored_offset(&db, 0, 9).await;
    let after_commit = forwarder.forward_once().await.unwrap();
    assert_eq!((after_commit.published, after_commit.pending), (1, 2));
    assert_eq!(
        ids(&read_dlq(&kafka).await),
        vec![id(0, 3), id(0, 7), id(0, 8)]
    );

    // At start, they are superseded: their message will be consumed again.
    assert_eq!(forwarder.recover().await.unwrap(), 2);
    assert!(spooled(&spool).is_empty());
    assert_eq!(read_dlq(&kafka).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_publishes_what_the_previous_release_spooled_and_committed() {
    let Drained {
        db,
        kafka,
        spool,
        forwarder,
        _dir,
    } = Drained::new().await;
    // Entries without a spool id, as the release before the ledger wrote them:
    // offset 4 below the stored offset (committed), 9 above it (never committed).
    set_stored_offset(&db, 0, 5).await;
    spool.put(&letter(0, 4)).unwrap();
    spool.put(&letter(0, 9)).unwrap();

    assert_eq!(
        forwarder.recover().await.unwrap(),
        1,
        "only the uncommitted one goes"
    );
    let report = forwarder.forward_once().await.unwrap();
    assert_eq!((report.published, report.discarded), (1, 0));
    assert_eq!(
        ids(&read_dlq(&kafka).await),
        vec![record::dead_letter_id(GROUP, SOURCE, 0, 4)]
    );
    let ledger: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE \"offset\" = 4 AND spool_id = $1",
            &[&spool.id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledger, 1, "recorded in the ledger as this spool's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_forwarder_wakes_on_a_poke_and_publishes_once_more_on_stop() {
    let Drained {
        db,
        kafka,
        spool,
        forwarder,
        _dir,
    } = Drained::new().await;
    let forwarder = Arc::new(forwarder);
    set_stored_offset(&db, 0, 100).await;
    record_in_ledger(&db, spool.id(), 0, 1).await;
    record_in_ledger(&db, spool.id(), 0, 2).await;

    let wake = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&forwarder).run(
        Arc::clone(&wake),
        stop.clone(),
        Duration::from_secs(5),
        spansink::shutdown::Stopper::new(CancellationToken::new()),
    ));
    // Let the first (empty) pass finish: the forwarder now waits for up to 5 s.
    tokio::time::sleep(Duration::from_millis(500)).await;

    spool.put(&spooled_letter(&spool, 0, 1)).unwrap();
    let poked = Instant::now();
    wake.notify_one();
    common::spansink::wait_for("the poked pass", Duration::from_secs(10), || async {
        spooled(&spool).is_empty()
    })
    .await;
    assert!(
        poked.elapsed() < Duration::from_secs(3),
        "published by the tick, not the poke: {:?}",
        poked.elapsed()
    );

    spool.put(&spooled_letter(&spool, 0, 2)).unwrap();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("stops")
        .expect("no panic");
    assert!(spooled(&spool).is_empty(), "the last pass published it");
    assert_eq!(
        ids(&read_dlq(&kafka).await),
        vec![
            record::dead_letter_id(GROUP, SOURCE, 0, 1),
            record::dead_letter_id(GROUP, SOURCE, 0, 2)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_outage_keeps_every_dead_letter_and_publishes_each_once_after() {
    let db = TestDb::migrated().await;
    let pool = spansink::pg::connect(&db.db_args()).await.expect("pool");
    let kafka = MockKafka::start(3).expect("mock kafka");
    kafka.create_topic(DLQ, 1).expect("topic");
    kafka.partition_leader(DLQ, 0, 3).expect("leader");
    kafka.broker_down(3).expect("down");
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir);
    let publisher =
        Arc::new(DlqPublisher::new(&dlq_config(&kafka, Duration::from_secs(3))).unwrap());
    let forwarder = Forwarder::new(Arc::clone(&spool), publisher, pool);

    set_stored_offset(&db, 0, 10).await;
    let mut expected = BTreeSet::new();
    for o in 0..3 {
        record_in_ledger(&db, spool.id(), 0, o).await;
        let d = spooled_letter(&spool, 0, o);
        spool.put(&d).unwrap();
        expected.insert(d.id);
    }

    let report = forwarder.forward_once().await.unwrap();
    assert_eq!(
        report,
        ForwardReport {
            published: 0,
            pending: 0,
            failed: 3,
            discarded: 0,
            oversize: 0,
        }
    );
    assert_eq!(spooled(&spool), expected);

    kafka.broker_up(3).expect("up");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spooled(&spool).is_empty() {
        assert!(Instant::now() < deadline, "the spool never drained");
        let report = forwarder.forward_once().await.unwrap();
        assert_eq!(report.pending, 0);
    }

    let published = ids(&read_dlq(&kafka).await);
    assert_eq!(published.len(), 3, "{published:?}");
    assert_eq!(published.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_written_by_the_previous_release_is_read_and_published() {
    use common::fixtures;
    let d = Drained::new().await;
    let dir = tempfile::tempdir().unwrap();
    // `spool` opens the directory's `spool/`.
    fixtures::copy_dir(
        std::path::Path::new(fixtures::SPOOL_V1),
        &dir.path().join("spool"),
    );
    let spool = spool(&dir);
    assert_eq!(spool.id(), fixtures::SPOOL_V1_ID);
    let entry = spool
        .read(fixtures::SPOOL_V1_ENTRY)
        .expect("a version 1 entry reads");
    assert_eq!((entry.offset, entry.reason.as_str()), (5, "bad_protobuf"));
    d.db.client()
        .await
        .execute(
            "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", id, tenant_id,
                                       stage, reason, error, instance, spool_id)
             VALUES ('spansink', 'otlp_spans', 0, 5, $1, 'acme', 'decode', 'bad_protobuf', 'e', 'host-1', $2)",
            &[&fixtures::SPOOL_V1_ENTRY, &fixtures::SPOOL_V1_ID],
        )
        .await
        .expect("ledger row");
    let pool = spansink::pg::connect(&d.db.db_args()).await.expect("pool");
    let publisher =
        Arc::new(DlqPublisher::new(&dlq_config(&d.kafka, Duration::from_secs(10))).unwrap());
    let forwarder = Forwarder::new(Arc::clone(&spool), publisher, pool);
    let report = forwarder.forward_once().await.expect("pass");
    assert_eq!(report.published, 1, "{report:?}");
    let published = read_topic(d.kafka.bootstrap_servers(), DLQ);
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].payload(), Some(entry.payload.as_slice()));
    assert_eq!(
        common::kafka::header(&published[0], header::ID).as_deref(),
        Some(fixtures::SPOOL_V1_ENTRY)
    );
    assert!(
        spool.list().unwrap().is_empty(),
        "published entries leave the spool"
    );
}
