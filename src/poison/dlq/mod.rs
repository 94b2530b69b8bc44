//! The dead-letter topic: how a dead letter becomes a Kafka record, and back.
//!
//! The record is the original message, unchanged: same value, same key, same
//! headers in the same order. spansink's headers follow the original ones and
//! say where the message came from and why it was refused. A second set under
//! Kafka Connect's `__connect.errors.*` names lets tools built for Connect's
//! dead-letter queues read and reprocess these records as they are.
//!
//! Header values are UTF-8 text: numbers in decimal, times in RFC 3339 UTC
//! with millisecond precision. The error text is at most
//! [`MAX_ERROR_TEXT`](crate::poison::record::MAX_ERROR_TEXT) (1024) bytes, cut by [`truncate_error`](crate::poison::record::truncate_error)
//! when the dead letter was made.

mod headers;

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::error::{Error, Result};
use crate::kafka::{Client, Settings};
use crate::otlp::spansink::v1::DeadLetter;

pub use headers::{
    connect_stage, from_message, headers, is_marker, name as header, parse_headers,
    EXCEPTION_CLASS_PREFIX,
};

/// The dead-letter topic unless configured otherwise.
pub const DEFAULT_TOPIC: &str = "spansink.dlq";

/// librdkafka's largest `message.timeout.ms`; 0 would mean "wait forever".
const MAX_MESSAGE_TIMEOUT_MS: u128 = i32::MAX as u128;

/// librdkafka's largest request size. Its default (1 MB) would refuse, in the
/// producer itself, a dead letter of any message larger than that, although
/// spansink consumes messages of up to `--max-message-bytes`; the broker's
/// limit for the DLQ topic is the one that should decide.
const PRODUCER_MAX_MESSAGE_BYTES: &str = "1000000000";

#[derive(Debug, Clone)]
pub struct DlqConfig {
    /// [`DEFAULT_TOPIC`] unless configured otherwise.
    pub topic: String,
    /// The brokers and the operator's librdkafka settings (security.*, sasl.*, ssl.*, ...).
    pub client: Settings,
    /// This instance's name, for logs and the producer's client id.
    pub instance: String,
    /// How long one record may wait for the broker's acknowledgement.
    pub message_timeout: Duration,
}

/// Publishes dead letters to the DLQ topic, each acknowledged by every in-sync replica.
pub struct DlqPublisher {
    producer: FutureProducer<DlqContext>,
    topic: String,
    message_timeout: Duration,
}

/// A record handed to the producer, whose acknowledgement is still to come.
pub struct PendingDelivery {
    delivery: DeliveryFuture,
}

impl PendingDelivery {
    /// Waits for the broker's acknowledgement: the record's `(partition, offset)`.
    pub async fn acknowledged(self) -> Result<(i32, i64)> {
        settle(self.delivery).await
    }
}

impl DlqPublisher {
    pub fn new(config: &DlqConfig) -> Result<DlqPublisher> {
        let client_config = producer_config(config)?;
        let producer = client_config
            .create_with_context(DlqContext)
            .map_err(|e| crate::kafka::config_error("dead-letter producer", e))?;
        Ok(DlqPublisher {
            producer,
            topic: config.topic.clone(),
            message_timeout: config.message_timeout,
        })
    }

    /// Publishes one dead letter and waits for the broker's acknowledgement.
    pub async fn publish(&self, d: &DeadLetter) -> Result<(i32, i64)> {
        let headers = headers(d);
        let delivery = self
            .producer
            // A full local queue is waited out for as long as one delivery may take.
            .send(record(&self.topic, d, headers), self.message_timeout)
            .await;
        delivery
            .map(|r| (r.partition, r.offset))
            .map_err(|(e, _)| Error::Kafka(e))
    }

    /// Publishes a marker for a dead letter the topic refused for itself: its
    /// headers, the original's and spansink's, plus [`header::OVERSIZE`] and
    /// [`header::REFUSED`], and no value. If even that is refused, spansink's
    /// headers alone.
    pub async fn publish_marker(&self, d: &DeadLetter, refused: &str) -> Result<(i32, i64)> {
        let size = d.payload.len().to_string();
        let refused = crate::poison::record::truncate_error(refused);
        let marked = |h: OwnedHeaders| {
            h.insert(KafkaHeader {
                key: header::OVERSIZE,
                value: Some(size.as_str()),
            })
            .insert(KafkaHeader {
                key: header::REFUSED,
                value: Some(refused.as_str()),
            })
        };
        let full = self.send_marker(d, marked(headers(d))).await;
        match full {
            Err(e) if is_record_specific(&e) && !d.headers.is_empty() => {
                let bare = DeadLetter {
                    headers: Vec::new(),
                    ..d.clone()
                };
                self.send_marker(d, marked(headers(&bare))).await
            }
            other => other,
        }
    }

