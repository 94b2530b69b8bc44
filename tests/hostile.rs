//! Hostile load: a tenant's flood, messages too large to receive, messages
//! that decode into far more memory than they take on the wire, header-heavy
//! messages, a message too slow to write, a slowloris on the HTTP listener, an
//! admin endpoint a browser could reach, secrets in `--help` and in errors, and
//! input that would flood the log. None may stall, exhaust or blind spansink.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::exposition::metric_max;
use common::kafka::{cluster, header, produce, producer, read_all, DLQ, TOPIC};
use common::spansink::{binary, http_get, http_post, wait_for, Instance};
use common::traffic::{generator, marked_message, span_count, stored_offsets};
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

fn dlq_ids(bootstrap: &str) -> BTreeSet<String> {
    read_all(bootstrap, DLQ)
        .iter()
        .filter_map(|r| header(r, "spansink.dlq.id"))
        .collect()
}

/// The largest value of the series of `name` that carry all of `labels`.
async fn metric(instance: &Instance, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_max(&instance.scrape().await, name, labels)
}

/// A producer for messages larger than librdkafka's default limit (1 MB).
fn big_producer(bootstrap: &str) -> rdkafka::producer::FutureProducer {
    common::kafka::producer_with(bootstrap, &[("message.max.bytes", "100000000")])
}

/// The highest resident memory the process has had, from the kernel.
fn peak_rss_bytes(instance: &Instance) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", instance.pid()))
        .expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// A protobuf ExportTraceServiceRequest of `n` empty spans.
