//! The offset in PostgreSQL is the source of truth: a partition resumes exactly
//! at its stored offset, whether Kafka's committed offset is behind or ahead of
//! it, and a gap in the partition's offsets is crossed, not tripped over.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::db::TestDb;
use common::exposition::{samples, series};
use common::kafka::{commit_offsets, produce, producer, TOPIC};
use common::spansink::{wait_for, Instance};
use common::traffic::{generator, produce_traffic, span_count, stored_offsets, Produced};
use prost::Message as _;
use spansink::kafka::mock::MockKafka;
use spansink::otlp::common::v1::{any_value, AnyValue, KeyValue};

async fn set_stored_offset(db: &TestDb, group: &str, partition: i32, next: i64) {
    db.client()
        .await
        .execute(
            "INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at)
             VALUES ($1, $2, $3, $4, now())",
            &[&group, &TOPIC, &partition, &next],
        )
        .await
        .expect("insert offset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_resume_at_the_postgres_offset_whatever_kafka_committed() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = common::kafka::cluster(2, false);
    let mut gen = generator(11, 5);
    let produced = produce_traffic(&bootstrap, TOPIC, 2, 20, &mut gen).await; // 10 per partition

    // Partition 0: PostgreSQL ahead of Kafka (a late commit, expired group offsets).
    // Partition 1: PostgreSQL behind Kafka (a database restored from a backup).
    let group = "g-resume";
    set_stored_offset(&db, group, 0, 6).await;
    set_stored_offset(&db, group, 1, 3).await;
    commit_offsets(&bootstrap, group, TOPIC, &[(0, 2), (1, 8)]);

    let _instance = Instance::spawn(&bootstrap, &db.url, group, &[]);
    let ends = produced.end_offsets();
    wait_for(
        "both partitions at their end",
        Duration::from_secs(60),
        || async { stored_offsets(&db, group, TOPIC).await == ends },
    )
    .await;
    // Exactly the messages at and above each stored offset were written.
    let below: BTreeMap<i32, i64> = BTreeMap::from([(0, 6), (1, 3)]);
    let expected = produced.total_spans() - produced.spans_below(&below);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(span_count(&db).await as usize, expected);
}

/// A cluster whose one partition holds 14 messages and no longer starts at
/// offset 0: the mock keeps about 5 MiB per partition, and messages of
/// ~512 KiB push the first ones out.
struct DeletedStart {
    _kafka: MockKafka,
    bootstrap: String,
    produced: Produced,
    /// The log start.
    low: i64,
}

async fn a_partition_whose_start_was_deleted() -> DeletedStart {
    let (kafka, bootstrap) = common::kafka::cluster(1, false);
    let p = producer(&bootstrap);
    let mut gen = generator(12, 2);
    let mut produced = Produced::default();
    for _ in 0..14 {
        let mut msg = gen.next_message(SystemTime::now());
        let padding = KeyValue {
            key: "padding".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("x".repeat(512 << 10))),
            }),
        };
        msg.request.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .push(padding);
        let (part, offset) = produce(
            &p,
            TOPIC,
            0,
            Some(&msg.tenant),
            &msg.request.encode_to_vec(),
        )
        .await;
        produced
            .messages
            .entry(part)
            .or_default()
            .push((offset, msg.span_count));
    }
    let (low, high) = common::kafka::watermarks(&bootstrap, TOPIC, 0);
    assert!(
        low > 0,
        "the test needs a partition whose log no longer starts at 0"
    );
    assert_eq!(high, 14);
    DeletedStart {
        _kafka: kafka,
        bootstrap,
        produced,
        low,
    }
}

impl DeletedStart {
    /// Runs an instance of `group` over the partition until it has stored
    /// the partition's end, and checks that exactly the messages from the
    /// log start on were written.
    async fn ingest_from_log_start(&self, db: &TestDb, group: &str) -> Instance {
        let instance = Instance::spawn(
            &self.bootstrap,
            &db.url,
            group,
            &["--max-message-bytes=1048576"],
        );
        let ends = self.produced.end_offsets();
        wait_for(
            "the partition reaches its end",
            Duration::from_secs(60),
            || async { stored_offsets(db, group, TOPIC).await == ends },
        )
        .await;
        let kept = BTreeMap::from([(0, self.low)]);
        assert_eq!(
            span_count(db).await as usize,
            self.produced.total_spans() - self.produced.spans_below(&kept)
        );
        instance
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_offsets_is_crossed_and_counted() {
    let db = TestDb::migrated().await;
    let partition = a_partition_whose_start_was_deleted().await;

    let group = "g-gap";
    set_stored_offset(&db, group, 0, 0).await;
    let instance = partition.ingest_from_log_start(&db, group).await;
    let metrics = instance.scrape().await;
    assert!(
        series(&samples(&metrics), "spansink_offset_gaps_total", &[]).any(|s| s.value != 0.0),
        "the gap is counted:\n{metrics}"
    );
}

/// A partition with no stored offset starts at offset 0, not at librdkafka's
/// logical beginning; where retention already deleted offset 0, it must still
/// start at the log start and store everything Kafka holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_at_the_log_start_when_offset_0_is_gone() {
    let db = TestDb::migrated().await;
    let partition = a_partition_whose_start_was_deleted().await;

    let _instance = partition.ingest_from_log_start(&db, "g-new").await;
}
