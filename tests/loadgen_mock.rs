//! The traffic generator against the embedded Kafka: what `produce` sends is what
//! a plain consumer reads back, in both encodings, and failures are not hidden.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value as Json;

use spansink::cmd::loadgen::{ensure_topic, produce, producer_config, LoadgenReport};
use spansink::config::Encoding;
use spansink::error::Class;
use spansink::kafka::mock::MockKafka;
use spansink::loadgen::{Generator, TenantMix, TrafficSpec, RUN_ID_ATTRIBUTE};
use spansink::otlp::common::v1::any_value::Value;
use spansink::otlp::common::v1::KeyValue;
use spansink::otlp::ExportTraceServiceRequest;

const TENANT_HEADER: &str = "X-Scope-OrgID";
const PARTITIONS: i32 = 4;

fn tenants() -> TenantMix {
    "acme:3,globex:2,initech".parse().unwrap()
}

fn generator(run_id: &str, spans_per_message: usize) -> Generator {
    Generator::new(TrafficSpec {
        tenants: tenants(),
        spans_per_message,
        seed: 42,
        run_id: run_id.into(),
        error_ratio: 0.1,
    })
}

/// Produces `count` spans with the test's tenant header, checking the partition count.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    encoding: Encoding,
    count: usize,
    rate: f64,
    generator: &mut Generator,
) -> spansink::error::Result<LoadgenReport> {
    produce(
        producer,
        topic,
        encoding,
        TENANT_HEADER,
        generator,
        count,
        rate,
        Some(PARTITIONS),
    )
    .await
}

fn producer(kafka: &MockKafka) -> FutureProducer {
    producer_config(kafka.bootstrap_servers()).create().unwrap()
}

fn start_with_topic(topic: &str) -> MockKafka {
    let kafka = MockKafka::start(3).unwrap();
    kafka.create_topic(topic, PARTITIONS).unwrap();
    kafka
}

struct Received {
    partition: i32,
    tenant: Option<String>,
    payload: Vec<u8>,
}

/// Reads `expected` messages from every partition of `topic`, from the beginning.
fn consume(kafka: &MockKafka, topic: &str, expected: usize) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "loadgen-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} messages",
            out.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let tenant = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == TENANT_HEADER)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        });
        out.push(Received {
            partition: m.partition(),
            tenant,
            payload: m.payload().unwrap_or_default().to_vec(),
        });
    }
    // Nothing beyond what was reported.
    assert!(consumer.poll(Duration::from_millis(500)).is_none());
    out
}

/// One span as both encodings reduce to it.
struct SpanIds {
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// What every message must satisfy whatever its encoding; `messages` holds the
/// spans of each message and the run ids of its resources.
fn check_traffic(received: &[Received], messages: &[(Vec<SpanIds>, Vec<String>)], count: usize) {
    let mix = tenants();
    for r in received {
        let tenant = r.tenant.as_deref().expect("tenant header");
        assert!(mix.contains(tenant), "{tenant}");
    }
    let partitions: HashSet<i32> = received.iter().map(|r| r.partition).collect();
    assert!(partitions.len() > 1, "all messages on {partitions:?}");

    let total: usize = messages.iter().map(|(spans, _)| spans.len()).sum();
    assert_eq!(total, count);

    // A trace lives in exactly one message, and so on one partition.
    let mut trace_home: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut all_span_ids = HashSet::new();
    for (i, (spans, _)) in messages.iter().enumerate() {
        let mut by_trace: HashMap<&[u8], Vec<&SpanIds>> = HashMap::new();
        for s in spans {
            assert_eq!(s.trace_id.len(), 16);
            assert_eq!(s.span_id.len(), 8);
            assert!(s.parent_span_id.is_empty() || s.parent_span_id.len() == 8);
            assert!(all_span_ids.insert(s.span_id.clone()), "span id repeated");
            by_trace.entry(&s.trace_id).or_default().push(s);
        }
        for (trace, spans) in by_trace {
            assert_eq!(
                *trace_home.entry(trace.to_vec()).or_insert(i),
                i,
                "trace split over messages"
            );
            let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
            let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
            assert_eq!(roots, 1, "a trace has one root");
            for s in &spans {
                assert!(
                    s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_slice()),
                    "parent outside its trace"
                );
            }
        }
    }
}

fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn from_proto(payload: &[u8]) -> (Vec<SpanIds>, Vec<String>) {
    let req = ExportTraceServiceRequest::decode(payload).unwrap();
    let mut spans = Vec::new();
    let mut run_ids = Vec::new();
    for rs in &req.resource_spans {
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert!(string_attr(attrs, "service.name").is_some());
        run_ids.push(string_attr(attrs, RUN_ID_ATTRIBUTE).unwrap().to_string());
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            spans.push(SpanIds {
                trace_id: s.trace_id.clone(),
                span_id: s.span_id.clone(),
                parent_span_id: s.parent_span_id.clone(),
            });
        }
    }
    (spans, run_ids)
}

fn json_attr<'a>(attrs: &'a Json, key: &str) -> Option<&'a Json> {
    attrs
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

fn hex_id(v: &Json, len: usize) -> Vec<u8> {
    let s = v.as_str().expect("ids are strings");
    assert_eq!(s.len(), 2 * len, "{s}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{s} is not lowercase hex"
    );
    hex::decode(s).unwrap()
}

fn decimal_string(v: &Json) -> u64 {
    v.as_str()
        .expect("64-bit integers are strings")
        .parse()
        .unwrap()
}

fn from_json(payload: &[u8]) -> (Vec<SpanIds>, Vec<String>, usize) {
    let req: Json = serde_json::from_slice(payload).unwrap();
    let mut spans = Vec::new();
    let mut run_ids = Vec::new();
    let mut int_values = 0;
    for rs in req["resourceSpans"].as_array().unwrap() {
        let attrs = &rs["resource"]["attributes"];
        assert!(json_attr(attrs, "service.name").unwrap()["stringValue"].is_string());
        run_ids.push(
            json_attr(attrs, RUN_ID_ATTRIBUTE).unwrap()["stringValue"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        for ss in rs["scopeSpans"].as_array().unwrap() {
            for s in ss["spans"].as_array().unwrap() {
                let start = decimal_string(&s["startTimeUnixNano"]);
                assert!(decimal_string(&s["endTimeUnixNano"]) >= start);
                assert!(s["kind"].is_u64(), "enums are integers");
                for kv in s["attributes"].as_array().unwrap() {
                    if let Some(i) = kv["value"].get("intValue") {
                        i.as_str().unwrap().parse::<i64>().unwrap();
                        int_values += 1;
                    }
                }
                spans.push(SpanIds {
                    trace_id: hex_id(&s["traceId"], 16),
                    span_id: hex_id(&s["spanId"], 8),
                    parent_span_id: s
                        .get("parentSpanId")
                        .map(|p| hex_id(p, 8))
                        .unwrap_or_default(),
                });
            }
        }
    }
    (spans, run_ids, int_values)
}

#[tokio::test]
async fn proto_traffic_reads_back_complete_and_consistent() {
    let topic = "spans-proto";
    let kafka = start_with_topic(topic);
    // The topic exists: it is kept as it is, whatever count is asked for.
    let config = producer_config(kafka.bootstrap_servers());
    assert_eq!(ensure_topic(&config, topic, 8).await.unwrap(), PARTITIONS);

    let count = 1234;
    let report = send(
        &producer(&kafka),
        topic,
        Encoding::OtlpProto,
        count,
        0.0,
        &mut generator("run-proto", 50),
    )
    .await
    .unwrap();
    assert_eq!((report.spans, report.messages), (count, 25));
    assert_eq!(report.run_id, "run-proto");

    let received = consume(&kafka, topic, report.messages);
    assert_eq!(
        report.bytes,
        received.iter().map(|r| r.payload.len() as u64).sum::<u64>()
    );
    let messages: Vec<_> = received.iter().map(|r| from_proto(&r.payload)).collect();
    assert!(messages
        .iter()
        .flat_map(|(_, ids)| ids)
        .all(|id| id == "run-proto"));
    check_traffic(&received, &messages, count);
}

#[tokio::test]
async fn json_traffic_is_otlp_json() {
    let topic = "spans-json";
    let kafka = start_with_topic(topic);
    let count = 700;
    let report = send(
        &producer(&kafka),
        topic,
        Encoding::OtlpJson,
        count,
        0.0,
        &mut generator("run-json", 40),
    )
    .await
    .unwrap();
    assert_eq!(report.spans, count);

    let received = consume(&kafka, topic, report.messages);
    let mut messages = Vec::new();
    let mut int_values = 0;
    for r in &received {
        let (spans, run_ids, ints) = from_json(&r.payload);
        assert!(run_ids.iter().all(|id| id == "run-json"));
        int_values += ints;
        messages.push((spans, run_ids));
    }
    assert!(int_values > 0, "no intValue seen");
    check_traffic(&received, &messages, count);
}

#[tokio::test]
async fn retried_produce_requests_do_not_duplicate() {
    let topic = "spans-retry";
    let kafka = start_with_topic(topic);
    let not_enough = RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;
    kafka
        .request_errors(RDKafkaApiKey::Produce, &[not_enough; 3])
        .unwrap();
    let count = 500;
    let report = send(
        &producer(&kafka),
        topic,
        Encoding::OtlpProto,
        count,
        0.0,
        &mut generator("run-retry", 25),
    )
    .await
    .unwrap();
    let received = consume(&kafka, topic, report.messages);
    let messages: Vec<_> = received.iter().map(|r| from_proto(&r.payload)).collect();
    check_traffic(&received, &messages, count);
}

#[tokio::test]
async fn an_undeliverable_message_fails_the_run() {
    let topic = "spans-down";
    let kafka = start_with_topic(topic);
    kafka.broker_down(-1).unwrap();
    let mut config = producer_config(kafka.bootstrap_servers());
    config.set("message.timeout.ms", "1500");
    let producer: FutureProducer = config.create().unwrap();
    // No partition check: its metadata request would fail first, and this test is
    // about deliveries.
    let mut generator = generator("run-down", 50);
    let err = produce(
        &producer,
        topic,
        Encoding::OtlpProto,
        TENANT_HEADER,
        &mut generator,
        100,
        0.0,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.class(), Class::Transient, "{err}");
}

#[tokio::test]
async fn rate_limit_spreads_the_run_out() {
    let topic = "spans-rate";
    let kafka = start_with_topic(topic);
    // 12 messages at 2000 spans/s: the last is due 11 x 25 ms after the first.
    let report = send(
        &producer(&kafka),
        topic,
        Encoding::OtlpProto,
        600,
        2000.0,
        &mut generator("run-rate", 50),
    )
    .await
    .unwrap();
    assert_eq!(report.messages, 12);
    assert!(
        report.elapsed >= Duration::from_millis(270),
        "{:?}",
        report.elapsed
    );
    assert!(
        report.elapsed < Duration::from_secs(5),
        "{:?}",
        report.elapsed
    );
}

#[test]
fn the_mock_clusters_fault_injection_calls_succeed_and_an_unknown_broker_is_refused() {
    let kafka = start_with_topic("faults");
    kafka.broker_down(1).unwrap();
    kafka.broker_up(1).unwrap();
    kafka.partition_leader("faults", 0, 2).unwrap();
    kafka
        .request_errors(
            RDKafkaApiKey::Fetch,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION],
        )
        .unwrap();
    kafka.clear_request_errors(RDKafkaApiKey::Fetch).unwrap();
    assert!(kafka.broker_down(99).is_err());
}
