//! Retention against a real PostgreSQL: whole daily partitions go, recent
//! days stay, traces expire by their last end, the ledger by its own
//! horizon, and replicas never run it at once.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::db::TestDb;
use spansink::model::{Decoded, LogRow, SpanRow};
use spansink::pg::pool::Canceller;
use spansink::pg::retention::{self, Settings};
use spansink::pg::write::Recorder;
use spansink::pg::{self, PartitionKey, Partitions, WriteBatch, WriteOutcome, Writer};
use tokio_postgres::Client;

const DAY_NS: i64 = 86_400 * 1_000_000_000;
const DAY: Duration = Duration::from_secs(86_400);

/// "Now" for these tests: 2026-03-10T12:00:00Z.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_773_144_000)
}

fn now_ns() -> i64 {
    1_773_144_000 * 1_000_000_000
}

fn span(id: u8, start: i64) -> SpanRow {
    SpanRow {
        tenant_id: Arc::from("acme"),
        trace_id: [id; 16],
        span_id: [id; 8],
        parent_span_id: None,
        trace_state: String::new(),
        flags: 0,
        name: "op".into(),
        kind: 1,
        start_unix_nano: start,
        end_unix_nano: start + 1_000,
        status_code: 0,
        status_message: String::new(),
        service_name: Some(Arc::from("svc")),
        resource_attributes: Arc::from("{}"),
        scope_name: Arc::from(""),
        scope_version: Arc::from(""),
        attributes: "{}".into(),
        dropped_attributes_count: 0,
        dropped_events_count: 0,
        dropped_links_count: 0,
        links: "[]".into(),
        link_count: 0,
        event_count: 0,
    }
}

fn log(id: u8, time: i64) -> LogRow {
    LogRow {
        tenant_id: Arc::from("acme"),
        record_id: [id; 16],
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: "\"x\"".into(),
        attributes: "{}".into(),
        resource_attributes: Arc::from("{}"),
        service_name: None,
        scope_name: Arc::from(""),
        scope_version: Arc::from(""),
        flags: 0,
        trace_id: None,
        span_id: None,
        event_name: String::new(),
        dropped_attributes_count: 0,
    }
}

async fn stored(db: &TestDb) -> (Client, Writer) {
    let mut sql = db.client().await;
    pg::migrate(&mut sql).await.unwrap();
    let pool = pg::connect(&db.db_args()).await.unwrap();
    let canceller = Canceller::new(&db.db_args()).unwrap();
    (
        sql,
        Writer::new(pool, Arc::new(Partitions::new()), canceller),
    )
}

/// Spans, span_metrics and logs on each of the days `days_ago`, one per day.
async fn write_days(writer: &Writer, days_ago: &[i64]) {
    let messages: Vec<Decoded> = days_ago
        .iter()
        .enumerate()
        .map(|(i, ago)| {
            let t = now_ns() - ago * DAY_NS;
            Decoded {
                spans: vec![span(i as u8 + 1, t)],
                logs: vec![log(i as u8 + 1, t)],
                ..Decoded::default()
            }
        })
        .collect();
    let refs: Vec<&Decoded> = messages.iter().collect();
    let batch = WriteBatch {
        key: PartitionKey {
            group: "g",
            topic: "t",
            partition: 0,
        },
        expected: None,
        next_offset: 1,
        replayed: false,
        messages: &refs,
        dead_letters: &[],
        recorder: Recorder {
            instance: "test",
            spool_id: "spool",
        },
    };
    assert!(matches!(
        writer.write(&batch).await.unwrap(),
        WriteOutcome::Committed(_)
    ));
}