fn empty_spans(n: usize) -> Vec<u8> {
    let scope: Vec<u8> = [0x12, 0x00].repeat(n);
    let mut resource = vec![0x12];
    prost::encoding::encode_varint(scope.len() as u64, &mut resource);
    resource.extend_from_slice(&scope);
    let mut request = vec![0x0a];
    prost::encoding::encode_varint(resource.len() as u64, &mut request);
    request.extend_from_slice(&resource);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_tenant_is_dead_lettered_while_every_other_tenant_is_stored() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(2, true);
    let p = producer(&bootstrap);
    let mut gen = generator(1200, 3);
    let mut good = 0;
    for _ in 0..20 {
        let (t, payload, n) = marked_message(&mut gen, "good");
        produce(&p, TOPIC, 1, Some(&t), &payload).await;
        good += n;
    }
    let mut flood = BTreeSet::new();
    for _ in 0..120 {
        let (_, offset) = produce(&p, TOPIC, 0, Some("mallory"), b"\xff\xff junk").await;
        flood.insert(spansink::poison::record::dead_letter_id(
            "g-flood", TOPIC, 0, offset,
        ));
    }
    for _ in 0..20 {
        let (t, payload, n) = marked_message(&mut gen, "good");
        produce(&p, TOPIC, 1, Some(&t), &payload).await;
        good += n;
    }
    let instance = Instance::spawn(&bootstrap, &db.url, "g-flood", &[]);
    wait_for("every message handled", Duration::from_secs(90), || async {
        span_count(&db).await as usize == good && dlq_ids(&bootstrap) == flood
    })
    .await;
    assert_eq!(
        metric(&instance, "spansink_circuit_breaker_trips_total", &[]).await,
        Some(0.0),
        "poison confined to one tenant is not systemic"
    );
    assert_eq!(stored_offsets(&db, "g-flood", TOPIC).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_close_holds_the_breaker_while_a_flood_drains() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1, true);
    let token_dir = tempfile::tempdir().expect("dir");
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("token");
    let p = producer(&bootstrap);
    for _ in 0..150 {
        produce(&p, TOPIC, 0, Some("acme"), b"\xff\xff junk").await;
    }
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-hold",
        &[
            "--breaker-cooldown=1h",
            &format!("--admin-token-file={}", token_file.display()),
        ],
    );
    // One tenant, nothing else: it may be systemic, so the breaker opens.
    wait_for("breaker open", Duration::from_secs(60), || async {
        metric(&instance, "spansink_circuit_breaker_state", &[]).await == Some(2.0)
    })
    .await;
    let before = dlq_ids(&bootstrap).len();
    assert!(before <= 100, "{before}");

    // A browser's request and a request without the token are refused.
    let (code, _) = http_post(
        &instance.admin_addr,
        "/breaker/close",
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", "Bearer s3cret-token"),
        ],
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = http_post(&instance.admin_addr, "/breaker/close", &[]).await;
    assert_eq!(code, 401);
    assert_eq!(
        metric(&instance, "spansink_circuit_breaker_state", &[]).await,
        Some(2.0)
    );

    // The operator accepts the flood: held closed until it has drained.
    let (code, body) = http_post(
        &instance.admin_addr,
        "/breaker/close?messages=200",
        &[("Authorization", "Bearer s3cret-token")],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("held closed"), "{body}");
    wait_for("the flood drained", Duration::from_secs(60), || async {
        dlq_ids(&bootstrap).len() == 150
    })
    .await;
    assert_eq!(
        stored_offsets(&db, "g-hold", TOPIC).await.get(&0),
        Some(&150)
    );
    assert_eq!(
        metric(&instance, "spansink_circuit_breaker_held", &[]).await,
        Some(1.0),
        "the hold shows while it lasts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_each_size_limit_are_dead_lettered_or_reported_never_silent() {
    let db = TestDb::migrated().await;
    let (kafka, bootstrap) = cluster(2, true);
    // Each partition fetched from a broker of its own: a message that cannot
    // be received stops every partition its broker leads.
    kafka.partition_leader(TOPIC, 0, 2).expect("leader");
    kafka.partition_leader(TOPIC, 1, 3).expect("leader");
    let p = producer(&bootstrap);
    let mut gen = generator(1201, 1);
    // A valid message padded to `size` bytes with an attribute.
    let sized = |gen: &mut spansink::loadgen::Generator, size: usize| {
        use spansink::otlp::common::v1::{any_value::Value, AnyValue, KeyValue};
        let msg = gen.next_message(std::time::SystemTime::now());
        let mut req = msg.request;
        let pad = |req: &mut spansink::otlp::ExportTraceServiceRequest, len: usize| {
            let span = &mut req.resource_spans[0].scope_spans[0].spans[0];
            span.attributes.retain(|kv| kv.key != "pad");
            span.attributes.push(KeyValue {
                key: "pad".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue("x".repeat(len))),
                }),
            });
        };
        let mut len = size.saturating_sub(req.encoded_len() + 16);
        for _ in 0..3 {
            pad(&mut req, len);
            len = (len + size).saturating_sub(req.encoded_len());
        }
        pad(&mut req, len);
        let bytes = req.encode_to_vec();
        assert_eq!(bytes.len(), size, "padded to the byte");
        (msg.tenant, bytes, msg.span_count)
    };
    let limit = 200_000;
    let (t, under, spans) = sized(&mut gen, limit - 100);
    assert!(under.len() <= limit);
    produce(&p, TOPIC, 0, Some(&t), &under).await;
    let (t, over, _) = sized(&mut gen, limit + 100);
    assert!(over.len() > limit);
    let (_, over_offset) = produce(&p, TOPIC, 0, Some(&t), &over).await;
    // Beyond what the consumer may receive (a full fetch, 1 MiB here, and
    // twice the limit): partition 1 cannot move.
    let (t, huge, _) = sized(&mut gen, 1_600_000);
    big_producer(&bootstrap)
        .send(
            FutureRecord::<[u8], [u8]>::to(TOPIC)
                .partition(1)
                .payload(&huge)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "X-Scope-OrgID",
                    value: Some(t.as_bytes()),
                })),
            Duration::from_secs(30),
        )
        .await
        .expect("sent");
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-sizes",
        &[
            &format!("--max-message-bytes={limit}"),
            "--max-inflight-bytes=4194304",
            "--batch-max-bytes=1048576",
            "--fetch-stuck-after=5s",
        ],
    );
    wait_for(
        "the small one stored, the large one dead-lettered",
        Duration::from_secs(60),
        || async {
            span_count(&db).await as usize == spans && read_all(&bootstrap, DLQ).len() == 1
        },
    )
    .await;
    let dead = read_all(&bootstrap, DLQ);
    assert_eq!(
        header(&dead[0], "spansink.dlq.reason").as_deref(),
        Some("message_too_large")
    );
    assert_eq!(
        header(&dead[0], "spansink.dlq.source.offset"),
        Some(over_offset.to_string())
    );
    // The one that cannot be received is reported, not silent.
    wait_for(
        "the stuck partition reported",
        Duration::from_secs(60),
        || async {
            http_get(&instance.metrics_addr, "/readyz")
                .await
                .is_some_and(|(code, body)| {
                    code == 503 && body.contains("cannot fetch otlp_spans/1")
                })
        },
    )
    .await;
    assert_eq!(
        metric(&instance, "spansink_partition_stuck", &[("partition", "1")]).await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &instance,
            "spansink_consumer_lag_messages",
            &[("partition", "1")]
        )
        .await,
        Some(1.0),
        "lag is truthful while stuck"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_the_budget_whatever_messages_decode_into() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(4, true);
    let p = big_producer(&bootstrap);
    // A few MB on the wire, hundreds of MB once decoded: 1M empty spans each,
    // on every partition at once (the embedded broker keeps 5 MiB a partition).
    let flood = empty_spans(1_000_000);
    for partition in 0..4 {
        produce(&p, TOPIC, partition, Some("acme"), &flood).await;
    }
    // And headers far larger than the payload.
    let mut gen = generator(1202, 2);
    let big_header = vec![b'h'; 900_000];
    let mut good = 0;
    for i in 0..8 {
        let (tenant, payload, n) = marked_message(&mut gen, "good");
        let record = FutureRecord::<[u8], [u8]>::to(TOPIC)
            .partition(i % 4)
            .payload(&payload)
            .headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: "X-Scope-OrgID",
                        value: Some(tenant.as_bytes()),
                    })
                    .insert(Header {
                        key: "padding",
                        value: Some(&big_header),
                    }),
            );
        p.send(record, Duration::from_secs(30)).await.expect("sent");
        good += n;
    }
    let budget: u64 = 64 << 20;
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-amplify",
        &[&format!("--max-inflight-bytes={budget}")],
    );
    // Counted from the DLQ's end: the embedded broker keeps only the last
    // 5 MiB of a partition, less than four such dead letters.
    wait_for("all handled", Duration::from_secs(120), || async {
        span_count(&db).await as usize == good
            && common::kafka::watermarks(&bootstrap, DLQ, 0).1 == 4
    })
    .await;
    assert_eq!(
        metric(
            &instance,
            "spansink_dead_letters_total",
            &[("reason", "too_many_spans")]
        )
        .await,
        Some(4.0)
    );
    // The budget, plus what the process takes with nothing in flight.
    let peak = peak_rss_bytes(&instance);
    let bound = budget + BASELINE_RSS;
    eprintln!("peak RSS {} MiB, bound {} MiB", peak >> 20, bound >> 20);
    assert!(
        peak <= bound,
        "peak RSS {} MiB over the budget plus the baseline, {} MiB",
        peak >> 20,
        bound >> 20
    );
}

