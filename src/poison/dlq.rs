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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::error::{Error, Reason, Result};
use crate::kafka::{Client, Settings};
use crate::otlp::spansink::v1::{DeadLetter, Header};

/// The dead-letter topic unless configured otherwise.
pub const DEFAULT_TOPIC: &str = "spansink.dlq";

/// The names of the headers spansink adds to a dead-letter record.
pub mod header {
    /// The dead-letter id; the same poison published twice carries the same id.
    pub const ID: &str = "spansink.dlq.id";
    pub const GROUP: &str = "spansink.dlq.group";
    pub const SOURCE_TOPIC: &str = "spansink.dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "spansink.dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "spansink.dlq.source.offset";
    /// The original message's Kafka timestamp; absent when it had none.
    pub const SOURCE_TIMESTAMP: &str = "spansink.dlq.source.timestamp";
    /// Absent when the tenant was never determined.
    pub const TENANT: &str = "spansink.dlq.tenant";
    pub const STAGE: &str = "spansink.dlq.stage";
    pub const REASON: &str = "spansink.dlq.reason";
    /// At most 1024 bytes.
    pub const ERROR: &str = "spansink.dlq.error";
    /// Absent unless PostgreSQL refused the message.
    pub const SQLSTATE: &str = "spansink.dlq.sqlstate";
    pub const ATTEMPTS: &str = "spansink.dlq.attempts";
    pub const FIRST_FAILURE: &str = "spansink.dlq.first.failure";
    /// The original value's size in bytes.
    pub const SIZE: &str = "spansink.dlq.size";
    pub const INSTANCE: &str = "spansink.dlq.instance";
    pub const VERSION: &str = "spansink.dlq.version";
    /// Only on a marker: the record stands for a dead letter the topic refused
    /// (its size); the value is absent, and this is the original value's size
    /// in bytes. The whole record is in the publishing spool's `oversize/`.
    pub const OVERSIZE: &str = "spansink.dlq.oversize";
    /// Only on a marker: why the topic refused the dead letter itself.
    pub const REFUSED: &str = "spansink.dlq.refused";

    pub const CONNECT_TOPIC: &str = "__connect.errors.topic";
    pub const CONNECT_PARTITION: &str = "__connect.errors.partition";
    pub const CONNECT_OFFSET: &str = "__connect.errors.offset";
    /// `spansink.poison.<reason>`.
    pub const CONNECT_EXCEPTION_CLASS: &str = "__connect.errors.exception.class.name";
    /// The error text.
    pub const CONNECT_EXCEPTION_MESSAGE: &str = "__connect.errors.exception.message";
    /// See [`super::connect_stage`].
    pub const CONNECT_STAGE: &str = "__connect.errors.stage";
}

/// Prefix of the Connect exception class name; the reason follows.
pub const EXCEPTION_CLASS_PREFIX: &str = "spansink.poison.";

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
    c.set_log_level(RDKafkaLogLevel::Warning);
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

/// Kafka Connect's name for where a record failed.
///
/// | spansink stage | Connect stage     | why                                        |
/// |----------------|-------------------|--------------------------------------------|
/// | decode         | `VALUE_CONVERTER` | the value's bytes could not be read        |
/// | validate       | `TRANSFORMATION`  | read, but refused by a rule on its content |
/// | write, crash   | `TASK_PUT`        | the sink could not store it                |
///
/// Any other stage (a later version's) is `TASK_PUT`, Connect's stage for "the
/// sink refused it".
pub fn connect_stage(stage: &str) -> &'static str {
    match stage {
        "decode" => "VALUE_CONVERTER",
        "validate" => "TRANSFORMATION",
        _ => "TASK_PUT",
    }
}

