//! The observability artefacts against the real thing: the alert rules load
//! and fire when they should, the dashboard asks only for metrics that exist,
//! `/metrics` counts a known workload exactly and is valid exposition format,
//! and `/readyz` follows PostgreSQL both ways.
//!
//! `promtool` comes from Debian's `prometheus` package; without it the tests
//! that need it fail rather than skip.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use common::db::TestDb;
use common::exposition::{self, total, total_where, Sample};
use common::kafka::{end_offsets, produce, producer};
use common::pgproxy::{split_url, PgProxy};
use common::spansink::{http_get, wait_for, Instance};
use common::traffic::{generator, stored_offsets};
use prost::Message as _;
use serde_json::Value;
use spansink::kafka::mock::MockKafka;
use spansink::metric as m;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOPIC: &str = "otlp_spans";
const PARTITIONS: i32 = 2;

fn artefact(path: &str) -> String {
    let path = format!("{ROOT}/{path}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------
// promtool

/// Runs promtool, feeding `stdin` if given. Missing promtool is a failure:
/// these checks are the point of the tests.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("promtool");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install Debian's `prometheus` package \
             (apt-get install prometheus), which ships it; CI (.ci/run) does"
        ),
        Err(e) => panic!("running promtool: {e}"),
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_string();
        // A thread, so that a large input cannot deadlock against a full stdout.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    child.wait_with_output().expect("promtool output")
}

fn assert_promtool_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    let rules = format!("{ROOT}/deploy/prometheus/alerts.yaml");
    let out = promtool(&["check", "rules", &rules], None);
    assert_promtool_ok("promtool check rules", &out);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "{} rules found",
            alerts(&artefact("deploy/prometheus/alerts.yaml")).len()
        )),
        "promtool found a different number of rules than the file declares:\n{report}"
    );
}

// ---------------------------------------------------------------------------
// Alert rules: structure, links to the runbook, and when they fire

/// One alert as the rules file spells it: its name and its `key: value`
/// lines. The file is ours and regular; promtool checks it is valid YAML.
#[derive(Debug)]
struct Alert {
    name: String,
    fields: BTreeMap<String, String>,
}

