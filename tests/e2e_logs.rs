//! OTLP logs end to end, through the real binary and a Kafka-protocol broker:
//! a logs topic that does not exist yet never holds up the traces; log
//! records are stored once, even across restarts; a bad log message is
//! dead-lettered alone, and replay stores it once, however often it is
//! replayed and even when the DLQ holds it twice.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::db::TestDb;
use common::kafka::{produce, producer, read_all, DLQ, TOPIC};
use common::spansink::{wait_for, Instance};
use common::traffic::{generator, produce_traffic, span_count, stored_offsets};

const LOGS: &str = "otlp_logs";

async fn log_count(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM logs", &[])
        .await
        .expect("count")
        .get(0)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_consumed_beside_traces_and_stored_once() {
    let db = TestDb::migrated().await;
    let (kafka, bootstrap) = common::kafka::cluster(2, true);
    let group = "g-logs";
    let args = [
        "--logs-topic=otlp_logs",
        // Tight enough that a record from 2000 is refused.
        "--accept-past=30d",
    ];
    let mut instance = Instance::spawn(&bootstrap, &db.url, group, &args);
    // The logs topic does not exist: traces flow meanwhile.
    let mut gen = generator(5, 10);
    let traces = produce_traffic(&bootstrap, TOPIC, 2, 20, &mut gen).await;
    wait_for("traces stored", Duration::from_secs(60), || async {
        span_count(&db).await as usize == traces.total_spans()
    })
    .await;
    assert_eq!(
        common::kafka::committed_offsets(&bootstrap, group, LOGS, 2),
        vec![None, None]
    );

    kafka.create_topic(LOGS, 2).expect("logs topic");
    let p = producer(&bootstrap);
    let now = now_ns();
    let context = ([0x42; 16], [0x24; 8]);
    for i in 0..10 {
        let payload = common::logs::payload(5, now, Some(context));
        produce(&p, LOGS, i % 2, Some("acme"), &payload).await;
    }
    // One message of a year 2000 record: out of the window, and alone.
    let old = common::logs::payload(3, 946_684_800_000_000_000, None);
    let (_, bad_offset) = produce(&p, LOGS, 1, Some("acme"), &old).await;
    for i in 0..4 {
        let payload = common::logs::payload(2, now, None);
        produce(&p, LOGS, i % 2, Some("acme"), &payload).await;
    }
    wait_for(
        "log topic partitions at their end",
        Duration::from_secs(60),
        || async {
            stored_offsets(&db, group, LOGS).await
                == std::collections::BTreeMap::from([(0, 7), (1, 8)])
        },
    )
    .await;
    assert_eq!(log_count(&db).await, 10 * 5 + 4 * 2);
    let ledger: (String, i64) = {
        let row = db
            .client()
            .await
            .query_one(
                "SELECT reason, \"offset\" FROM dead_letters WHERE topic = $1",
                &[&LOGS],
            )
            .await
            .expect("one dead letter");
        (row.get(0), row.get(1))
    };
    assert_eq!(ledger, ("timestamp_out_of_window".to_string(), bad_offset));
    wait_for(
        "the dead letter published",
        Duration::from_secs(30),
        || async { read_all(&bootstrap, DLQ).len() == 1 },
    )
    .await;
    let scraped = instance.scrape().await;
    let written = common::exposition::metric_value(
        &scraped,
        "spansink_log_records_written_total",
        &[("topic", LOGS)],
    );
    assert_eq!(written, Some(58.0), "{scraped}");

    // A restart reads from the stored offsets: nothing twice.
    instance.kill9();
    let mut instance = Instance::spawn(&bootstrap, &db.url, group, &args);
    let p2 = producer(&bootstrap);
    produce(
        &p2,
        LOGS,
        0,
        Some("acme"),
        &common::logs::payload(1, now, None),
    )
    .await;
    wait_for("the new line", Duration::from_secs(60), || async {
        log_count(&db).await == 59
    })
    .await;
    // Logs join their span.
    let joined: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM logs WHERE tenant_id = 'acme' AND trace_id = $1 AND span_id = $2",
            &[&&context.0[..], &&context.1[..]],
        )
        .await
        .expect("join")
        .get(0);
    assert_eq!(joined, 50);
    instance.sigterm();
    assert!(instance.wait_exit(Duration::from_secs(30)).is_some());

    // Replay the dead letter under a wider window: stored once, however often
    // and from wherever it is replayed.
    let replay = |extra: &[&str]| common::spansink::replay(&bootstrap, &db.url, extra);
    let wide = ["--logs-topic=otlp_logs", "--accept-past=36500d"];
    let report = replay(&wide);
    assert!(
        report.contains("log records inserted 3, already stored 0"),
        "{report}"
    );
    assert_eq!(log_count(&db).await, 62);
    let report = replay(&wide);
    assert!(
        report.contains("log records inserted 0, already stored 3"),
        "{report}"
    );
    // The same dead letter published a second time (a lost acknowledgement)
    // under a new id is still the same source message.
    let records = read_all(&bootstrap, DLQ);
    let copy = &records[0];
    {
        use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
        use rdkafka::producer::FutureRecord;
        let mut headers = OwnedHeaders::new();
        for h in copy.headers().expect("headers").iter() {
            let value = if h.key == "spansink.dlq.id" {
                Some(&b"another-id"[..])
            } else {
                h.value
            };
            headers = headers.insert(Header { key: h.key, value });
        }
        let record = FutureRecord::<[u8], [u8]>::to(DLQ)
            .payload(copy.payload().expect("payload"))
            .headers(headers);
        p2.send(record, Duration::from_secs(10))
            .await
            .expect("republished");
    }
    let report = replay(&wide);
    assert!(
        report.contains("log records inserted 0, already stored 6"),
        "{report}"
    );
    assert_eq!(log_count(&db).await, 62);
}