/// The record's headers: the original ones first, in their order, then
/// spansink's, then Connect's. Optional facts that are unknown are left out.
pub fn headers(d: &DeadLetter) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(d.headers.len() + 22);
    for original in &d.headers {
        h = h.insert(KafkaHeader {
            key: &original.key,
            value: original.value.as_deref(),
        });
    }
    let text = |h: OwnedHeaders, key: &str, value: &str| {
        h.insert(KafkaHeader {
            key,
            value: Some(value),
        })
    };
    let partition = d.partition.to_string();
    let offset = d.offset.to_string();
    h = text(h, header::ID, &d.id);
    h = text(h, header::GROUP, &d.group);
    h = text(h, header::SOURCE_TOPIC, &d.topic);
    h = text(h, header::SOURCE_PARTITION, &partition);
    h = text(h, header::SOURCE_OFFSET, &offset);
    if let Some(ts) = d.timestamp_ms.and_then(rfc3339_millis) {
        h = text(h, header::SOURCE_TIMESTAMP, &ts);
    }
    if let Some(tenant) = &d.tenant {
        h = text(h, header::TENANT, tenant);
    }
    h = text(h, header::STAGE, &d.stage);
    h = text(h, header::REASON, &d.reason);
    h = text(h, header::ERROR, &d.error);
    if let Some(sqlstate) = &d.sqlstate {
        h = text(h, header::SQLSTATE, sqlstate);
    }
    h = text(h, header::ATTEMPTS, &d.attempts.to_string());
    h = text(h, header::SIZE, &d.payload.len().to_string());
    // Only a damaged record holds a time RFC 3339 cannot write (before 1970
    // or after 9999); the header is then left out rather than invented.
    if let Some(first) = rfc3339_millis(d.first_failure_unix_ms) {
        h = text(h, header::FIRST_FAILURE, &first);
    }
    h = text(h, header::INSTANCE, &d.instance);
    h = text(h, header::VERSION, &d.version);

    h = text(h, header::CONNECT_TOPIC, &d.topic);
    h = text(h, header::CONNECT_PARTITION, &partition);
    h = text(h, header::CONNECT_OFFSET, &offset);
    h = text(
        h,
        header::CONNECT_EXCEPTION_CLASS,
        &format!("{EXCEPTION_CLASS_PREFIX}{}", d.reason),
    );
    h = text(h, header::CONNECT_EXCEPTION_MESSAGE, &d.error);
    text(h, header::CONNECT_STAGE, connect_stage(&d.stage))
}

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// `ms` since the epoch as RFC 3339 UTC with milliseconds; `None` outside 1970..=9999.
fn rfc3339_millis(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms)
        .ok()
        .filter(|&m| m <= MAX_RFC3339_MS as u64)?;
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(time).to_string())
}

fn parse_rfc3339_millis(key: &str, value: &str) -> Result<i64> {
    let time: SystemTime = humantime::parse_rfc3339(value)
        .map_err(|e| bad_header(key, format!("{value:?} is not an RFC 3339 UTC time: {e}")))?;
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| bad_header(key, format!("{value:?} is out of range")))
}

fn bad_header(key: &str, why: impl std::fmt::Display) -> Error {
    Error::input(Reason::BadDeadLetter, format!("header {key}: {why}"))
}

/// Whether a dead-letter record is a marker for one the topic refused (its
/// value is not the message: see [`header::OVERSIZE`]).
pub fn is_marker<H: Headers + ?Sized>(headers: &H) -> bool {
    let all: Vec<KafkaHeader<'_, &[u8]>> = (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .collect();
    let start = all.iter().rposition(|h| h.key == header::ID);
    start.is_some_and(|s| all[s..].iter().any(|h| h.key == header::OVERSIZE))
}

/// Reads a dead-letter record back: spansink's headers, its original headers,
/// and from the record, its key and value. For `replay`.
pub fn from_message<M: Message>(message: &M) -> Result<DeadLetter> {
    let headers = message
        .headers()
        .ok_or_else(|| bad_header(header::ID, "the record has no headers"))?;
    let mut d = parse_headers(headers)?;
    d.key = message.key().map(<[u8]>::to_vec);
    d.payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
    Ok(d)
}