fn alerts(rules: &str) -> Vec<Alert> {
    let mut out: Vec<Alert> = Vec::new();
    for line in rules.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert:") {
            out.push(Alert {
                name: name.trim().to_string(),
                fields: BTreeMap::new(),
            });
        } else if let (Some(alert), Some((key, value))) = (out.last_mut(), line.split_once(':')) {
            if !key.contains(' ') && !key.starts_with('#') {
                alert
                    .fields
                    .insert(key.to_string(), value.trim().trim_matches('"').to_string());
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_severity_annotations_and_a_runbook_section() {
    let rules = artefact("deploy/prometheus/alerts.yaml");
    let runbook = artefact("deploy/RUNBOOK.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let alerts = alerts(&rules);
    let required = [
        "SpansinkConsumerLagGrowing",
        "SpansinkConsumerLagHigh",
        "SpansinkDeadLetters",
        "SpansinkSpoolEntryStale",
        "SpansinkSpoolNearlyFull",
        "SpansinkNoCommitsWhileLagging",
        "SpansinkCircuitBreakerOpen",
        "SpansinkInstanceDown",
        "SpansinkPartitionStopped",
        "SpansinkTransientRetriesSustained",
        "SpansinkNotReady",
    ];
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for r in required {
        assert!(names.contains(r), "alert {r} is missing");
    }
    assert_eq!(names.len(), alerts.len(), "an alert name repeats");
    for a in &alerts {
        let field = |k: &str| {
            a.fields
                .get(k)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| panic!("alert {} has no {k}", a.name))
        };
        assert!(
            ["critical", "warning", "info"].contains(&field("severity").as_str()),
            "alert {}: severity {}",
            a.name,
            field("severity")
        );
        field("summary");
        field("description");
        let want = format!("deploy/RUNBOOK.md#{}", a.name.to_lowercase());
        assert_eq!(field("runbook_url"), &want, "alert {}", a.name);
        assert!(
            sections.contains(&a.name.to_lowercase()),
            "RUNBOOK.md has no section `## {}`",
            a.name
        );
    }
    for link in [
        "../README.md#delivery-semantics",
        "../README.md#poison-path",
    ] {
        assert!(runbook.contains(link), "the runbook does not link {link}");
    }
}

/// The rules without their annotations. promtool's unit tests compare
/// annotations exactly; these tests are about when alerts fire, and the test
/// above checks the annotations exist.
fn without_annotations(rules: &str) -> String {
    let mut out = String::new();
    let mut skipping_deeper_than: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = skipping_deeper_than {
            if line.trim().is_empty() || indent > level {
                continue;
            }
            skipping_deeper_than = None;
        }
        if line.trim() == "annotations:" {
            skipping_deeper_than = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Series and expectations for `promtool test rules`: for every alert, a case
/// that must fire and a neighbour that must not.
const ALERT_CASES: &str = r#"
rule_files:
  - rules.yaml
evaluation_interval: 1m
tests:
  # Growing lag fires after 15m of growth; high but flat lag does not.
  - interval: 1m
    input_series:
      - series: 'spansink_consumer_lag_messages{instance="a",job="spansink",topic="t",partition="0"}'
        values: '0+1000x60'
      - series: 'spansink_consumer_lag_messages{instance="a",job="spansink",topic="t",partition="1"}'
        values: '50000x60'
    alert_rule_test:
      - eval_time: 20m
        alertname: SpansinkConsumerLagGrowing
        exp_alerts: []
      - eval_time: 40m
        alertname: SpansinkConsumerLagGrowing
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, job: spansink, topic: t, partition: "0"}

  - interval: 1m
    input_series:
      - series: 'spansink_consumer_lag_seconds{instance="a",job="spansink",topic="t",partition="0"}'
        values: '900x40'
      - series: 'spansink_consumer_lag_seconds{instance="a",job="spansink",topic="t",partition="1"}'
        values: '30x40'
    alert_rule_test:
      - eval_time: 15m
        alertname: SpansinkConsumerLagHigh
        exp_alerts:
          - exp_labels: {severity: warning, topic: t, partition: "0"}

  # A stalled topic fires, also one whose commit counter was never created;
  # a committing topic and a topic without lag do not.
  - interval: 1m
    input_series:
      - series: 'spansink_consumer_lag_messages{instance="a",job="spansink",topic="stuck",partition="0"}'
        values: '500x40'
      - series: 'spansink_batches_committed_total{instance="a",job="spansink",topic="stuck"}'
        values: '100x40'
      - series: 'spansink_consumer_lag_messages{instance="a",job="spansink",topic="moving",partition="0"}'
        values: '500x40'
      - series: 'spansink_batches_committed_total{instance="a",job="spansink",topic="moving"}'
        values: '0+10x40'
      - series: 'spansink_consumer_lag_messages{instance="b",job="spansink",topic="fresh",partition="0"}'
        values: '500x40'
      - series: 'spansink_consumer_lag_messages{instance="b",job="spansink",topic="idle",partition="0"}'
        values: '0x40'
      - series: 'spansink_batches_committed_total{instance="b",job="spansink",topic="idle"}'
        values: '5x40'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpansinkNoCommitsWhileLagging
        exp_alerts: []
      - eval_time: 30m
        alertname: SpansinkNoCommitsWhileLagging
        exp_alerts:
          - exp_labels: {severity: critical, topic: stuck}
          - exp_labels: {severity: critical, topic: fresh}

  - interval: 1m
    input_series:
      - series: 'spansink_stopped_partitions{instance="a",job="spansink"}'
        values: '0 0 1x10'
      - series: 'spansink_stopped_partitions{instance="b",job="spansink"}'
        values: '0x12'
    alert_rule_test:
      - eval_time: 1m
        alertname: SpansinkPartitionStopped
        exp_alerts: []
      - eval_time: 5m
        alertname: SpansinkPartitionStopped
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, job: spansink}

  # One dead letter fires at once, and clears once it leaves the window.
  - interval: 1m
    input_series:
      - series: 'spansink_dead_letters_total{instance="a",job="spansink",topic="t",stage="decode",reason="bad_protobuf"}'
        values: '0x2 1x25'
      - series: 'spansink_dead_letters_total{instance="a",job="spansink",topic="t",stage="write",reason="pg_data_exception"}'
        values: '0x27'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpansinkDeadLetters
        exp_alerts:
          - exp_labels: {severity: warning, topic: t, stage: decode, reason: bad_protobuf}
      - eval_time: 25m
        alertname: SpansinkDeadLetters
        exp_alerts: []

  - interval: 1m
    input_series:
      - series: 'spansink_spool_oldest_entry_age_seconds{instance="a",job="spansink"}'
        values: '0+60x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: SpansinkSpoolEntryStale
        exp_alerts: []
      - eval_time: 20m
        alertname: SpansinkSpoolEntryStale
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, job: spansink}

  # Near full by entries (a), by bytes (b), neither (c).
  - interval: 1m
    input_series:
      - series: 'spansink_spool_entries{instance="a",job="spansink"}'
        values: '850x10'
      - series: 'spansink_spool_bytes{instance="a",job="spansink"}'
        values: '1000x10'
      - series: 'spansink_spool_entries{instance="b",job="spansink"}'
        values: '10x10'
      - series: 'spansink_spool_bytes{instance="b",job="spansink"}'
        values: '900000000x10'
      - series: 'spansink_spool_entries{instance="c",job="spansink"}'
        values: '10x10'
      - series: 'spansink_spool_bytes{instance="c",job="spansink"}'
        values: '1000x10'
      - series: 'spansink_spool_capacity_entries{instance="a",job="spansink"}'
        values: '1000x10'
      - series: 'spansink_spool_capacity_bytes{instance="a",job="spansink"}'
        values: '1000000000x10'
      - series: 'spansink_spool_capacity_entries{instance="b",job="spansink"}'
        values: '1000x10'
      - series: 'spansink_spool_capacity_bytes{instance="b",job="spansink"}'
        values: '1000000000x10'
      - series: 'spansink_spool_capacity_entries{instance="c",job="spansink"}'
        values: '1000x10'
      - series: 'spansink_spool_capacity_bytes{instance="c",job="spansink"}'
        values: '1000000000x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpansinkSpoolNearlyFull
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, job: spansink}
          - exp_labels: {severity: warning, instance: b, job: spansink}

  - interval: 1m
    input_series:
      - series: 'spansink_dlq_publish_failures_total{instance="a",job="spansink"}'
        values: '0+3x40'
      - series: 'spansink_dlq_publish_failures_total{instance="b",job="spansink"}'
        values: '0 1x40'
    alert_rule_test:
      - eval_time: 15m
        alertname: SpansinkDlqPublishFailing
        exp_alerts:
          - exp_labels: {severity: warning, instance: a}

  # A stuck partition fires after 5m; one that is not stuck does not.
  - interval: 1m
    input_series:
      - series: 'spansink_partition_stuck{instance="a",job="spansink",topic="t",partition="0"}'
        values: '1x20'
      - series: 'spansink_partition_stuck{instance="a",job="spansink",topic="t",partition="1"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: SpansinkPartitionStuck
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, job: spansink, topic: t, partition: "0"}

  # A breaker held closed fires; one that is not held does not.
  - interval: 1m
    input_series:
      - series: 'spansink_circuit_breaker_held{instance="a",job="spansink",topic="t"}'
        values: '1x10'
      - series: 'spansink_circuit_breaker_held{instance="a",job="spansink",topic="u"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpansinkCircuitBreakerHeld
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, job: spansink, topic: t}

  # An oversize dead letter fires; an instance without one does not.
  - interval: 1m
    input_series:
      - series: 'spansink_dlq_oversize_total{instance="a",job="spansink"}'
        values: '0 0 1x20'
      - series: 'spansink_dlq_oversize_total{instance="b",job="spansink"}'
        values: '0x20'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpansinkDeadLetterOversize
        exp_alerts:
          - exp_labels: {severity: warning, instance: a}

  # Two live workers of one partition fire, and so does a recorded overlap;
  # one worker per partition does not.
  - interval: 1m
    input_series:
      - series: 'spansink_partition_workers{instance="a",job="spansink",topic="t",partition="0"}'
        values: '1 2 1x10'
      - series: 'spansink_partition_workers{instance="b",job="spansink",topic="t",partition="1"}'
        values: '1x10'
      - series: 'spansink_partition_worker_overlaps_total{instance="c",job="spansink"}'
        values: '0 0 1x10'
    alert_rule_test:
      - eval_time: 1m
        alertname: SpansinkPartitionWorkerOverlap
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, topic: t, partition: "0"}
      - eval_time: 5m
        alertname: SpansinkPartitionWorkerOverlap
        exp_alerts:
          - exp_labels: {severity: critical, instance: c}

  # Open (2) fires; half-open (1) does not.
  - interval: 1m
    input_series:
      - series: 'spansink_circuit_breaker_state{instance="a",job="spansink",topic="t"}'
        values: '2x10'
      - series: 'spansink_circuit_breaker_state{instance="a",job="spansink",topic="u"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpansinkCircuitBreakerOpen
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, job: spansink, topic: t}

  # Retries in every window fire; one burst does not.
  - interval: 1m
    input_series:
      - series: 'spansink_transient_retries_total{instance="a",job="spansink",kind="pg_connection"}'
        values: '0+5x40'
      - series: 'spansink_transient_retries_total{instance="a",job="spansink",kind="kafka"}'
        values: '0 0 7x40'
    alert_rule_test:
      - eval_time: 25m
        alertname: SpansinkTransientRetriesSustained
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, kind: pg_connection}

  - interval: 1m
    input_series:
      - series: 'spansink_panics_total{instance="a",job="spansink"}'
        values: '0 0 1x20'
      - series: 'spansink_messages_below_stored_offset_total{instance="a",job="spansink",topic="t",partition="3"}'
        values: '0 0 4x20'
    alert_rule_test:
      - eval_time: 5m
        alertname: SpansinkPanics
        exp_alerts:
          - exp_labels: {severity: warning, instance: a}
      - eval_time: 5m
        alertname: SpansinkMessagesBelowStoredOffset
        exp_alerts:
          - exp_labels: {severity: warning, topic: t, partition: "3"}

  - interval: 1m
    input_series:
      - series: 'spansink_ready{instance="a",job="spansink"}'
        values: '0x10'
      - series: 'spansink_ready{instance="b",job="spansink"}'
        values: '1x10'
      - series: 'up{instance="a",job="spansink"}'
        values: '0x10'
      - series: 'up{instance="b",job="spansink"}'
        values: '1x10'
      - series: 'up{instance="x",job="other"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 6m
        alertname: SpansinkNotReady
        exp_alerts:
          - exp_labels: {severity: warning, instance: a, job: spansink}
      - eval_time: 6m
        alertname: SpansinkInstanceDown
        exp_alerts:
          - exp_labels: {severity: critical, instance: a, job: spansink}