/// What an instance takes with nothing in flight (code, libraries, librdkafka's
/// threads and buffers, the pools), in this debug build; the README documents
/// the release build's.
const BASELINE_RSS: u64 = 96 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_outlasts_the_statement_timeout_alone_is_dead_lettered_and_the_rest_is_stored(
) {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1, true);
    // Inserting a span named "slow" takes longer than the statement timeout.
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION slow_span() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN IF NEW.name = 'slow' THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$;
             CREATE TRIGGER slow_span BEFORE INSERT ON spans
               FOR EACH ROW EXECUTE FUNCTION slow_span();",
        )
        .await
        .expect("trigger");
    let p = producer(&bootstrap);
    let mut gen = generator(1203, 3);
    let mut good = 0;
    let mut slow_offset = 0;
    for i in 0..8 {
        let name = if i == 5 { "slow" } else { "good" };
        let (t, payload, n) = marked_message(&mut gen, name);
        let (_, offset) = produce(&p, TOPIC, 0, Some(&t), &payload).await;
        if i == 5 {
            slow_offset = offset;
        } else {
            good += n;
        }
    }
    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-slow-message",
        &["--pg-statement-timeout=1s", "--batch-linger=500ms"],
    );
    wait_for(
        "the partition moved on",
        Duration::from_secs(120),
        || async {
            stored_offsets(&db, "g-slow-message", TOPIC).await.get(&0) == Some(&8)
                && read_all(&bootstrap, DLQ).len() == 1
        },
    )
    .await;
    assert_eq!(span_count(&db).await as usize, good);
    let dead = read_all(&bootstrap, DLQ);
    assert_eq!(
        header(&dead[0], "spansink.dlq.reason").as_deref(),
        Some("statement_timeout")
    );
    assert_eq!(
        header(&dead[0], "spansink.dlq.source.offset"),
        Some(slow_offset.to_string())
    );
    assert!(header(&dead[0], "spansink.dlq.size").is_some());
    assert!(
        metric(
            &instance,
            "spansink_batch_splits_total",
            &[("cause", "too_slow")]
        )
        .await
            >= Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_within_a_second_under_a_slowloris() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1, true);
    let instance = Instance::spawn(&bootstrap, &db.url, "g-slowloris", &[]);
    wait_for("listening", Duration::from_secs(30), || async {
        http_get(&instance.metrics_addr, "/healthz").await.is_some()
    })
    .await;
    // 1,100 connections that each send a byte now and then, never a request.
    // Raw sockets: a request that never completes is the attack under test.
    let addr = instance.metrics_addr.clone();
    let attack = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut open = Vec::new();
        for _ in 0..1100 {
            if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
                open.push(s);
            }
        }
        loop {
            for s in &mut open {
                let _ = s.write_all(b"G").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            http_get(&instance.metrics_addr, "/healthz"),
        )
        .await;
        assert!(
            matches!(answer, Ok(Some((200, _)))),
            "/healthz did not answer within a second: {answer:?} after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    attack.abort();
}

#[test]
fn no_secret_is_echoed_by_help_or_by_configuration_errors() {
    let secret = "S3CRET-pw-123";
    let url = format!("postgres://spansink:{secret}@db.example/telemetry");
    for command in [
        &["run", "--help"][..],
        &["migrate", "--help"],
        &["replay", "--help"],
    ] {
        let out = std::process::Command::new(binary())
            .args(command)
            .env("SPANSINK_DATABASE_URL", &url)
            .env("DATABASE_URL", &url)
            .env("SPANSINK_KAFKA", format!("sasl.password={secret}"))
            .output()
            .expect("help");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            !text.contains(secret),
            "{command:?} echoes the secret:\n{text}"
        );
    }
    // A mistyped secret setting is named; its value is not shown.
    let out = std::process::Command::new(binary())
        .args([
            "run",
            "--brokers=127.0.0.1:1",
            "--database-url=postgres://postgres@127.0.0.1:1/x",
            "--metrics-addr=127.0.0.1:0",
            "--admin-addr=off",
            &format!("--kafka=sasl.pasword={secret}"),
        ])
        .env_remove("SPANSINK_KAFKA")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sasl.pasword"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_cannot_flood_the_log() {
    use spansink::otlp::common::v1::{any_value::Value, AnyValue, ArrayValue, KeyValue};
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1, true);
    let instance = Instance::spawn(&bootstrap, &db.url, "g-log", &["--max-value-depth=2"]);
    wait_for("assigned", Duration::from_secs(60), || async {
        instance.logs().contains("partition assigned")
    })
    .await;
    let before = instance.logs().len();
    // A 2 MB attribute key whose value nests too deep: the error names the key.
    let mut gen = generator(1204, 1);
    let mut deep = AnyValue {
        value: Some(Value::IntValue(1)),
    };
    for _ in 0..4 {
        deep = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue { values: vec![deep] })),
        };
    }
    let p = big_producer(&bootstrap);
    // Two: the embedded broker keeps only 5 MiB per partition.
    for _ in 0..2 {
        let msg = gen.next_message(std::time::SystemTime::now());
        let mut req = msg.request;
        req.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .push(KeyValue {
                key: "\u{1}".repeat(2 << 20),
                value: Some(deep.clone()),
            });
        produce(&p, TOPIC, 0, Some(&msg.tenant), &req.encode_to_vec()).await;
    }
    wait_for("dead-lettered", Duration::from_secs(60), || async {
        read_all(&bootstrap, DLQ).len() == 2
    })
    .await;
    let added = instance.logs().len() - before;
    assert!(
        added < 32 * 1024,
        "2 messages of 2 MB added {added} bytes of log"
    );
    for record in read_all(&bootstrap, DLQ) {
        let error = header(&record, "spansink.dlq.error").unwrap_or_default();
        assert!(error.len() <= 1024, "{}", error.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_a_producer_set_in_1970_stay_out_of_latency_and_lag() {
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = cluster(1, true);
    let p = producer(&bootstrap);
    let mut gen = generator(1205, 3);
    let (tenant, payload, spans) = marked_message(&mut gen, "good");
    let record = FutureRecord::<[u8], [u8]>::to(TOPIC)
        .partition(0)
        .payload(&payload)
        .timestamp(1)
        .headers(OwnedHeaders::new().insert(Header {
            key: "X-Scope-OrgID",
            value: Some(tenant.as_bytes()),
        }));
    p.send(record, Duration::from_secs(30)).await.expect("sent");
    let instance = Instance::spawn(&bootstrap, &db.url, "g-1970", &[]);
    wait_for("stored", Duration::from_secs(60), || async {
        span_count(&db).await as usize == spans
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        metric(&instance, "spansink_end_to_end_latency_seconds_count", &[]).await,
        Some(0.0),
        "an implausible timestamp is not a latency"
    );
    assert_eq!(
        metric(&instance, "spansink_consumer_lag_seconds", &[]).await,
        Some(0.0)
    );
}