async fn count(sql: &Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

async fn partitions(sql: &Client, parent: &str) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = $1::text::regclass",
        &[&parent],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn whole_days_past_the_horizon_are_dropped_and_the_rest_kept() {
    let db = TestDb::create().await;
    let (sql, writer) = stored(&db).await;
    write_days(&writer, &[40, 31, 29, 0]).await;
    // A day whose detach was left half done, and one detached but not dropped,
    // as an interrupted run would leave them.
    sql.batch_execute(
        "SELECT spansink_ensure_partitions(ARRAY[DATE '2026-01-01', DATE '2026-01-02']);
         ALTER TABLE spans DETACH PARTITION spans_p20260102;",
    )
    .await
    .unwrap();
    sql.batch_execute(
        "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", id, tenant_id,
             stage, reason, error, instance, spool_id, dead_lettered_at)
         VALUES ('g', 't', 0, 1, 'a', 'acme', 'decode', 'bad_protobuf', 'x', 'i', 's', now() - interval '60 days'),
                ('g', 't', 0, 2, 'b', 'acme', 'decode', 'bad_protobuf', 'x', 'i', 's', now())",
    )
    .await
    .unwrap();
    for parent in ["spans", "span_events", "span_metrics", "logs"] {
        assert_eq!(
            partitions(&sql, parent).await,
            if parent == "spans" { 5 } else { 6 }
        );
    }

    let settings = Settings {
        horizon: Some(30 * DAY),
        dead_letter_horizon: None,
    };
    let report = retention::run_once(&sql, settings, now())
        .await
        .unwrap()
        .expect("the lock was free");
    // 2026-01-01, 2026-01-02 and the day 40 days ago, for each table; the
    // day 31 days ago ended 30.5 days ago: gone too. 29 days ago stays.
    assert_eq!(report.partitions_dropped.len(), 4 * 4, "{report:?}");
    for parent in ["spans", "span_events", "span_metrics", "logs"] {
        assert_eq!(partitions(&sql, parent).await, 2, "{parent}");
    }
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM pg_class WHERE relname = 'spans_p20260102'"
        )
        .await,
        0
    );
    assert_eq!(count(&sql, "SELECT count(*) FROM spans").await, 2);
    assert_eq!(count(&sql, "SELECT count(*) FROM logs").await, 2);
    assert_eq!(
        count(&sql, "SELECT sum(span_count)::bigint FROM span_metrics").await,
        2
    );
    // Traces that ended before the horizon are deleted; the others stay.
    assert_eq!(count(&sql, "SELECT count(*) FROM traces").await, 2);
    // The ledger keeps its rows until it has a horizon of its own.
    assert_eq!(count(&sql, "SELECT count(*) FROM dead_letters").await, 2);
    let ledger = Settings {
        horizon: None,
        dead_letter_horizon: Some(30 * DAY),
    };
    let report = retention::run_once(&sql, ledger, SystemTime::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.dead_letters_deleted, 1);
    assert_eq!(count(&sql, "SELECT count(*) FROM dead_letters").await, 1);

    // A second run finds nothing left to do.
    let again = retention::run_once(&sql, settings, now())
        .await
        .unwrap()
        .unwrap();
    assert!(again.partitions_dropped.is_empty());
    assert_eq!(again.traces_deleted, 0);
}

#[tokio::test]
async fn one_replica_at_a_time_applies_retention() {
    let db = TestDb::create().await;
    let (sql, writer) = stored(&db).await;
    write_days(&writer, &[40]).await;
    let other = db.client().await;
    let held: bool = other
        .query_one("SELECT pg_try_advisory_lock(8318255638763892333)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(held);
    let settings = Settings {
        horizon: Some(30 * DAY),
        dead_letter_horizon: None,
    };
    assert_eq!(
        retention::run_once(&sql, settings, now()).await.unwrap(),
        None
    );
    assert_eq!(partitions(&sql, "spans").await, 1, "nothing dropped");
    other
        .query_one("SELECT pg_advisory_unlock(8318255638763892333)", &[])
        .await
        .unwrap();
    let report = retention::run_once(&sql, settings, now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.partitions_dropped.len(), 4);
    // The lock is released after a run: another session can take it.
    let free: bool = other
        .query_one("SELECT pg_try_advisory_lock(8318255638763892333)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free);
}