"#;

#[test]
fn alerts_fire_when_they_should_and_not_otherwise() {
    let rules = artefact("deploy/prometheus/alerts.yaml");
    let stripped = without_annotations(&rules);
    assert_eq!(alerts(&stripped).len(), alerts(&rules).len());
    assert!(
        !stripped.contains("runbook_url"),
        "annotations not stripped"
    );
    let tested: BTreeSet<&str> = ALERT_CASES
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname:"))
        .map(str::trim)
        .collect();
    for a in alerts(&rules) {
        assert!(
            tested.contains(a.name.as_str()),
            "no promtool case for {}",
            a.name
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.yaml"), stripped).expect("rules");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(&cases, ALERT_CASES).expect("cases");
    let out = promtool(&["test", "rules", &cases.display().to_string()], None);
    assert_promtool_ok("promtool test rules", &out);
}

// ---------------------------------------------------------------------------
// Exposition format

/// The scrape reader (tests/common/exposition.rs, on the prometheus-parse
/// crate) refuses a line the crate would skip or misread: a test must not
/// pass on a line that was never read.
#[test]
fn the_exposition_reader_sums_series_reads_special_values_and_refuses_lines_it_cannot_read_back() {
    let text = "# HELP x_total Help.\n# TYPE x_total counter\n\
                x_total{topic=\"a\",partition=\"0\"} 3\n\
                x_total{topic=\"a\",partition=\"1\"} 4 1700000000000\n\
                y{v=\"w\"} +Inf\n\
                z NaN\n";
    let samples = exposition::parse(text).expect("parses");
    assert_eq!(samples.len(), 4);
    assert_eq!(total(&samples, "x_total"), Some(7.0));
    assert_eq!(
        total_where(&samples, "x_total", &[("partition", "1")]),
        Some(4.0)
    );
    assert_eq!(total(&samples, "absent"), None);
    assert_eq!(samples[2].labels["v"], "w");
    assert_eq!(samples[2].value, f64::INFINITY);
    assert!(samples[3].value.is_nan() && samples[3].labels.is_empty());
    assert!(exposition::parse("a{b=\"c} 1").is_err());
    assert!(exposition::parse("a{b=c} 1").is_err());
    assert!(exposition::parse("a 1x").is_err());
    assert!(exposition::parse("a{b=\"1\",b=\"1\"} 1").is_err());
    // Escapes and quoted separators, which the crate does not read: refused.
    assert!(exposition::parse("y{v=\"q\\\"uo\\\\te\\nnl,}\"} +Inf").is_err());
    assert!(exposition::parse("y{v=\"a\\\\b\"} 1").is_err());
    assert!(exposition::parse("y{v=\"a,b\"} 1").is_err());
    assert!(exposition::parse("y{v=\"a=b\"} 1").is_err());
}

// ---------------------------------------------------------------------------
// A known workload, shared by the tests that check the scrape

const GROUP: &str = "spansink-observability";
const MESSAGES: usize = 30;
const SPANS_PER_MESSAGE: usize = 8;

/// What was produced and stored, and the scrapes after the first pass and
/// after the same messages were produced again.
struct Workload {
    messages: usize,
    spans: u64,
    messages_per_partition: BTreeMap<i32, usize>,
    stored_spans: i64,
    stored_events: i64,
    stored_spans_after_replay: i64,
    first: String,
    replay: String,
}

static WORKLOAD: OnceLock<Result<Workload, String>> = OnceLock::new();

/// Runs the workload once for every test that needs it; a failure is
/// reported by each of them.
fn workload() -> &'static Workload {
    let result = WORKLOAD.get_or_init(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(run_workload())
        }))
        .map_err(|panic| spansink::error::panic_message(&panic))
    });
    match result {
        Ok(w) => w,
        Err(e) => panic!("the shared workload failed: {e}"),
    }
}

