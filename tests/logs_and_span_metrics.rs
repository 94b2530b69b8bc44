//! Log records and span_metrics against a real PostgreSQL: log records are
//! stored once per place they were read, and every span stored counts once
//! in its span_metrics bucket, on both write paths and under replays.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::db::TestDb;
use spansink::decode::{self, Encoding, ItemLimits, Limits};
use spansink::model::{Decoded, Origin, SpanRow};
use spansink::pg::pool::Canceller;
use spansink::pg::span_metrics;
use spansink::pg::write::Recorder;
use spansink::pg::{self, PartitionKey, Partitions, WriteBatch, WriteOutcome, WriteStats, Writer};
use tokio_postgres::Client;

/// 2024-03-10T12:00:00.123456789Z
const T0: i64 = 1_710_072_000_123_456_789;
const MS: i64 = 1_000_000;

struct Fixture {
    writer: Writer,
    sql: Client,
    _db: TestDb,
}

impl Fixture {
    async fn new() -> Fixture {
        let db = TestDb::create().await;
        let mut sql = db.client().await;
        pg::migrate(&mut sql).await.unwrap();
        sql.batch_execute("SET TIME ZONE 'UTC'").await.unwrap();
        let pool = pg::connect(&db.db_args()).await.unwrap();
        let canceller = Canceller::new(&db.db_args()).unwrap();
        let writer = Writer::new(pool, Arc::new(Partitions::new()), canceller);
        Fixture {
            writer,
            sql,
            _db: db,
        }
    }

    async fn count(&self, query: &str) -> i64 {
        self.sql.query_one(query, &[]).await.unwrap().get(0)
    }

    /// Writes one batch of partition `partition` of `topic` at `[from, to)`.
    async fn write(
        &self,
        topic: &str,
        partition: i32,
        expected: Option<i64>,
        to: i64,
        messages: &[&Decoded],
    ) -> WriteStats {
        let batch = WriteBatch {
            key: PartitionKey {
                group: "g",
                topic,
                partition,
            },
            expected,
            next_offset: to,
            replayed: false,
            messages,
            dead_letters: &[],
            recorder: Recorder {
                instance: "test",
                spool_id: "spool",
            },
        };
        match self.writer.write(&batch).await.unwrap() {
            WriteOutcome::Committed(stats) => stats,
            other => panic!("expected a commit, got {other:?}"),
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_message_bytes: 1 << 20,
        max_value_depth: 32,
        max_attributes: 128,
        items: ItemLimits::UNLIMITED,
        accept_past: Duration::from_secs(3650 * 86_400),
        accept_future: Duration::from_secs(86_400),
    }
}

fn logs_at(origin: &Origin<'_>, count: usize, context: Option<([u8; 16], [u8; 8])>) -> Decoded {
    let payload = common::logs::payload(count, T0 as u64, context);
    decode::decode_logs(
        &payload,
        Encoding::OtlpProto,
        &Arc::from("acme"),
        origin,
        &limits(),
        SystemTime::now(),
    )
    .unwrap()
}

fn origin(offset: i64) -> Origin<'static> {
    Origin {
        topic: "otlp_logs",
        partition: 0,
        offset,
        timestamp_ms: Some(1_710_072_000_000 + offset),
    }
}