/// Reads spansink's headers of a dead-letter record into a [`DeadLetter`]
/// whose key and payload are left empty for the caller to take from the record.
///
/// spansink's headers start at the last `spansink.dlq.id`: everything before it
/// is the original message's, even a header by that name (a message that was
/// dead-lettered, replayed and refused again). Unknown headers after it are
/// ignored, so that a later version may add some. The id, group, source
/// topic, partition and offset, stage and reason are required; the other
/// facts are descriptive and default when absent.
pub fn parse_headers<H: Headers + ?Sized>(headers: &H) -> Result<DeadLetter> {
    let all: Vec<KafkaHeader<'_, &[u8]>> = (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .collect();
    let start = all
        .iter()
        .rposition(|h| h.key == header::ID)
        .ok_or_else(|| bad_header(header::ID, "missing: not a spansink dead letter"))?;
    let mut d = DeadLetter {
        headers: all[..start]
            .iter()
            .map(|h| Header {
                key: h.key.to_string(),
                value: h.value.map(<[u8]>::to_vec),
            })
            .collect(),
        ..DeadLetter::default()
    };
    let mut seen = Required::default();
    for h in &all[start..] {
        apply(&mut d, &mut seen, h.key, h.value)?;
    }
    seen.check()?;
    Ok(d)
}

/// Which required headers were found.
#[derive(Default)]
struct Required {
    group: bool,
    topic: bool,
    partition: bool,
    offset: bool,
    stage: bool,
    reason: bool,
}

impl Required {
    fn check(&self) -> Result<()> {
        let missing = [
            (self.group, header::GROUP),
            (self.topic, header::SOURCE_TOPIC),
            (self.partition, header::SOURCE_PARTITION),
            (self.offset, header::SOURCE_OFFSET),
            (self.stage, header::STAGE),
            (self.reason, header::REASON),
        ]
        .into_iter()
        .find(|(seen, _)| !seen);
        match missing {
            Some((_, key)) => Err(bad_header(key, "missing")),
            None => Ok(()),
        }
    }
}