/// (partition, tenant, payload, spans) of each message, produced in this order.
type Plan = Vec<(i32, String, Vec<u8>, usize)>;

fn plan() -> Plan {
    let mut gen = generator(20_260_101, SPANS_PER_MESSAGE);
    let mut plan: Plan = (0..MESSAGES)
        .map(|i| {
            let msg = gen.next_message(SystemTime::now());
            let partition = i32::try_from(i).expect("small") % PARTITIONS;
            (
                partition,
                msg.tenant,
                msg.request.encode_to_vec(),
                msg.span_count,
            )
        })
        .collect();
    // Poison among them: each must count once as a dead letter.
    for (i, file) in POISON.iter().enumerate() {
        let partition = i32::try_from(i).expect("small") % PARTITIONS;
        plan.insert(
            3 + i * 7,
            (
                partition,
                "acme".to_string(),
                common::kafka::fixture(file),
                0,
            ),
        );
    }
    plan
}

const POISON: [&str; 2] = ["poison_garbage.bin", "poison_trace_id_15_bytes.pb"];

async fn produce_plan(bootstrap: &str, plan: &Plan) {
    let p = producer(bootstrap);
    for (partition, tenant, payload, _) in plan {
        produce(&p, TOPIC, *partition, Some(tenant), payload).await;
    }
}

