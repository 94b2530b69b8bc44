//! End to end against the real binary, a real Kafka-protocol broker (librdkafka's
//! mock cluster) and a real PostgreSQL: fixtures for several tenants on a
//! 4-partition topic are stored exactly, offsets agree, replays change nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::db::TestDb;
use common::exposition::metric_value;
use common::kafka::{committed_offsets, end_offsets, fixture, produce, producer_with};
use common::spansink::{wait_for, Instance};
use serde_json::Value;
use spansink::kafka::mock::MockKafka;

const TOPIC: &str = "otlp_spans";
const JSON_TOPIC: &str = "otlp_spans_json";
const GROUP: &str = "spansink-e2e";

/// (topic, partition, tenant, fixture) — every partition gets work.
const PLAN: &[(&str, i32, &str, &str)] = &[
    (TOPIC, 0, "acme", "traces_basic.pb"),
    (TOPIC, 1, "globex", "traces_1000_spans.pb"),
    (TOPIC, 2, "acme", "traces_nul_in_strings.pb"),
    (TOPIC, 3, "initech", "traces_unknown_field.pb"),
    (TOPIC, 3, "initech", "traces_empty.pb"),
    (JSON_TOPIC, 0, "initech", "traces_basic.json"),
];

async fn produce_plan(bootstrap: &str, compression: &str) {
    let p = producer_with(bootstrap, &[("compression.type", compression)]);
    for (topic, partition, tenant, file) in PLAN {
        produce(&p, topic, *partition, Some(tenant), &fixture(file)).await;
    }
}

