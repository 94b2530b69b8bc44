//! The PostgreSQL layer against a real server, each test on a fresh database.

#[path = "common/db.rs"]
mod db;

use std::sync::Arc;
use std::time::Duration;

use db::TestDb;
use futures::FutureExt;
use serde_json::{json, Value};
use spansink::error::{Class, Reason};
use spansink::model::{Decoded, SpanEventRow, SpanRow};
use spansink::pg::pool::Canceller;
use spansink::pg::write::Recorder;
use spansink::pg::{
    self, offsets, AfterFailure, PartitionKey, Partitions, Pool, WriteBatch, WriteOutcome,
    WriteStats, Writer,
};
use tokio_postgres::Client;

/// 2024-03-10T12:00:00.123456789Z
const T0: i64 = 1_710_072_000_123_456_789;
const DAY: i64 = 86_400 * 1_000_000_000;

fn trace_id(n: u8) -> [u8; 16] {
    let mut id = [0xab; 16];
    id[15] = n;
    id
}

fn span_id(n: u8) -> [u8; 8] {
    [0, 0, 0, 0, 0, 0, 0xcd, n]
}

fn span(tenant: &str, trace: u8, id: u8, parent: Option<u8>, start: i64) -> SpanRow {
    SpanRow {
        tenant_id: Arc::from(tenant),
        trace_id: trace_id(trace),
        span_id: span_id(id),
        parent_span_id: parent.map(span_id),
        trace_state: "vendor=x".into(),
        flags: 257,
        name: format!("span-{id}"),
        kind: 2,
        start_unix_nano: start,
        end_unix_nano: start + 1_500_000,
        status_code: 0,
        status_message: String::new(),
        service_name: Some(Arc::from("checkout")),
        resource_attributes: Arc::from(r#"{"service.name":"checkout","host":{"cpu":4}}"#),
        scope_name: Arc::from("lib"),
        scope_version: Arc::from("1.2"),
        attributes: format!(r#"{{"n":{id},"tags":["a","b"]}}"#),
        dropped_attributes_count: 1,
        dropped_events_count: 2,
        dropped_links_count: 3,
        links: "[]".into(),
        link_count: 0,
        event_count: 0,
    }
}

fn event(s: &SpanRow, index: i32, name: &str) -> SpanEventRow {
    SpanEventRow {
        tenant_id: s.tenant_id.clone(),
        trace_id: s.trace_id,
        span_id: s.span_id,
        span_start_unix_nano: s.start_unix_nano,
        event_index: index,
        time_unix_nano: s.start_unix_nano + 999 + i64::from(index),
        name: name.into(),
        attributes: format!(r#"{{"i":{index}}}"#),
        dropped_attributes_count: 7,
    }
}

fn message(spans: Vec<SpanRow>, events: Vec<SpanEventRow>) -> Decoded {
    Decoded {
        spans,
        events,
        ..Default::default()
    }
}

fn key(partition: i32) -> PartitionKey<'static> {
    PartitionKey {
        group: "g",
        topic: "otlp_spans",
        partition,
    }
}

fn batch<'a>(
    partition: i32,
    expected: Option<i64>,
    next_offset: i64,
    messages: &'a [&'a Decoded],
) -> WriteBatch<'a> {
    WriteBatch {
        key: key(partition),
        expected,
        next_offset,
        replayed: false,
        messages,
        dead_letters: &[],
        recorder: Recorder {
            instance: "test",
            spool_id: "test-spool",
        },
    }
}

fn committed(outcome: WriteOutcome) -> WriteStats {
    match outcome {
        WriteOutcome::Committed(stats) => stats,
        other => panic!("expected a commit, got {other:?}"),
    }
}

struct Fixture {
    pool: Pool,
    writer: Writer,
    partitions: Arc<Partitions>,
    sql: Client,
    db: TestDb,
}

impl Fixture {
    async fn new() -> Fixture {
        let db = TestDb::create().await;
        let mut sql = db.client().await;
        pg::migrate(&mut sql).await.unwrap();
        sql.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();
        let pool = pg::connect(&db.db_args()).await.unwrap();
        let partitions = Arc::new(Partitions::new());
        let writer = Writer::new(
            pool.clone(),
            partitions.clone(),
            Canceller::new(&db.db_args()).unwrap(),
        );
        Fixture {
            pool,
            writer,
            partitions,
            sql,
            db,
        }
    }