async fn caught_up(db: &TestDb, bootstrap: &str) -> bool {
    let stored = stored_offsets(db, GROUP, TOPIC).await;
    end_offsets(bootstrap, TOPIC, PARTITIONS)
        .iter()
        .enumerate()
        .all(|(p, end)| *end == 0 || stored.get(&(p as i32)) == Some(end))
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}

/// Scrapes until `done` holds for the samples (counters move right after
/// PostgreSQL commits, so a moment after the rows show), then once more a
/// moment later so that late double counting shows too. Gives up quietly
/// after a while: the tests then report the values they find.
async fn settled_scrape(instance: &Instance, done: impl Fn(&[Sample]) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let samples = exposition::parse(&instance.scrape().await).unwrap_or_default();
        if done(&samples) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    instance.scrape().await
}

async fn run_workload() -> Workload {
    let db = TestDb::migrated().await;
    let kafka = MockKafka::start(1).expect("mock kafka");
    kafka.create_topic(TOPIC, PARTITIONS).expect("topic");
    let bootstrap = kafka.bootstrap_servers().to_string();
    let plan = plan();
    let spans: u64 = plan.iter().map(|(_, _, _, n)| *n as u64).sum();
    let mut messages_per_partition = BTreeMap::new();
    for (p, ..) in &plan {
        *messages_per_partition.entry(*p).or_default() += 1;
    }
    produce_plan(&bootstrap, &plan).await;

    let instance = Instance::spawn(
        &bootstrap,
        &db.url,
        GROUP,
        &[&format!("--traces-topic={TOPIC}")],
    );
    wait_for("the first pass stored", Duration::from_secs(60), || {
        caught_up(&db, &bootstrap)
    })
    .await;
    let first = settled_scrape(&instance, |s| {
        total(s, m::SPANS_WRITTEN).unwrap_or(0.0) >= spans as f64
    })
    .await;
    let stored_spans = count(&db, "SELECT count(*) FROM spans").await;
    let stored_events = count(&db, "SELECT count(*) FROM span_events").await;

    // The same messages again, at new offsets.
    produce_plan(&bootstrap, &plan).await;
    wait_for("the replay consumed", Duration::from_secs(60), || {
        caught_up(&db, &bootstrap)
    })
    .await;
    let replay = settled_scrape(&instance, |s| {
        total(s, m::SPANS_DUPLICATE).unwrap_or(0.0) >= spans as f64
    })
    .await;
    let stored_spans_after_replay = count(&db, "SELECT count(*) FROM spans").await;
    Workload {
        messages: plan.len(),
        spans,
        messages_per_partition,
        stored_spans,
        stored_events,
        stored_spans_after_replay,
        first,
        replay,
    }
}