async fn stored_offsets(db: &TestDb, topic: &str) -> BTreeMap<i32, i64> {
    let client = db.client().await;
    client
        .query(
            "SELECT partition, next_offset FROM ingest_offsets WHERE consumer_group = $1 AND topic = $2",
            &[&GROUP, &topic],
        )
        .await
        .expect("offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn caught_up(db: &TestDb, bootstrap: &str) -> bool {
    for (topic, partitions) in [(TOPIC, 4), (JSON_TOPIC, 1)] {
        let ends = end_offsets(bootstrap, topic, partitions);
        let stored = stored_offsets(db, topic).await;
        for (p, end) in ends.iter().enumerate() {
            if *end > 0 && stored.get(&(p as i32)) != Some(end) {
                return false;
            }
        }
    }
    true
}

async fn counts(db: &TestDb) -> BTreeMap<String, (i64, i64, i64, i64)> {
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT s.tenant_id, s.n, t.traces, t.spans, (SELECT count(*) FROM span_events e WHERE e.tenant_id = s.tenant_id)
             FROM (SELECT tenant_id, count(*) AS n FROM spans GROUP BY tenant_id) s
             JOIN (SELECT tenant_id, count(*) AS traces, sum(span_count)::bigint AS spans FROM traces GROUP BY tenant_id) t
               USING (tenant_id)",
            &[],
        )
        .await
        .expect("counts");
    rows.iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (r.get(1), r.get(2), r.get(3), r.get(4)),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_are_stored_exactly_and_replays_change_nothing() {
    let db = TestDb::migrated().await;
    let kafka = MockKafka::start(3).expect("mock kafka");
    kafka.create_topic(TOPIC, 4).expect("topic");
    kafka.create_topic(JSON_TOPIC, 1).expect("json topic");
    let bootstrap = kafka.bootstrap_servers().to_string();
    produce_plan(&bootstrap, "none").await;

    let mut instance = Instance::spawn(
        &bootstrap,
        &db.url,
        GROUP,
        &[
            &format!("--traces-topic={TOPIC}"),
            &format!("--traces-topic={JSON_TOPIC}:otlp_json"),
        ],
    );
    wait_for("every partition stored", Duration::from_secs(60), || {
        caught_up(&db, &bootstrap)
    })
    .await;

    // Exact rows per tenant: spans, traces, the traces' derived span counts, events.
    let before = counts(&db).await;
    // traces_basic.json holds the same spans as traces_basic.pb.
    let expected = BTreeMap::from([
        (
            "acme".to_string(),
            fixture_stats(&["traces_basic.pb", "traces_nul_in_strings.pb"]),
        ),
        (
            "globex".to_string(),
            fixture_stats(&["traces_1000_spans.pb"]),
        ),
        (
            "initech".to_string(),
            fixture_stats(&[
                "traces_unknown_field.pb",
                "traces_empty.pb",
                "traces_basic.pb",
            ]),
        ),
    ]);
    assert_eq!(expected["globex"].0, 1000);
    assert_eq!(expected["globex"].1, 40);
    assert_eq!(
        before, expected,
        "rows per tenant: (spans, traces, sum of span_count, events)"
    );
    assert_rows_match_expected_json(&db, "acme").await;
    assert_rows_match_expected_json(&db, "initech").await;

    // NULs were replaced, not dropped.
    let client = db.client().await;
    let nul: i64 = client
        .query_one(
            "SELECT count(*) FROM spans WHERE tenant_id = 'acme' AND name LIKE '%\u{FFFD}%'",
            &[],
        )
        .await
        .expect("nul")
        .get(0);
    assert!(nul >= 1, "a span whose name held NUL is stored with U+FFFD");

    // Kafka's committed offsets, PostgreSQL's offsets and the end offsets agree.
    wait_for(
        "Kafka commits catch up",
        Duration::from_secs(20),
        || async {
            let stored = stored_offsets(&db, TOPIC).await;
            let committed = committed_offsets(&bootstrap, GROUP, TOPIC, 4);
            let ends = end_offsets(&bootstrap, TOPIC, 4);
            (0..4)
                .all(|p| committed[p] == Some(ends[p]) && stored.get(&(p as i32)) == Some(&ends[p]))
        },
    )
    .await;

    // The same messages again, at new offsets, compressed as some producers
    // do: no new row, no changed count.
    produce_plan(&bootstrap, "zstd").await;
    wait_for("replay consumed", Duration::from_secs(60), || {
        caught_up(&db, &bootstrap)
    })
    .await;
    assert_eq!(counts(&db).await, before, "replaying changed the database");
    let ends = end_offsets(&bootstrap, TOPIC, 4);
    assert_eq!(
        ends,
        vec![2, 2, 2, 4],
        "the replay really went to new offsets"
    );

    let metrics = instance.scrape().await;
    assert!(
        metric_value(&metrics, "spansink_spans_duplicate_total", &[]).is_some(),
        "{metrics}"
    );

    instance.sigterm();
    let status = instance
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

/// (spans, distinct traces, sum of span counts, events) that these fixtures hold.
fn fixture_stats(files: &[&str]) -> (i64, i64, i64, i64) {
    use prost::Message as _;
    let mut spans = std::collections::BTreeSet::new();
    let mut traces = std::collections::BTreeSet::new();
    let mut events = 0;
    for file in files {
        let req =
            spansink::otlp::ExportTraceServiceRequest::decode(&fixture(file)[..]).expect("decode");
        for s in req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            if spans.insert((s.trace_id.clone(), s.span_id.clone())) {
                events += s.events.len() as i64;
            }
            traces.insert(s.trace_id.clone());
        }
    }
    let n = spans.len() as i64;
    (n, traces.len() as i64, n, events)
}

/// Row for row: every span of traces_basic as expected.json describes it.
async fn assert_rows_match_expected_json(db: &TestDb, tenant: &str) {
    let expected: Value = serde_json::from_slice(&fixture("expected.json")).expect("expected.json");
    let spans = expected["files"]["traces_basic.pb"]["spans"]
        .as_array()
        .expect("spans");
    let client = db.client().await;
    for want in spans {
        let trace_id = hex::decode(want["trace_id"].as_str().expect("trace_id")).expect("hex");
        let span_id = hex::decode(want["span_id"].as_str().expect("span_id")).expect("hex");
        let row = client
            .query_one(
                "SELECT name, kind::int, start_unix_nano, end_unix_nano, duration_ns, parent_span_id, trace_state,
                        flags, status_code::int, status_message, service_name, scope_name, attributes,
                        (SELECT array_agg(name ORDER BY event_index) FROM span_events e
                          WHERE e.tenant_id = s.tenant_id AND e.trace_id = s.trace_id AND e.span_id = s.span_id)
                 FROM spans s WHERE tenant_id = $1 AND trace_id = $2 AND span_id = $3",
                &[&tenant, &trace_id, &span_id],
            )
            .await
            .unwrap_or_else(|e| panic!("span {} of {tenant}: {e}", want["span_id"]));
        let ctx = format!("span {} of {tenant}", want["span_id"]);
        assert_eq!(
            row.get::<_, String>(0),
            want["name"].as_str().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            i64::from(row.get::<_, i32>(1)),
            want["kind"].as_i64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, i64>(2) as u64,
            want["start_time_unix_nano"].as_u64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, i64>(3) as u64,
            want["end_time_unix_nano"].as_u64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, i64>(4),
            want["duration_ns"].as_i64().unwrap(),
            "{ctx}"
        );
        let parent: Option<Vec<u8>> = row.get(5);
        assert_eq!(
            parent.map(hex::encode),
            want["parent_span_id"].as_str().map(str::to_string),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, String>(6),
            want["trace_state"].as_str().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, i64>(7),
            want["flags"].as_i64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            i64::from(row.get::<_, i32>(8)),
            want["status_code"].as_i64().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, String>(9),
            want["status_message"].as_str().unwrap(),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, Option<String>>(10).as_deref(),
            want["service_name"].as_str(),
            "{ctx}"
        );
        assert_eq!(
            row.get::<_, String>(11),
            want["scope_name"].as_str().unwrap(),
            "{ctx}"
        );
        let attributes: Value = row.get(12);
        let attributes = attributes.as_object().expect("attributes object");
        assert_eq!(
            attributes.len() as u64,
            want["attribute_count"].as_u64().unwrap(),
            "{ctx}"
        );
        for (k, v) in want["attributes_sample"].as_object().unwrap() {
            assert_eq!(attributes.get(k), Some(v), "{ctx}: attribute {k}");
        }
        let events: Option<Vec<String>> = row.get(13);
        let want_events: Vec<String> = want["event_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(events.unwrap_or_default(), want_events, "{ctx}");
    }
}
