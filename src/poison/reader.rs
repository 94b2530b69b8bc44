//! Reads the DLQ topic back, from its beginning to the end it had when the
//! read started: `spansink replay`'s source. It joins no group and commits
//! nothing, so reading never changes the DLQ.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::kafka::Settings;
use crate::otlp::spansink::v1::DeadLetter;
use crate::poison::dlq;

pub async fn read_topic(
    kafka: &Settings,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<DeadLetter>> {
    let kafka = kafka.clone();
    let topic = topic.to_string();
    crate::blocking::run("reading the DLQ topic", move || {
        read_blocking(&kafka, &topic, timeout)
    })
    .await
}

fn read_blocking(kafka: &Settings, topic: &str, timeout: Duration) -> Result<Vec<DeadLetter>> {
    let config = kafka.client_config(&[
        // Required by librdkafka for a consumer; never joined, never committed.
        ("group.id", "spansink-replay".into()),
        ("enable.auto.commit", "false".into()),
        ("enable.partition.eof", "false".into()),
        // Dead letters of large messages are large: fetch them whole.
        ("max.partition.fetch.bytes", (50 << 20).to_string()),
    ]);
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| crate::kafka::config_error("DLQ reader", e))?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::config(
            "--dlq-topic",
            format!("topic {topic} does not exist"),
        ));
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
        }
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut letters = Vec::new();
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Kafka(
                rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
                ),
            ));
        }
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = received?;
        use rdkafka::message::Message as _;
        let (partition, offset) = (message.partition(), message.offset());
        match dlq::from_message(&message) {
            Ok(d) => letters.push(d),
            Err(e) => {
                tracing::warn!(partition, offset, error = %e, "not a spansink dead letter; left out")
            }
        }
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
    }
    Ok(letters)
}