/// Stores one of spansink's headers into the dead letter.
fn apply(d: &mut DeadLetter, seen: &mut Required, key: &str, value: Option<&[u8]>) -> Result<()> {
    let known = matches!(
        key,
        header::ID
            | header::GROUP
            | header::SOURCE_TOPIC
            | header::SOURCE_PARTITION
            | header::SOURCE_OFFSET
            | header::SOURCE_TIMESTAMP
            | header::TENANT
            | header::STAGE
            | header::REASON
            | header::ERROR
            | header::SQLSTATE
            | header::ATTEMPTS
            | header::FIRST_FAILURE
            | header::INSTANCE
            | header::VERSION
    );
    if !known {
        return Ok(());
    }
    let value = value.ok_or_else(|| bad_header(key, "has no value"))?;
    let text = std::str::from_utf8(value).map_err(|e| bad_header(key, e))?;
    let number = |what: &str| bad_header(key, format!("{text:?} is not {what}"));
    match key {
        header::ID => d.id = text.to_string(),
        header::GROUP => {
            d.group = text.to_string();
            seen.group = true;
        }
        header::SOURCE_TOPIC => {
            d.topic = text.to_string();
            seen.topic = true;
        }
        header::SOURCE_PARTITION => {
            d.partition = text.parse().map_err(|_| number("a partition"))?;
            seen.partition = true;
        }
        header::SOURCE_OFFSET => {
            d.offset = text.parse().map_err(|_| number("an offset"))?;
            seen.offset = true;
        }
        header::SOURCE_TIMESTAMP => d.timestamp_ms = Some(parse_rfc3339_millis(key, text)?),
        header::TENANT => d.tenant = Some(text.to_string()),
        header::STAGE => {
            d.stage = text.to_string();
            seen.stage = true;
        }
        header::REASON => {
            d.reason = text.to_string();
            seen.reason = true;
        }
        header::ERROR => d.error = text.to_string(),
        header::SQLSTATE => d.sqlstate = Some(text.to_string()),
        header::ATTEMPTS => d.attempts = text.parse().map_err(|_| number("a count"))?,
        header::FIRST_FAILURE => d.first_failure_unix_ms = parse_rfc3339_millis(key, text)?,
        header::INSTANCE => d.instance = text.to_string(),
        header::VERSION => d.version = text.to_string(),
        _ => {}
    }
    Ok(())
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
    use crate::poison::record;

    fn letter() -> DeadLetter {
        DeadLetter {
            id: record::dead_letter_id("g", "otlp_spans", 2, 41),
            group: "g".into(),
            topic: "otlp_spans".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_123),
            key: Some(b"k".to_vec()),
            headers: vec![
                Header {
                    key: header::ID.into(),
                    value: Some(b"from an earlier trip".to_vec()),
                },
                Header {
                    key: "empty".into(),
                    value: None,
                },
            ],
            payload: vec![0, 159, 146, 150],
            tenant: Some("acme".into()),
            stage: "write".into(),
            reason: "pg_data_exception".into(),
            error: "value out of range".into(),
            sqlstate: Some("22003".into()),
            attempts: 3,
            first_failure_unix_ms: 1_700_000_001_000,
            instance: "host-1".into(),
            version: "0.1.0".into(),
            // Not a header: it names a spool, which means nothing downstream.
            spool_id: String::new(),
        }
    }

    fn value<'h>(h: &'h OwnedHeaders, key: &str) -> Option<&'h str> {
        (0..h.count())
            .rev()
            .filter_map(|i| h.try_get(i))
            .find(|x| x.key == key)
            .and_then(|x| x.value)
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn headers_round_trip_with_an_original_header_of_the_same_name() {
        let d = letter();
        let h = headers(&d);
        assert_eq!(h.get(0).value, Some(&b"from an earlier trip"[..]));
        assert_eq!(h.get(1).value, None);
        let mut back = parse_headers(&h).unwrap();
        back.key = d.key.clone();
        back.payload = d.payload.clone();
        assert_eq!(back, d);
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let h = headers(&letter());
        assert_eq!(
            value(&h, header::SOURCE_TIMESTAMP),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            value(&h, header::FIRST_FAILURE),
            Some("2023-11-14T22:13:21.000Z")
        );
    }

    #[test]
    fn unknown_and_unwritable_facts_are_left_out() {
        let d = DeadLetter {
            timestamp_ms: Some(-1),
            tenant: None,
            sqlstate: None,
            first_failure_unix_ms: MAX_RFC3339_MS + 1,
            ..letter()
        };
        let h = headers(&d);
        for key in [
            header::SOURCE_TIMESTAMP,
            header::TENANT,
            header::SQLSTATE,
            header::FIRST_FAILURE,
        ] {
            assert_eq!(value(&h, key), None, "{key}");
        }
        let back = parse_headers(&h).unwrap();
        assert_eq!(back.timestamp_ms, None);
        assert_eq!(back.tenant, None);
        assert_eq!(back.first_failure_unix_ms, 0);
    }

    #[test]
    fn connect_stages_follow_the_documented_mapping() {
        assert_eq!(connect_stage("decode"), "VALUE_CONVERTER");
        assert_eq!(connect_stage("validate"), "TRANSFORMATION");
        assert_eq!(connect_stage("write"), "TASK_PUT");
        assert_eq!(connect_stage("crash"), "TASK_PUT");
        assert_eq!(connect_stage("panic"), "TASK_PUT");
        for r in Reason::ALL {
            assert!(!connect_stage(r.stage()).is_empty());
        }
        let h = headers(&letter());
        assert_eq!(
            value(&h, header::CONNECT_EXCEPTION_CLASS),
            Some("spansink.poison.pg_data_exception")
        );
    }

    #[test]
    fn a_record_without_spansink_headers_is_a_bad_dead_letter() {
        let h = OwnedHeaders::new().insert(KafkaHeader {
            key: "X-Scope-OrgID",
            value: Some("acme"),
        });
        let err = parse_headers(&h).unwrap_err();
        assert_eq!(err.class(), Class::Poison);
        assert_eq!(err.reason(), Some(Reason::BadDeadLetter));
    }

    #[test]
    fn malformed_or_missing_required_headers_are_named() {
        let h = OwnedHeaders::new()
            .insert(KafkaHeader {
                key: header::ID,
                value: Some("x"),
            })
            .insert(KafkaHeader {
                key: header::SOURCE_OFFSET,
                value: Some("forty"),
            });
        let err = parse_headers(&h).unwrap_err().to_string();
        assert!(err.contains(header::SOURCE_OFFSET), "{err}");

        let h = headers(&letter());
        let mut keep: Vec<_> = (0..h.count()).map(|i| h.get(i)).collect();
        keep.retain(|x| x.key != header::REASON);
        let trimmed = keep.into_iter().fold(OwnedHeaders::new(), |acc, x| {
            acc.insert(KafkaHeader {
                key: x.key,
                value: x.value,
            })
        });
        let err = parse_headers(&trimmed).unwrap_err().to_string();
        assert!(err.contains(header::REASON), "{err}");
    }

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