    async fn count(&self, query: &str) -> i64 {
        self.sql.query_one(query, &[]).await.unwrap().get(0)
    }

    async fn stored_offset(&self, partition: i32) -> Option<i64> {
        let client = self.pool.get().await.unwrap();
        offsets::read(&**client, &key(partition)).await.unwrap()
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn migrations_run_once_when_started_concurrently() {
    let db = TestDb::create().await;
    let (mut a, mut b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(pg::migrate(&mut a), pg::migrate(&mut b));
    let (mut ra, rb) = (ra.unwrap(), rb.unwrap());
    ra.extend(rb);
    ra.sort_unstable();
    assert_eq!(
        ra,
        [1, 2, 3, 4],
        "exactly one migrator applies each version"
    );
    let rows = a
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let applied: Vec<(i32, &str)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        applied,
        [
            (1, "init"),
            (2, "dead_letter_ledger"),
            (3, "logs_span_metrics"),
            (4, "tenant_isolation")
        ]
    );
    assert!(pg::migrate(&mut a).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_batch_commits_spans_events_traces_and_offset_together() {
    let f = Fixture::new().await;
    let root = span("acme", 1, 1, None, T0);
    let mut child = span("acme", 1, 2, Some(1), T0 + 2_000);
    child.status_code = 2;
    child.status_message = "boom".into();
    child.service_name = None;
    child.kind = 3;
    child.links = r#"[{"trace_id":"ab","span_id":"cd","flags":0}]"#.into();
    child.link_count = 1;
    child.event_count = 2;
    let events = vec![event(&child, 0, "retry"), event(&child, 1, "gave up")];
    let m = message(vec![root.clone(), child.clone()], events);

    assert_eq!(f.stored_offset(0).await, None);
    let stats = committed(f.writer.write(&batch(0, None, 10, &[&m])).await.unwrap());
    assert_eq!(
        stats,
        WriteStats {
            spans_inserted: 2,
            spans_duplicate: 0,
            events_inserted: 2,
            links_inserted: 1,
            traces_touched: 1,
            ..WriteStats::default()
        }
    );
    assert_eq!(f.stored_offset(0).await, Some(10));

    let rows = f
        .sql
        .query(
            "SELECT trace_id, span_id, parent_span_id, trace_state, flags, name, kind,
                    start_time::text, end_time::text, start_unix_nano, end_unix_nano, duration_ns,
                    status_code, status_message, service_name, resource_attributes::text,
                    scope_name, scope_version, attributes::text, dropped_attributes_count,
                    dropped_events_count, dropped_links_count, links::text, event_count
             FROM spans WHERE tenant_id = 'acme' ORDER BY span_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let r = &rows[0];
    assert_eq!(r.get::<_, &[u8]>("trace_id"), trace_id(1));
    assert_eq!(r.get::<_, &[u8]>("span_id"), span_id(1));
    assert_eq!(r.get::<_, Option<&[u8]>>("parent_span_id"), None);
    assert_eq!(r.get::<_, &str>("trace_state"), "vendor=x");
    assert_eq!(r.get::<_, i64>("flags"), 257);
    assert_eq!(r.get::<_, &str>("name"), "span-1");
    assert_eq!(r.get::<_, i16>("kind"), 2);
    // Microsecond precision, rounded down; the nanoseconds are kept beside.
    assert_eq!(r.get::<_, &str>(7), "2024-03-10 12:00:00.123456+00");
    assert_eq!(r.get::<_, &str>(8), "2024-03-10 12:00:00.124956+00");
    assert_eq!(r.get::<_, i64>("start_unix_nano"), T0);
    assert_eq!(r.get::<_, i64>("end_unix_nano"), T0 + 1_500_000);
    assert_eq!(r.get::<_, i64>("duration_ns"), 1_500_000);
    assert_eq!(r.get::<_, i16>("status_code"), 0);
    assert_eq!(r.get::<_, Option<&str>>("service_name"), Some("checkout"));
    assert_eq!(
        json_of(r.get(15)),
        json!({"service.name": "checkout", "host": {"cpu": 4}})
    );
    assert_eq!(r.get::<_, &str>("scope_name"), "lib");
    assert_eq!(r.get::<_, &str>("scope_version"), "1.2");
    assert_eq!(json_of(r.get(18)), json!({"n": 1, "tags": ["a", "b"]}));
    assert_eq!(r.get::<_, i64>("dropped_attributes_count"), 1);
    assert_eq!(r.get::<_, i64>("dropped_events_count"), 2);
    assert_eq!(r.get::<_, i64>("dropped_links_count"), 3);
    assert_eq!(json_of(r.get(22)), json!([]));
    assert_eq!(r.get::<_, i32>("event_count"), 0);

    let c = &rows[1];
    assert_eq!(
        c.get::<_, Option<&[u8]>>("parent_span_id"),
        Some(&span_id(1)[..])
    );
    assert_eq!(c.get::<_, i16>("kind"), 3);
    assert_eq!(c.get::<_, i16>("status_code"), 2);
    assert_eq!(c.get::<_, &str>("status_message"), "boom");
    assert_eq!(c.get::<_, Option<&str>>("service_name"), None);
    assert_eq!(c.get::<_, &str>(7), "2024-03-10 12:00:00.123458+00");
    assert_eq!(c.get::<_, i64>("start_unix_nano"), T0 + 2_000);
    assert_eq!(
        json_of(c.get(22)),
        json!([{"trace_id": "ab", "span_id": "cd", "flags": 0}])
    );
    assert_eq!(c.get::<_, i32>("event_count"), 2);

    let events = f
        .sql
        .query(
            "SELECT span_id, span_start_time::text, event_index, time::text, time_unix_nano,
                    name, attributes::text, dropped_attributes_count
             FROM span_events WHERE tenant_id = 'acme' ORDER BY event_index",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let e = &events[1];
    assert_eq!(e.get::<_, &[u8]>(0), span_id(2));
    assert_eq!(e.get::<_, &str>(1), "2024-03-10 12:00:00.123458+00");
    assert_eq!(e.get::<_, i32>(2), 1);
    assert_eq!(e.get::<_, &str>(3), "2024-03-10 12:00:00.123459+00");
    assert_eq!(e.get::<_, i64>(4), T0 + 2_000 + 1_000);
    assert_eq!(e.get::<_, &str>(5), "gave up");
    assert_eq!(json_of(e.get(6)), json!({"i": 1}));
    assert_eq!(e.get::<_, i64>(7), 7);

    let t = f
        .sql
        .query_one(
            "SELECT first_start_time::text, last_end_time::text, span_count, error_count,
                    root_service_name, root_span_name, root_span_id, root_start_unix_nano
             FROM traces WHERE tenant_id = 'acme' AND trace_id = $1",
            &[&&trace_id(1)[..]],
        )
        .await
        .unwrap();
    assert_eq!(t.get::<_, &str>(0), "2024-03-10 12:00:00.123456+00");
    assert_eq!(t.get::<_, &str>(1), "2024-03-10 12:00:00.124958+00");
    assert_eq!(t.get::<_, i64>(2), 2);
    assert_eq!(t.get::<_, i64>(3), 1);
    assert_eq!(t.get::<_, Option<&str>>(4), Some("checkout"));
    assert_eq!(t.get::<_, Option<&str>>(5), Some("span-1"));
    assert_eq!(t.get::<_, Option<&[u8]>>(6), Some(&span_id(1)[..]));
    assert_eq!(t.get::<_, Option<i64>>(7), Some(T0));
}

#[tokio::test]
async fn replays_and_repeats_are_stored_once() {
    let f = Fixture::new().await;
    let mut failed = span("acme", 1, 2, Some(1), T0 + 5);
    failed.status_code = 2;
    failed.links = r#"[{"trace_id":"ab","span_id":"cd"},{"trace_id":"ab","span_id":"ef"}]"#.into();
    failed.link_count = 2;
    let first = span("acme", 1, 1, None, T0);
    let m = message(
        vec![first.clone(), failed.clone()],
        vec![event(&failed, 0, "e")],
    );
    let stats = committed(f.writer.write(&batch(0, None, 10, &[&m])).await.unwrap());
    assert_eq!((stats.spans_inserted, stats.links_inserted), (2, 2));

    // The same message again, as after a crash before the Kafka commit.
    let stats = committed(
        f.writer
            .write(&batch(0, Some(10), 20, &[&m]))
            .await
            .unwrap(),
    );
    assert_eq!(
        stats,
        WriteStats {
            spans_inserted: 0,
            spans_duplicate: 2,
            events_inserted: 0,
            links_inserted: 0,
            traces_touched: 0,
            ..WriteStats::default()
        }
    );
    assert_eq!(f.stored_offset(0).await, Some(20));
    assert_eq!(f.count("SELECT count(*) FROM spans").await, 2);
    assert_eq!(f.count("SELECT count(*) FROM span_events").await, 1);
    assert_eq!(f.count("SELECT span_count FROM traces").await, 2);
    assert_eq!(f.count("SELECT error_count FROM traces").await, 1);

    // Within one batch: the same message twice, and one span in two messages
    // whose second copy brings other events (dropped with it).
    let new = span("acme", 2, 1, None, T0);
    let once = message(vec![new.clone()], vec![event(&new, 0, "kept")]);
    let again = message(
        vec![new.clone(), span("acme", 2, 2, Some(1), T0)],
        vec![event(&new, 0, "dropped"), event(&new, 1, "dropped too")],
    );
    let stats = committed(
        f.writer
            .write(&batch(0, Some(20), 30, &[&once, &once, &again]))
            .await
            .unwrap(),
    );
    assert_eq!(stats.spans_inserted, 2);
    assert_eq!(stats.spans_duplicate, 2);
    assert_eq!(stats.events_inserted, 1);
    let names = f
        .sql
        .query(
            "SELECT name FROM span_events WHERE trace_id = $1 ORDER BY event_index",
            &[&&trace_id(2)[..]],
        )
        .await
        .unwrap();
    let names: Vec<&str> = names.iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["kept"]);
    let span_count: i64 = f
        .sql
        .query_one(
            "SELECT span_count FROM traces WHERE tenant_id = 'acme' AND trace_id = $1",
            &[&&trace_id(2)[..]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(span_count, 2);
}

/// Spans and events that fill several COPY chunks each, so that the stream is
/// cut between rows many times on both write paths.
#[tokio::test]
async fn batches_of_many_copy_chunks_are_stored_whole_on_both_paths() {
    let f = Fixture::new().await;
    let pad = "x".repeat(1_000);
    let mut spans = Vec::new();
    let mut events = Vec::new();
    for trace in 1..=4 {
        for id in 1..=100 {
            let parent = (id > 1).then_some(1);
            let mut s = span("acme", trace, id, parent, T0 + i64::from(id));
            s.attributes = format!(r#"{{"n":{id},"pad":"{pad}"}}"#);
            events.push(event(&s, 0, &pad));
            events.push(event(&s, 1, "last"));
            spans.push(s);
        }
    }
    let first_three = message(spans[..300].to_vec(), events[..600].to_vec());
    let stats = committed(
        f.writer
            .write(&batch(0, None, 10, &[&first_three]))
            .await
            .unwrap(),
    );
    assert_eq!((stats.spans_inserted, stats.events_inserted), (300, 600));

    // The same spans and one trace more: duplicates send it down the staged path.
    let all = message(spans.clone(), events.clone());
    let stats = committed(
        f.writer
            .write(&batch(0, Some(10), 20, &[&all]))
            .await
            .unwrap(),
    );
    assert_eq!(
        (
            stats.spans_inserted,
            stats.spans_duplicate,
            stats.events_inserted
        ),
        (100, 300, 200)
    );

    assert_eq!(f.count("SELECT count(*) FROM spans").await, 400);
    assert_eq!(f.count("SELECT count(*) FROM span_events").await, 800);
    assert_eq!(
        f.count("SELECT sum(span_count)::int8 FROM traces").await,
        400
    );
    let padded = "SELECT count(*) FROM spans WHERE length(attributes->>'pad') = 1000";
    assert_eq!(f.count(padded).await, 400);
    let last = f
        .sql
        .query_one(
            "SELECT s.attributes->>'n', e.name FROM spans s JOIN span_events e
               USING (tenant_id, trace_id, span_id)
              WHERE s.trace_id = $1 AND s.span_id = $2 AND e.event_index = 1",
            &[&&trace_id(4)[..], &&span_id(100)[..]],
        )
        .await
        .unwrap();
    assert_eq!(last.get::<_, &str>(0), "100");
    assert_eq!(last.get::<_, &str>(1), "last");
}

async fn root_of(f: &Fixture, trace: u8) -> (Option<Vec<u8>>, Option<i64>, i64) {
    let r = f
        .sql
        .query_one(
            "SELECT root_span_id, root_start_unix_nano, span_count FROM traces
             WHERE tenant_id = 'acme' AND trace_id = $1",
            &[&&trace_id(trace)[..]],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test]
async fn the_earliest_root_wins_whatever_the_arrival_order() {
    let f = Fixture::new().await;
    let early = |trace| span("acme", trace, 9, None, T0);
    let late = |trace| span("acme", trace, 3, None, T0 + 1_000);
    let child = |trace| span("acme", trace, 5, Some(9), T0 + 10);

    // Trace 1: a child first (no root yet), then the late root, then the early one.
    // Trace 2: the early root first, then the late one.
    let steps = [
        message(vec![child(1)], vec![]),
        message(vec![late(1), early(2)], vec![]),
        message(vec![early(1), late(2)], vec![]),
    ];
    let mut expected = None;
    for (i, m) in steps.iter().enumerate() {
        let next = (i as i64 + 1) * 10;
        committed(
            f.writer
                .write(&batch(0, expected, next, &[m]))
                .await
                .unwrap(),
        );
        expected = Some(next);
        if i == 0 {
            assert_eq!(root_of(&f, 1).await, (None, None, 1));
        }
    }
    for trace in [1, 2] {
        assert_eq!(
            root_of(&f, trace).await.0.as_deref(),
            Some(&span_id(9)[..]),
            "trace {trace}"
        );
    }
    assert_eq!(
        root_of(&f, 1).await,
        (Some(span_id(9).to_vec()), Some(T0), 3)
    );

    // Same start: the lower span id wins, also within one batch.
    let tie = message(
        vec![
            span("acme", 3, 8, None, T0),
            span("acme", 3, 4, None, T0),
            span("acme", 3, 6, None, T0),
        ],
        vec![],
    );
    committed(
        f.writer
            .write(&batch(0, Some(30), 40, &[&tie]))
            .await
            .unwrap(),
    );
    let later_tie = message(vec![span("acme", 3, 2, None, T0)], vec![]);
    committed(
        f.writer
            .write(&batch(0, Some(40), 50, &[&later_tie]))
            .await
            .unwrap(),
    );
    assert_eq!(
        root_of(&f, 3).await,
        (Some(span_id(2).to_vec()), Some(T0), 4)
    );
}

#[tokio::test]
async fn the_offset_fences_concurrent_and_stale_writers() {
    let f = Fixture::new().await;
    let base = message(vec![span("acme", 1, 1, None, T0)], vec![]);
    committed(f.writer.write(&batch(0, None, 10, &[&base])).await.unwrap());

    // Two workers believe they own partition 0 at offset 10.
    let other = Writer::new(
        f.pool.clone(),
        f.partitions.clone(),
        Canceller::new(&f.db.db_args()).unwrap(),
    );
    let a = message(vec![span("acme", 2, 1, None, T0)], vec![]);
    let b = message(vec![span("acme", 3, 1, None, T0)], vec![]);
    let (ma, mb) = ([&a], [&b]);
    let (ba, bb) = (batch(0, Some(10), 20, &ma), batch(0, Some(10), 25, &mb));
    let (ra, rb) = tokio::join!(f.writer.write(&ba), other.write(&bb));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let (winner_trace, loser_trace, stored) = match (ra, rb) {
        (WriteOutcome::Committed(_), WriteOutcome::Fenced { stored }) => (2u8, 3u8, stored),
        (WriteOutcome::Fenced { stored }, WriteOutcome::Committed(_)) => (3, 2, stored),
        other => panic!("exactly one writer must commit: {other:?}"),
    };
    let winner_next = if winner_trace == 2 { 20 } else { 25 };
    assert_eq!(stored, Some(winner_next));
    assert_eq!(f.stored_offset(0).await, Some(winner_next));
    let traces: Vec<Vec<u8>> = f
        .sql
        .query("SELECT trace_id FROM spans ORDER BY trace_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(traces.contains(&trace_id(winner_trace).to_vec()));
    assert!(!traces.contains(&trace_id(loser_trace).to_vec()));
    assert_eq!(f.count("SELECT count(*) FROM traces").await, 2);

    // Never backwards, never in place.
    let stale = message(vec![span("acme", 4, 1, None, T0)], vec![]);
    for next in [winner_next - 5, winner_next] {
        let out = f
            .writer
            .write(&batch(0, Some(winner_next), next, &[&stale]))
            .await
            .unwrap();
        assert_eq!(
            out,
            WriteOutcome::Fenced {
                stored: Some(winner_next)
            }
        );
    }
    // A worker that saw no row, when there is one.
    let out = f
        .writer
        .write(&batch(0, None, 100, &[&stale]))
        .await
        .unwrap();
    assert_eq!(
        out,
        WriteOutcome::Fenced {
            stored: Some(winner_next)
        }
    );
    assert_eq!(f.stored_offset(0).await, Some(winner_next));
    assert_eq!(f.count("SELECT count(*) FROM spans").await, 2);

    // Offsets of other partitions are independent, and a batch may skip
    // offsets (Kafka has gaps).
    committed(f.writer.write(&batch(1, None, 5, &[&stale])).await.unwrap());
    committed(f.writer.write(&batch(1, Some(5), 9, &[])).await.unwrap());
    let client = f.pool.get().await.unwrap();
    assert_eq!(
        offsets::read_all(&**client, "g", "otlp_spans")
            .await
            .unwrap(),
        [(0, winner_next), (1, 9)]
    );
}

async fn spansink_sessions(f: &Fixture) -> i64 {
    f.count(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'spansink'",
    )
    .await
}

#[tokio::test]
async fn a_panic_before_commit_rolls_the_batch_back() {
    // Armed for the whole test binary: no other test names a span so.
    spansink::fault::arm(spansink::fault::Faults {
        panic_on_span_name: Some("poison-pill".into()),
        ..Default::default()
    });
    let f = Fixture::new().await;
    let mut pill = span("acme", 1, 2, Some(1), T0);
    pill.name = "poison-pill".into();
    let m = message(vec![span("acme", 1, 1, None, T0), pill], vec![]);
    pg::ping(&f.pool).await.unwrap();
    assert_eq!(
        spansink_sessions(&f).await,
        1,
        "the pool holds one connection"
    );

    let caught = std::panic::AssertUnwindSafe(f.writer.write(&batch(0, None, 10, &[&m])))
        .catch_unwind()
        .await;
    assert!(caught.is_err(), "the injected fault panics");

    // The pool's only connection, which was mid-transaction, is closed rather
    // than returned to the pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while spansink_sessions(&f).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the panicked connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.count("SELECT count(*) FROM spans").await, 0);
    assert_eq!(f.count("SELECT count(*) FROM traces").await, 0);
    assert_eq!(f.stored_offset(0).await, None);

    // The pool keeps working, and can still hand out all its connections.
    let mut held = Vec::new();
    for _ in 0..f.db.db_args().pool_size {
        held.push(f.pool.get().await.unwrap());
    }
    drop(held);
    pg::ping(&f.pool).await.unwrap();
    let healthy = Writer::new(
        f.pool.clone(),
        f.partitions.clone(),
        Canceller::new(&f.db.db_args()).unwrap(),
    );
    let mut cured = span("acme", 1, 2, Some(1), T0);
    cured.name = "no longer a pill".into();
    let m = message(vec![span("acme", 1, 1, None, T0), cured], vec![]);
    let stats = committed(healthy.write(&batch(0, None, 10, &[&m])).await.unwrap());
    assert_eq!(stats.spans_inserted, 2);
    assert_eq!(f.stored_offset(0).await, Some(10));
}

#[tokio::test]
async fn a_killed_connection_is_transient_and_the_retry_commits() {
    let mut f = Fixture::new().await;
    let first = message(vec![span("acme", 1, 1, None, T0)], vec![]);
    committed(
        f.writer
            .write(&batch(0, None, 10, &[&first]))
            .await
            .unwrap(),
    );

    // Hold the offset row so that the next batch waits inside its transaction.
    let blocker = f.sql.transaction().await.unwrap();
    blocker
        .execute(
            "SELECT 1 FROM ingest_offsets WHERE partition = 0 FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    let killer = f.db.client().await;
    let second = message(vec![span("acme", 2, 1, None, T0)], vec![]);
    let messages = [&second];
    let b2 = batch(0, Some(10), 20, &messages);
    let (result, killed) = tokio::join!(f.writer.write(&b2), async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = killer
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'spansink'
                       AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            if !rows.is_empty() {
                return rows.len();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the batch never waited"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert_eq!(killed, 1);
    let err = result.unwrap_err();
    assert_eq!(err.class(), Class::Transient, "{err}");
    blocker.rollback().await.unwrap();

    assert_eq!(
        f.writer
            .resolve_after_failure(&key(0), Some(10), 20)
            .await
            .unwrap(),
        AfterFailure::NotCommitted
    );
    committed(f.writer.write(&b2).await.unwrap());
    assert_eq!(
        f.writer
            .resolve_after_failure(&key(0), Some(10), 20)
            .await
            .unwrap(),
        AfterFailure::AlreadyCommitted
    );
    assert_eq!(
        f.writer
            .resolve_after_failure(&key(0), Some(5), 15)
            .await
            .unwrap(),
        AfterFailure::Fenced { stored: Some(20) }
    );
    assert_eq!(f.count("SELECT count(*) FROM spans").await, 2);
}

async fn partitions_of(f: &Fixture, parent: &str) -> Vec<(String, String)> {
    f.sql
        .query(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&parent],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn daily_partitions_are_created_on_demand_and_none_is_default() {
    let f = Fixture::new().await;
    let today = span("acme", 1, 1, None, T0);
    let tomorrow = span("acme", 1, 2, Some(1), T0 + DAY);
    let m = message(
        vec![today.clone(), tomorrow.clone()],
        vec![event(&tomorrow, 0, "e")],
    );
    committed(f.writer.write(&batch(0, None, 10, &[&m])).await.unwrap());
    let want = |parent: &str| {
        vec![
            (
                format!("{parent}_p20240310"),
                "FOR VALUES FROM ('2024-03-10 00:00:00+00') TO ('2024-03-11 00:00:00+00')".into(),
            ),
            (
                format!("{parent}_p20240311"),
                "FOR VALUES FROM ('2024-03-11 00:00:00+00') TO ('2024-03-12 00:00:00+00')".into(),
            ),
        ]
    };
    assert_eq!(partitions_of(&f, "spans").await, want("spans"));
    assert_eq!(partitions_of(&f, "span_events").await, want("span_events"));
    assert_eq!(f.count("SELECT count(*) FROM spans_p20240311").await, 1);
    assert_eq!(
        f.count("SELECT count(*) FROM span_events_p20240311").await,
        1
    );
    let defaults = f
        .count(
            "SELECT count(*) FROM pg_partitioned_table p
             WHERE p.partdefid <> 0",
        )
        .await;
    assert_eq!(defaults, 0, "no DEFAULT partition anywhere");

    // A partition dropped behind the cache's back (by retention, say): the
    // write fails as transient, the cache is forgotten, the retry recreates it.
    f.sql
        .batch_execute("DROP TABLE spans_p20240311, span_events_p20240311")
        .await
        .unwrap();
    let later = span("acme", 2, 1, None, T0 + DAY);
    let m2 = message(vec![later], vec![]);
    let err = f
        .writer
        .write(&batch(0, Some(10), 20, &[&m2]))
        .await
        .unwrap_err();
    assert_eq!(err.class(), Class::Transient, "{err}");
    assert_eq!(err.sqlstate(), Some("23514"));
    committed(
        f.writer
            .write(&batch(0, Some(10), 20, &[&m2]))
            .await
            .unwrap(),
    );
    assert_eq!(f.count("SELECT count(*) FROM spans_p20240311").await, 1);

    // Ahead of time: a day and the next eleven, more than one transaction's worth.
    let day = pg::day_of_unix_nano(T0 + 10 * DAY);
    f.partitions.ensure_ahead(&f.pool, day, 11).await.unwrap();
    let names: Vec<String> = partitions_of(&f, "spans")
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let want: Vec<String> = ["20240310", "20240311"]
        .into_iter()
        .map(String::from)
        .chain((20..=31).map(|d| format!("202403{d}")))
        .map(|d| format!("spans_p{d}"))
        .collect();
    assert_eq!(names, want);
    assert_eq!(partitions_of(&f, "span_events").await.len(), 14);
}

#[tokio::test]
async fn tenants_never_mix() {
    let f = Fixture::new().await;
    let m = message(
        vec![span("acme", 1, 1, None, T0), span("globex", 1, 1, None, T0)],
        vec![],
    );
    let stats = committed(f.writer.write(&batch(0, None, 10, &[&m])).await.unwrap());
    assert_eq!((stats.spans_inserted, stats.traces_touched), (2, 2));
    let tenants: Vec<String> = f
        .sql
        .query("SELECT tenant_id FROM traces ORDER BY tenant_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(
        f.count("SELECT count(*) FROM spans WHERE tenant_id = 'globex'")
            .await,
        1
    );
}

#[tokio::test]
async fn connections_opened_before_migration_stage_lazily() {
    let db = TestDb::create().await;
    let pool = pg::connect(&db.db_args()).await.unwrap();
    pg::ping(&pool).await.unwrap();
    let writer = Writer::new(
        pool.clone(),
        Arc::new(Partitions::new()),
        Canceller::new(&db.db_args()).unwrap(),
    );
    let m = message(vec![span("acme", 1, 1, None, T0)], vec![]);

    // Not migrated: no retry can help.
    let err = writer.write(&batch(0, None, 10, &[&m])).await.unwrap_err();
    assert_eq!(err.class(), Class::Fatal, "{err}");

    let mut sql = db.client().await;
    assert_eq!(pg::migrate(&mut sql).await.unwrap(), [1, 2, 3, 4]);
    // The pool's connection predates the schema and has no staging tables yet.
    let stats = committed(writer.write(&batch(0, None, 10, &[&m])).await.unwrap());
    assert_eq!(stats.spans_inserted, 1);
}

#[tokio::test]
async fn pool_sessions_are_configured_and_failures_classified() {
    let db = TestDb::create().await;
    let mut args = db.db_args();
    args.statement_timeout = Duration::from_millis(1500);
    let pool = pg::connect(&args).await.unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "1500ms");
    assert_eq!(row.get::<_, &str>(1), "spansink");
    drop(client);

    args.url = "postgres://nobody@[::1:5432/x".into();
    let err = pg::connect(&args).await.unwrap_err();
    assert_eq!(err.class(), Class::Fatal, "{err}");

    args.url = format!("{}_missing", db.url);
    let err = pg::ping(&pg::connect(&args).await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.class(), Class::Fatal, "a missing database: {err}");

    args.url = "postgres://postgres@127.0.0.1:1/postgres".into();
    let err = pg::ping(&pg::connect(&args).await.unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.class(),
        Class::Transient,
        "a server that is down: {err}"
    );
}

#[tokio::test]
async fn bad_values_are_poison_and_leave_the_connection_usable() {
    let f = Fixture::new().await;
    pg::ping(&f.pool).await.unwrap();
    let mut bad_json = span("acme", 1, 1, None, T0);
    bad_json.attributes = "{not json".into();
    let mut bad_kind = span("acme", 1, 2, None, T0);
    bad_kind.kind = 70_000;
    let mut bad_event = span("acme", 1, 3, None, T0);
    bad_event.name = "ok".into();
    let mut nul = event(&bad_event, 0, "e");
    nul.name = "a\0b".into();
    let cases = [
        (message(vec![bad_json], vec![]), Reason::PgDataException),
        (message(vec![bad_kind], vec![]), Reason::PgDataException),
        (message(vec![bad_event], vec![nul]), Reason::PgDataException),
    ];
    for (m, reason) in &cases {
        let err = f.writer.write(&batch(0, None, 10, &[m])).await.unwrap_err();
        assert_eq!(err.class(), Class::Poison, "{err}");
        assert_eq!(err.reason(), Some(*reason), "{err}");
    }
    assert_eq!(f.count("SELECT count(*) FROM spans").await, 0);
    assert_eq!(f.stored_offset(0).await, None);
    // Each failure ended with a clean ROLLBACK: the one connection stayed.
    assert_eq!(spansink_sessions(&f).await, 1);
    let good = message(vec![span("acme", 1, 4, None, T0)], vec![]);
    committed(f.writer.write(&batch(0, None, 10, &[&good])).await.unwrap());
    assert_eq!(spansink_sessions(&f).await, 1);
}

#[tokio::test]
async fn a_missing_partition_and_a_check_violation_are_told_apart_without_the_message_text() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (x int CONSTRAINT not_five CHECK (x <> 5)) PARTITION BY RANGE (x);
             CREATE TABLE t_1 PARTITION OF t FOR VALUES FROM (1) TO (10);",
        )
        .await
        .unwrap();
    let no_partition = client
        .execute("INSERT INTO t VALUES (20)", &[])
        .await
        .unwrap_err();
    let check = client
        .execute("INSERT INTO t VALUES (5)", &[])
        .await
        .unwrap_err();
    // Both are 23514.
    for e in [&no_partition, &check] {
        assert_eq!(e.code().map(|c| c.code()), Some("23514"));
    }
    assert!(spansink::error::is_missing_partition(&no_partition));
    assert!(!spansink::error::is_missing_partition(&check));
    let no_partition = spansink::error::Error::Postgres(no_partition);
    let check = spansink::error::Error::Postgres(check);
    assert_eq!(no_partition.class(), Class::Transient);
    assert_eq!(check.class(), Class::Poison);
    assert_eq!(check.reason(), Some(Reason::PgIntegrityViolation));
}