#[test]
fn a_known_workload_is_counted_exactly() {
    let w = workload();
    let n = w.messages as f64;
    let spans = w.spans as f64;
    assert_eq!(
        w.stored_spans, w.spans as i64,
        "the database holds what was produced"
    );

    let first = exposition::parse(&w.first).expect("first scrape parses");
    assert_eq!(total(&first, m::MESSAGES_CONSUMED), Some(n), "{}", w.first);
    for (p, msgs) in &w.messages_per_partition {
        assert_eq!(
            total_where(
                &first,
                m::MESSAGES_CONSUMED,
                &[("topic", TOPIC), ("partition", &p.to_string())]
            ),
            Some(*msgs as f64),
            "messages consumed on partition {p}"
        );
    }
    assert_eq!(total(&first, m::SPANS_WRITTEN), Some(spans));
    assert_eq!(total(&first, m::SPANS_DUPLICATE), Some(0.0));
    let poison = POISON.len() as f64;
    assert_eq!(total(&first, m::DEAD_LETTERS), Some(poison), "dead letters");
    assert_eq!(
        total_where(
            &first,
            m::DEAD_LETTERS,
            &[("reason", "bad_protobuf"), ("stage", "decode")]
        ),
        Some(1.0)
    );
    assert_eq!(
        total_where(
            &first,
            m::DEAD_LETTERS,
            &[("reason", "invalid_id"), ("stage", "validate")]
        ),
        Some(1.0)
    );
    assert_eq!(
        total(&first, m::SPAN_EVENTS_WRITTEN),
        Some(w.stored_events as f64),
        "span events counted as stored"
    );
    let batches = total(&first, m::BATCHES_COMMITTED).expect("batches committed");
    assert!(batches >= 1.0, "{batches} batches");
    // The histograms saw every batch, and together every message and span.
    let histogram = |name: &str, part: &str| total(&first, &format!("{name}_{part}"));
    assert_eq!(histogram(m::BATCH_MESSAGES, "count"), Some(batches));
    assert_eq!(histogram(m::BATCH_MESSAGES, "sum"), Some(n));
    assert_eq!(histogram(m::BATCH_SPANS, "sum"), Some(spans));
    assert_eq!(histogram(m::PG_TRANSACTION_SECONDS, "count"), Some(batches));
    assert_eq!(histogram(m::END_TO_END_LATENCY_SECONDS, "count"), Some(n));

    let replay = exposition::parse(&w.replay).expect("replay scrape parses");
    assert_eq!(
        w.stored_spans_after_replay, w.stored_spans,
        "the replay added rows"
    );
    assert_eq!(total(&replay, m::MESSAGES_CONSUMED), Some(2.0 * n));
    assert_eq!(
        total(&replay, m::SPANS_WRITTEN),
        Some(spans),
        "spans written moved on a replay"
    );
    assert_eq!(total(&replay, m::SPANS_DUPLICATE), Some(spans));
    // At new offsets the poison is new poison: dead-lettered again, once each.
    assert_eq!(
        total(&replay, m::DEAD_LETTERS),
        Some(2.0 * POISON.len() as f64)
    );
    assert_eq!(
        total(&replay, &format!("{}_sum", m::BATCH_MESSAGES)),
        Some(2.0 * n)
    );
}