#[tokio::test]
async fn log_records_are_stored_once_per_place_they_were_read() {
    let f = Fixture::new().await;
    let context = ([7; 16], [8; 8]);
    let first = logs_at(&origin(0), 3, Some(context));
    let second = logs_at(&origin(1), 2, None);
    let stats = f.write("otlp_logs", 0, None, 2, &[&first, &second]).await;
    assert_eq!((stats.logs_inserted, stats.logs_duplicate), (5, 0));

    let row = f
        .sql
        .query_one(
            "SELECT time::text, time_unix_nano, observed_time_unix_nano, severity_number,
                    severity_text, body::text, attributes::text, resource_attributes::text,
                    service_name, scope_name, trace_id, span_id
             FROM logs WHERE tenant_id = 'acme' AND body = '\"line 0\"' AND trace_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "2024-03-10 12:00:00.123456+00");
    assert_eq!(row.get::<_, i64>(1), T0);
    assert_eq!(row.get::<_, i64>(2), T0 + 1);
    assert_eq!(row.get::<_, i16>(3), 17);
    assert_eq!(row.get::<_, &str>(4), "ERROR");
    assert_eq!(row.get::<_, &str>(6), r#"{"i": 0}"#);
    assert_eq!(row.get::<_, &str>(7), r#"{"service.name": "checkout"}"#);
    assert_eq!(row.get::<_, Option<&str>>(8), Some("checkout"));
    assert_eq!(row.get::<_, &str>(9), "app");
    assert_eq!(row.get::<_, Option<&[u8]>>(10), Some(&[7; 16][..]));
    assert_eq!(row.get::<_, Option<&[u8]>>(11), Some(&[8; 8][..]));

    // The same messages again (a redelivery, a replay): nothing new, counted
    // as duplicates, and the batch still moves the offset.
    let stats = f
        .write("otlp_logs", 0, Some(2), 4, &[&first, &second])
        .await;
    assert_eq!((stats.logs_inserted, stats.logs_duplicate), (0, 5));
    // The same lines produced again at other offsets are new lines.
    let resent = logs_at(&origin(4), 3, Some(context));
    let stats = f.write("otlp_logs", 0, Some(4), 5, &[&resent]).await;
    assert_eq!((stats.logs_inserted, stats.logs_duplicate), (3, 0));
    assert_eq!(f.count("SELECT count(*) FROM logs").await, 8);
    assert_eq!(
        f.count("SELECT count(DISTINCT record_id) FROM logs").await,
        8
    );
    // Logs join their span by (tenant_id, trace_id, span_id).
    assert_eq!(
        f.count(
            "SELECT count(*) FROM logs
             WHERE tenant_id = 'acme' AND trace_id = '\\x07070707070707070707070707070707'
               AND span_id = '\\x0808080808080808'"
        )
        .await,
        6
    );
    // The logs table has its own daily partition.
    assert_eq!(
        f.count("SELECT count(*) FROM pg_inherits WHERE inhparent = 'logs'::regclass")
            .await,
        1
    );
}

fn span(id: u8, start: i64, duration: i64, status: i32, name: &str) -> SpanRow {
    SpanRow {
        tenant_id: Arc::from("acme"),
        trace_id: [1; 16],
        span_id: [id; 8],
        parent_span_id: Some([0xff; 8]),
        trace_state: String::new(),
        flags: 0,
        name: name.into(),
        kind: 2,
        start_unix_nano: start,
        end_unix_nano: start.saturating_add(duration),
        status_code: status,
        status_message: String::new(),
        service_name: if id.is_multiple_of(3) {
            None
        } else {
            Some(Arc::from("checkout"))
        },
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

/// Spans over two minutes, two names, both statuses, every kind of duration:
/// negative, on each bound, over the last one and near i64::MAX.
fn spans(ids: std::ops::Range<u8>) -> Vec<SpanRow> {
    let durations = [
        -5,
        0,
        MS,
        MS + 1,
        25 * MS,
        60_000 * MS,
        60_000 * MS + 1,
        i64::MAX - T0 - 120_000 * MS,
    ];
    ids.map(|id| {
        let i = usize::from(id);
        span(
            id,
            T0 + (i as i64 % 2) * 60_000 * MS,
            durations[i % durations.len()],
            if i.is_multiple_of(4) { 2 } else { 0 },
            if i.is_multiple_of(5) {
                "GET /a"
            } else {
                "GET /b"
            },
        )
    })
    .collect()
}

fn message(spans: Vec<SpanRow>) -> Decoded {
    Decoded {
        spans,
        ..Decoded::default()
    }
}

/// span_metrics summed over shards, beside the same figures computed from
/// the stored spans: they must be equal.
async fn metrics_match_spans(f: &Fixture) -> i64 {
    let rows = f
        .sql
        .query(
            "WITH m AS (
                 SELECT tenant_id, minute, service_name, span_name, span_kind, status_code,
                        sum(span_count)::bigint AS n, sum(error_count)::bigint AS e,
                        sum(duration_sum_ns) AS d,
                        ARRAY(SELECT sum(x)::bigint FROM unnest(array_agg(latency_buckets)) WITH ORDINALITY u(x, i)
                              GROUP BY (i - 1) % 17 ORDER BY (i - 1) % 17) AS h
                 FROM span_metrics GROUP BY 1, 2, 3, 4, 5, 6),
             s AS (
                 SELECT tenant_id, date_bin('1 minute', start_time, TIMESTAMPTZ '1970-01-01Z') AS minute,
                        coalesce(service_name, '') AS service_name, name AS span_name,
                        kind AS span_kind, status_code,
                        count(*) AS n, count(*) FILTER (WHERE status_code = 2) AS e,
                        sum(duration_ns::numeric) AS d,
                        spansink_latency_histogram(array_agg(spansink_latency_bucket(duration_ns))) AS h
                 FROM spans GROUP BY 1, 2, 3, 4, 5, 6)
             SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM s),
                    (SELECT count(*) FROM m FULL JOIN s USING (tenant_id, minute, service_name, span_name, span_kind, status_code)
                     WHERE m.n IS DISTINCT FROM s.n OR m.e IS DISTINCT FROM s.e
                        OR m.d IS DISTINCT FROM s.d OR m.h IS DISTINCT FROM s.h),
                    (SELECT coalesce(sum(n), 0)::bigint FROM m)",
            &[],
        )
        .await
        .unwrap();
    let (m, s, differ, total): (i64, i64, i64, i64) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
    );
    assert_eq!(differ, 0, "span_metrics differ from the stored spans");
    assert_eq!(m, s);
    total
}

#[tokio::test]
async fn every_stored_span_counts_once_in_span_metrics() {
    let f = Fixture::new().await;
    // Direct path: all new.
    let a = message(spans(0..24));
    let stats = f.write("otlp_spans", 0, None, 1, &[&a]).await;
    assert_eq!(stats.spans_inserted, 24);
    assert_eq!(metrics_match_spans(&f).await, 24);
    // Staged path: half already stored, half new, and one span twice.
    let mut mixed = spans(12..40);
    mixed.push(spans(39..40).remove(0));
    let b = message(mixed);
    let stats = f.write("otlp_spans", 0, Some(1), 2, &[&b]).await;
    assert_eq!((stats.spans_inserted, stats.spans_duplicate), (16, 13));
    assert_eq!(metrics_match_spans(&f).await, 40);
    // Another partition replays everything: a shard of its own, no new count.
    let c = message(spans(0..40));
    let stats = f.write("otlp_spans", 1, None, 1, &[&c]).await;
    assert_eq!(stats.spans_inserted, 0);
    assert_eq!(metrics_match_spans(&f).await, 40);
    // A new span in partition 1 lands in that partition's shard.
    let d = message(vec![span(200, T0, 3 * MS, 0, "GET /a")]);
    f.write("otlp_spans", 1, Some(1), 2, &[&d]).await;
    assert_eq!(metrics_match_spans(&f).await, 41);
    assert_eq!(
        f.count("SELECT count(DISTINCT shard) FROM span_metrics")
            .await,
        2
    );
    // The sum of a bucket past i64 is exact.
    let big = f
        .sql
        .query_one(
            "SELECT max(duration_sum_ns) > 9223372036854775807::numeric FROM span_metrics",
            &[],
        )
        .await
        .unwrap();
    assert!(big.get::<_, bool>(0));
}

#[tokio::test]
async fn buckets_agree_between_spansink_and_postgresql() {
    let f = Fixture::new().await;
    let mut durations = vec![i64::MIN, -1, 0, 1, i64::MAX];
    for ms in span_metrics::BOUNDS_MS {
        durations.extend([ms * MS - 1, ms * MS, ms * MS + 1]);
    }
    for d in durations {
        let sql: i32 = f
            .sql
            .query_one("SELECT spansink_latency_bucket($1)", &[&d])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sql as usize, span_metrics::bucket(d), "duration {d} ns");
    }
}