    async fn send_marker(&self, d: &DeadLetter, headers: OwnedHeaders) -> Result<(i32, i64)> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(key) = &d.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send(record, self.message_timeout)
            .await
            .map(|r| (r.partition, r.offset))
            .map_err(|(e, _)| Error::Kafka(e))
    }

    /// Hands one dead letter to the producer without waiting, so that several
    /// can be in flight; their order on the topic is the order of the calls
    /// (the producer is idempotent). A full local queue is returned as
    /// `QueueFull` for the caller to wait on deliveries it already has in flight.
    pub fn enqueue(&self, d: &DeadLetter) -> Result<PendingDelivery> {
        self.producer
            .send_result(record(&self.topic, d, headers(d)))
            .map(|delivery| PendingDelivery { delivery })
            .map_err(|(e, _)| Error::Kafka(e))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl std::fmt::Debug for DlqPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqPublisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn producer_config(config: &DlqConfig) -> Result<ClientConfig> {
    if config.topic.trim().is_empty() {
        return Err(Error::config("dead-letter topic", "is empty"));
    }
    config.client.check(Client::DeadLetters)?;
    let timeout_ms = config.message_timeout.as_millis();
    if timeout_ms == 0 || timeout_ms > MAX_MESSAGE_TIMEOUT_MS {
        return Err(Error::config(
            "message.timeout.ms",
            format!("the dead-letter timeout must be between 1 ms and {MAX_MESSAGE_TIMEOUT_MS} ms"),
        ));
    }
    let own = [
        (
            "client.id",
            format!("spansink-dlq-{}-{}", crate::VERSION, config.instance),
        ),
        // A dead letter is the only copy of a message whose offset PostgreSQL has
        // already moved past: no loss (acks=all) and no duplicate on a retry
        // (idempotence).
        ("enable.idempotence", "true".into()),
        ("acks", "all".into()),
        ("message.timeout.ms", timeout_ms.to_string()),
        ("message.max.bytes", PRODUCER_MAX_MESSAGE_BYTES.into()),
    ];
    let mut c = config.client.client_config(&own);
    c.set_log_level(config.client.log_level());
    Ok(c)
}

/// The record: value and key unchanged, then [`headers`]. Its timestamp is the
/// time of publishing, not the original's: the DLQ topic's retention must
/// count from when the letter arrived there.
fn record<'a>(
    topic: &'a str,
    d: &'a DeadLetter,
    headers: OwnedHeaders,
) -> FutureRecord<'a, [u8], [u8]> {
    let record = FutureRecord::to(topic)
        .payload(d.payload.as_slice())
        .headers(headers);
    match &d.key {
        Some(key) => record.key(key.as_slice()),
        None => record,
    }
}

async fn settle(delivery: DeliveryFuture) -> Result<(i32, i64)> {
    match delivery.await {
        Ok(Ok(d)) => Ok((d.partition, d.offset)),
        Ok(Err((e, _))) => Err(Error::Kafka(e)),
        // The producer went away before it reported on the record.
        Err(_) => Err(Error::Kafka(KafkaError::Canceled)),
    }
}

/// Whether a failed delivery was refused for the record itself (its size, its
/// format) rather than for the state of the cluster: the next record may
/// still go through.
pub fn is_record_specific(e: &Error) -> bool {
    matches!(
        e,
        Error::Kafka(k) if matches!(
            k.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::MessageBatchTooLarge
                    | RDKafkaErrorCode::InvalidMessage
                    | RDKafkaErrorCode::InvalidMessageSize
                    | RDKafkaErrorCode::InvalidRecord
            )
        )
    )
}

/// Whether the producer's local queue is full.
pub fn is_queue_full(e: &Error) -> bool {
    matches!(e, Error::Kafka(k) if k.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull))
}

/// Routes librdkafka's log and error events to `tracing`. While the DLQ's
/// brokers are down every connection attempt reports an error; the forwarder
/// already reports the failed deliveries, so these stay at debug level.
pub struct DlqContext;

impl ClientContext for DlqContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "spansink::poison::dlq", fac, "{message}")
            }
            _ => tracing::debug!(target: "spansink::poison::dlq", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "spansink::poison::dlq", %error, "{reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Class;

    fn config(kafka: &[(&str, &str)]) -> DlqConfig {
        DlqConfig {
            topic: DEFAULT_TOPIC.into(),
            client: Settings {
                brokers: "127.0.0.1:9".into(),
                overrides: kafka
                    .iter()
                    .map(|(k, v)| crate::kafka::Setting {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
            },
            instance: "i".into(),
            message_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_producer_keeps_its_guarantees_and_passes_the_rest_through() {
        let c = producer_config(&config(&[("security.protocol", "plaintext")])).unwrap();
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("message.timeout.ms"), Some("5000"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert!(DlqPublisher::new(&config(&[])).is_ok());

        let err = producer_config(&config(&[("acks", "1")])).unwrap_err();
        assert_eq!(err.class(), Class::Fatal);
        assert!(err.to_string().contains("acks"), "{err}");
        let zero = DlqConfig {
            message_timeout: Duration::ZERO,
            ..config(&[])
        };
        assert!(producer_config(&zero).is_err());
    }

    #[test]
    fn record_errors_are_told_apart_from_cluster_errors() {
        use rdkafka::error::KafkaError::MessageProduction;
        let big = Error::Kafka(MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge));
        let down = Error::Kafka(MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        assert!(is_record_specific(&big));
        assert!(!is_record_specific(&down));
        assert_eq!(down.class(), Class::Transient);
        assert!(is_queue_full(&Error::Kafka(MessageProduction(
            RDKafkaErrorCode::QueueFull
        ))));
    }
}
