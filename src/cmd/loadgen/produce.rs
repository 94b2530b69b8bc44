//! The producing loop: messages generated, encoded, handed to the producer at
//! the pace asked for, and every delivery report collected before the run
//! counts as done.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use prost::Message as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::config::Encoding;
use crate::error::{Error, Result};
use crate::loadgen::json::encode_traces_json;
use crate::loadgen::{GeneratedMessage, Generator};
use crate::otlp::ExportTraceServiceRequest;

use super::pacer::Pacer;
use super::report::LoadgenReport;
use super::topic::check_partitions;

/// Messages awaiting their delivery report before the producer waits for one.
const MAX_IN_FLIGHT: usize = 10_000;

/// Checks the arguments of [`produce`]; errors name the command-line flag.
pub(super) fn validate_produce(
    topic: &str,
    tenant_header: &str,
    count: usize,
    rate: f64,
) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::config("--topic", "is empty"));
    }
    if tenant_header.trim().is_empty() {
        return Err(Error::config("--tenant-header", "is empty"));
    }
    if count == 0 {
        return Err(Error::config("--count", "must be at least 1"));
    }
    if !rate.is_finite() || rate < 0.0 {
        return Err(Error::config("--rate", "must be 0 or a positive number"));
    }
    Ok(())
}

/// Produces `count` spans from `generator` to `topic`, `rate` spans per second
/// (0: as fast as the broker accepts), and waits until the broker has
/// acknowledged every message. A failed delivery fails the run.
///
/// `partitions` is the partition count the caller made the topic with (see
/// [`ensure_topic`](super::ensure_topic)); it is checked against the cluster
/// before the first message, so that a run against a topic of another shape is
/// noticed in the log.
// The argument list is the interface `spansink demo` shares with this command.
#[allow(clippy::too_many_arguments)]
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    encoding: Encoding,
    tenant_header: &str,
    generator: &mut Generator,
    count: usize,
    rate: f64,
    partitions: Option<i32>,
) -> Result<LoadgenReport> {
    validate_produce(topic, tenant_header, count, rate)?;
    if let Some(expected) = partitions {
        check_partitions(producer, topic, expected).await?;
    }
    let target = Target {
        topic,
        tenant_header,
    };
    let started = Instant::now();
    let mut pacer = Pacer::new(rate, started);
    let mut in_flight = FuturesUnordered::new();
    let mut report = LoadgenReport {
        messages: 0,
        spans: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        run_id: generator.spec().run_id.clone(),
    };
    let mut left = count;
    while left > 0 {
        let spans = left.min(generator.spec().spans_per_message);
        if let Some(at) = pacer.reserve(Instant::now(), spans) {
            tokio::time::sleep_until(at.into()).await;
        }
        let message = generator.next_message_of(spans, SystemTime::now());
        let payload = encode(encoding, &message.request);
        send(producer, &target, &message, &payload, &mut in_flight).await?;
        left -= message.span_count;
        report.messages += 1;
        report.spans += message.span_count;
        report.bytes += payload.len() as u64;
        settle_ready(&mut in_flight)?;
        if in_flight.len() >= MAX_IN_FLIGHT {
            settle_one(&mut in_flight).await?;
        } else if report.messages.is_multiple_of(64) {
            // Without a rate, nothing above waits: let the runtime's other tasks run.
            tokio::task::yield_now().await;
        }
    }
    while !in_flight.is_empty() {
        settle_one(&mut in_flight).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Encodes one request as the topic's consumers expect it.
pub fn encode(encoding: Encoding, request: &ExportTraceServiceRequest) -> Vec<u8> {
    match encoding {
        Encoding::OtlpProto => request.encode_to_vec(),
        Encoding::OtlpJson => encode_traces_json(request).into_bytes(),
    }
}

type InFlight = FuturesUnordered<DeliveryFuture>;

/// Where each message goes.
struct Target<'a> {
    topic: &'a str,
    tenant_header: &'a str,
}

/// Hands one message to the producer, waiting for room in its queue if it is full.
async fn send(
    producer: &FutureProducer,
    target: &Target<'_>,
    message: &GeneratedMessage,
    payload: &[u8],
    in_flight: &mut InFlight,
) -> Result<()> {
    let headers = OwnedHeaders::new().insert(Header {
        key: target.tenant_header,
        value: Some(message.tenant.as_bytes()),
    });
    let mut record = FutureRecord::to(target.topic)
        .key(&message.key)
        .payload(payload)
        .headers(headers)
        .timestamp(unix_millis(SystemTime::now()));
    loop {
        match producer.send_result(record) {
            Ok(delivery) => {
                in_flight.push(delivery);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                if in_flight.is_empty() {
                    // The queue is full of someone else's messages (a shared producer).
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    settle_one(in_flight).await?;
                }
            }
            Err((e, _)) => return Err(Error::Kafka(e)),
        }
    }
}

/// Collects the delivery reports that have already arrived.
fn settle_ready(in_flight: &mut InFlight) -> Result<()> {
    while let Some(Some(delivery)) = in_flight.next().now_or_never() {
        check_delivery(delivery)?;
    }
    Ok(())
}

/// Waits for one delivery report.
async fn settle_one(in_flight: &mut InFlight) -> Result<()> {
    match in_flight.next().await {
        Some(delivery) => check_delivery(delivery),
        None => Ok(()),
    }
}

fn check_delivery(
    delivery: std::result::Result<OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
) -> Result<()> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(Error::Kafka(e)),
        // The producer was dropped with the message still queued.
        Err(_) => Err(Error::Kafka(KafkaError::Canceled)),
    }
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