#[test]
fn scraped_metrics_pass_promtool_check() {
    let w = workload();
    for (when, text) in [("first pass", &w.first), ("replay", &w.replay)] {
        assert!(text.contains(m::SPANS_WRITTEN), "empty scrape ({when})");
        let out = promtool(&["check", "metrics"], Some(text));
        assert_promtool_ok(&format!("promtool check metrics ({when})"), &out);
    }
}

// ---------------------------------------------------------------------------
// The dashboard

fn dashboard() -> Value {
    serde_json::from_str(&artefact("deploy/grafana/spansink.json")).expect("dashboard JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every PromQL query of every panel.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                let expr = t["expr"].as_str().expect("a target without expr");
                (title.clone(), expr.to_string())
            })
        })
        .collect()
}

/// `spansink_*` names in a text, each with what follows it.
fn metric_refs(text: &str) -> Vec<(String, &str)> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("spansink_") {
        let start = from + found;
        let end = text[start..]
            .find(|c: char| !is_name_char(c))
            .map_or(text.len(), |e| start + e);
        let preceded_by_name = text[..start].chars().next_back().is_some_and(is_name_char);
        if !preceded_by_name {
            out.push((text[start..end].to_string(), &text[end..]));
        }
        from = end;
    }
    out
}

/// The names declared in src/metric.rs.
fn declared_metrics() -> BTreeSet<String> {
    artefact("src/metric.rs")
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const"))
        .flat_map(|l| metric_refs(l).into_iter().map(|(n, _)| n))
        .collect()
}

/// A histogram's series names its family; anything else is its own family.
fn family(name: &str, declared: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if declared.contains(base) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let declared = declared_metrics();
    panel_queries(dashboard)
        .iter()
        .flat_map(|(_, q)| metric_refs(q).into_iter().map(|(n, _)| n))
        .map(|n| family(&n, &declared))
        .collect()
}

#[test]
fn dashboard_is_importable_and_filters_by_instance() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_i64().expect("schemaVersion") >= 36,
        "schemaVersion"
    );
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let variables = d["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["datasource"]["uid"], "${datasource}");

    let all = panels(&d);
    let ids: BTreeSet<i64> = all.iter().filter_map(|p| p["id"].as_i64()).collect();
    assert_eq!(ids.len(), all.len(), "panel ids are missing or repeat");
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or_default();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {title} has no query"
        );
    }
    for (title, query) in panel_queries(&d) {
        for (name, after) in metric_refs(&query) {
            assert!(
                after.starts_with(r#"{instance=~"$instance""#),
                "panel {title}: {name} is not filtered by $instance in {query}"
            );
        }
    }
}

#[test]
fn artefacts_use_only_declared_metrics() {
    let declared = declared_metrics();
    assert!(declared.len() > 40, "src/metric.rs read: {declared:?}");
    let dashboard = dashboard();
    let mut sources: Vec<(&str, BTreeSet<String>)> = vec![(
        "deploy/grafana/spansink.json",
        dashboard_metrics(&dashboard),
    )];
    for path in ["deploy/prometheus/alerts.yaml", "deploy/RUNBOOK.md"] {
        let text = artefact(path);
        let names = metric_refs(&text)
            .into_iter()
            .map(|(n, _)| family(&n, &declared))
            .collect();
        sources.push((path, names));
    }
    for (path, names) in sources {
        let unknown: Vec<&String> = names.difference(&declared).collect();
        assert!(
            unknown.is_empty(),
            "{path} uses undeclared metrics {unknown:?}"
        );
    }
    // The dashboard shows every metric spansink declares.
    let shown = dashboard_metrics(&dashboard);
    let unshown: Vec<&String> = declared.difference(&shown).collect();
    assert!(
        unshown.is_empty(),
        "the dashboard shows nothing of {unshown:?}"
    );
}

