//! The topic loadgen produces to: created when missing, and its partition
//! count checked against what the caller expects. Apart from producing, as
//! the only part that speaks to the cluster's admin and metadata APIs.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientConfig;

use crate::error::{Error, Result};

/// How long the topic check waits for the cluster's metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Makes sure `topic` exists, creating it with `partitions` partitions (and the
/// broker's default replication) if not. Returns the topic's partition count.
pub async fn ensure_topic(config: &ClientConfig, topic: &str, partitions: i32) -> Result<i32> {
    let mut config = config.clone();
    // Otherwise the metadata request itself may create the topic, with the
    // broker's default partition count instead of ours.
    config.set("allow.auto.create.topics", "false");
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(config.create()?);
    if let Some(existing) = partition_count(&admin, topic).await? {
        if existing != partitions {
            tracing::info!(
                topic,
                existing,
                requested = partitions,
                "the topic exists; keeping its partition count"
            );
        }
        return Ok(existing);
    }
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new()
        .operation_timeout(Some(METADATA_TIMEOUT))
        .request_timeout(Some(2 * METADATA_TIMEOUT));
    for result in admin.create_topics([&new_topic], &options).await? {
        match result {
            // Another producer created it first: as good.
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(Error::Kafka(KafkaError::AdminOp(code))),
        }
    }
    tracing::info!(topic, partitions, "created the topic");
    Ok(partitions)
}

/// The topic's partition count, or `None` if the cluster does not know it.
async fn partition_count(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<i32>> {
    let (admin, name) = (Arc::clone(admin), topic.to_string());
    // librdkafka's metadata call blocks its thread.
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await
    .map_err(join_error)??;
    topic_partitions(&metadata, topic)
}

fn topic_partitions(metadata: &Metadata, topic: &str) -> Result<Option<i32>> {
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(
            i32::try_from(found.partitions().len()).unwrap_or(i32::MAX),
        )),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        Some(code) => Err(Error::Kafka(KafkaError::MetadataFetch(code))),
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    match e.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        // Only a runtime that shuts down cancels a blocking task.
        Err(_) => Error::Shutdown,
    }
}

/// Logs when the topic's partition count is not the one expected.
pub(super) async fn check_partitions(
    producer: &FutureProducer,
    topic: &str,
    expected: i32,
) -> Result<()> {
    let (client, name) = (producer.clone(), topic.to_string());
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await
    .map_err(join_error)??;
    match topic_partitions(&metadata, topic)? {
        Some(found) if found == expected => {}
        found => tracing::warn!(
            topic,
            expected,
            found = found.unwrap_or(0),
            "the topic does not have the expected partition count"
        ),
    }
    Ok(())
}
