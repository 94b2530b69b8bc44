//! Producing fixtures and reading offsets back from a Kafka-protocol broker.

#![allow(dead_code)]

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// The topic the tests consume, and the dead-letter topic.
pub const TOPIC: &str = "otlp_spans";
pub const DLQ: &str = "spansink.dlq";

/// An embedded cluster of three brokers with the source topic and, when
/// `dlq`, the dead-letter topic; and its bootstrap address.
pub fn cluster(partitions: i32, dlq: bool) -> (spansink::kafka::mock::MockKafka, String) {
    let kafka = spansink::kafka::mock::MockKafka::start(3).expect("mock kafka");
    kafka.create_topic(TOPIC, partitions).expect("topic");
    if dlq {
        kafka.create_topic(DLQ, 1).expect("dlq topic");
    }
    let bootstrap = kafka.bootstrap_servers().to_string();
    (kafka, bootstrap)
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    producer_with(bootstrap, &[])
}

/// A producer with extra settings, such as a compression codec.
pub fn producer_with(bootstrap: &str, settings: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

/// Produces one message and returns its (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    tenant: Option<&str>,
    payload: &[u8],
) -> (i32, i64) {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(payload);
    if let Some(t) = tenant {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "X-Scope-OrgID",
            value: Some(t),
        }));
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .expect("delivered");
    (delivery.partition, delivery.offset)
}

fn client(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // Dead letters of large messages are large: fetch them whole.
        .set("max.partition.fetch.bytes", "52428800")
        .create()
        .expect("consumer")
}

/// The group's committed offsets in Kafka, per partition (`None`: nothing committed).
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<Option<i64>> {
    let c = client(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            },
        )
        .collect()
}

/// Commits offsets for a group from outside it, as a previous owner would have.
pub fn commit_offsets(bootstrap: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let c = client(bootstrap, group);
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
}

/// The end (high watermark) offset of each partition.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c = client(bootstrap, "spansink-test-watermarks");
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .collect()
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/otlp/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (low, high) watermarks of one partition.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    client(bootstrap, "spansink-test-watermarks")
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
}

/// Every record of a topic, from the beginning to its current end.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let c = client(bootstrap, "spansink-test-reader");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in &partitions {
        let (low, high) = c
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .expect("watermarks");
        remaining += (high - low).max(0);
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (out.len() as i64) < remaining && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

/// A header's value as text.
pub fn header(message: &rdkafka::message::OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::{Headers as _, Message as _};
    let headers = message.headers()?;
    headers
        .iter()
        .filter(|h| h.key == key)
        .last()
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
}