#[test]
fn every_dashboard_metric_is_exported_by_a_running_instance() {
    let w = workload();
    let declared = declared_metrics();
    let scraped: BTreeSet<String> = exposition::parse(&w.replay)
        .expect("scrape parses")
        .iter()
        .map(|s| family(&s.name, &declared))
        .collect();
    let missing: Vec<String> = dashboard_metrics(&dashboard())
        .difference(&scraped)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that a running instance does not export \
         (they must be exported, at zero, from the start): {missing:?}"
    );
}

/// Prometheus scrapes `/metrics`, not `/readyz`: an instance that is ready
/// must say so in its metrics even if nothing probes it, or SpansinkNotReady
/// fires wherever no orchestrator probes.
#[test]
fn ready_gauge_reports_readiness_without_a_probe() {
    let w = workload();
    let replay = exposition::parse(&w.replay).expect("scrape parses");
    assert_eq!(
        total(&replay, m::READY),
        Some(1.0),
        "an instance that stored every message reports {} without a /readyz probe",
        m::READY
    );
}

// ---------------------------------------------------------------------------
// Readiness follows PostgreSQL

#[test]
fn proxy_urls_split_around_host_and_port() {
    assert_eq!(
        split_url("postgres://postgres@127.0.0.1:5432/db?sslmode=disable"),
        Some((
            "postgres://postgres@".into(),
            "127.0.0.1:5432".into(),
            "/db?sslmode=disable".into()
        ))
    );
    assert_eq!(
        split_url("postgresql://localhost/db"),
        Some((
            "postgresql://".into(),
            "localhost:5432".into(),
            "/db".into()
        ))
    );
    assert_eq!(split_url("host=localhost dbname=x"), None);
}

async fn probe(instance: &Instance, path: &str) -> Option<(u16, String)> {
    http_get(&instance.metrics_addr, path).await
}

async fn ready_gauge(instance: &Instance) -> Option<f64> {
    total(
        &exposition::parse(&instance.scrape().await).unwrap_or_default(),
        m::READY,
    )
}

async fn assert_live(instance: &Instance, when: &str) {
    let health = probe(instance, "/healthz").await;
    assert_eq!(
        health.as_ref().map(|(s, _)| *s),
        Some(200),
        "/healthz {when}: {health:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_postgresql_both_ways() {
    let db = TestDb::migrated().await;
    let (proxy, proxied_url) = PgProxy::for_url(&db.url).await;
    let kafka = MockKafka::start(1).expect("mock kafka");
    kafka.create_topic(TOPIC, 1).expect("topic");
    let mut instance = Instance::spawn(
        kafka.bootstrap_servers(),
        &proxied_url,
        "spansink-readyz",
        &[&format!("--traces-topic={TOPIC}")],
    );

    wait_for("ready", Duration::from_secs(60), || async {
        probe(&instance, "/readyz").await.map(|(s, _)| s) == Some(200)
    })
    .await;
    assert!(proxy.open_connections() > 0, "spansink uses the proxy");
    assert_live(&instance, "while ready").await;
    assert_eq!(ready_gauge(&instance).await, Some(1.0));

    proxy.block();
    wait_for(
        "not ready, naming PostgreSQL",
        Duration::from_secs(30),
        || async {
            matches!(probe(&instance, "/readyz").await,
                 Some((503, body)) if body.to_lowercase().contains("postgresql"))
        },
    )
    .await;
    assert_eq!(ready_gauge(&instance).await, Some(0.0));
    // Unready, not dead: the process stays up and live while the database is away.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_live(&instance, "while PostgreSQL is unreachable").await;
        let ready = probe(&instance, "/readyz").await.map(|(s, _)| s);
        assert_eq!(ready, Some(503), "ready again while still blocked");
    }
    assert!(instance.is_running(), "spansink exited without PostgreSQL");

    proxy.unblock();
    wait_for("ready again", Duration::from_secs(30), || async {
        probe(&instance, "/readyz").await.map(|(s, _)| s) == Some(200)
    })
    .await;
    assert_eq!(ready_gauge(&instance).await, Some(1.0));
    assert_live(&instance, "after PostgreSQL came back").await;
}
