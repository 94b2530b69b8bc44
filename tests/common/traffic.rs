//! Synthetic traffic for the end-to-end tests, and checks that the stored rows
//! are exactly what was produced.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::SystemTime;

use prost::Message as _;
use spansink::loadgen::{Generator, TrafficSpec};
use spansink::otlp::ExportTraceServiceRequest;

use super::db::TestDb;
use super::kafka::{produce, producer};

/// What was produced: per partition, each message's offset and span count.
#[derive(Debug, Default, Clone)]
pub struct Produced {
    pub messages: BTreeMap<i32, Vec<(i64, usize)>>,
}

impl Produced {
    pub fn total_spans(&self) -> usize {
        self.messages.values().flatten().map(|(_, n)| n).sum()
    }

    /// Spans in the messages below each partition's `next_offset`.
    pub fn spans_below(&self, next_offsets: &BTreeMap<i32, i64>) -> usize {
        self.messages
            .iter()
            .map(|(p, msgs)| {
                let next = next_offsets.get(p).copied().unwrap_or(0);
                msgs.iter()
                    .filter(|(o, _)| *o < next)
                    .map(|(_, n)| n)
                    .sum::<usize>()
            })
            .sum()
    }

    pub fn end_offsets(&self) -> BTreeMap<i32, i64> {
        self.messages
            .iter()
            .filter_map(|(p, m)| m.last().map(|(o, _)| (*p, o + 1)))
            .collect()
    }

    pub fn extend(&mut self, other: Produced) {
        for (p, msgs) in other.messages {
            self.messages.entry(p).or_default().extend(msgs);
        }
    }
}

pub fn generator(seed: u64, spans_per_message: usize) -> Generator {
    Generator::new(TrafficSpec {
        tenants: "acme:3,globex:2,initech:1".parse().expect("tenants"),
        spans_per_message,
        seed,
        run_id: format!("test-{seed}"),
        error_ratio: 0.1,
    })
}

/// Produces `messages` messages round-robin over `partitions`.
pub async fn produce_traffic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    messages: usize,
    generator: &mut Generator,
) -> Produced {
    let p = producer(bootstrap);
    let mut out = Produced::default();
    for i in 0..messages {
        let msg = generator.next_message(SystemTime::now());
        let partition = (i as i32) % partitions;
        let payload = msg.request.encode_to_vec();
        let (part, offset) = produce(&p, topic, partition, Some(&msg.tenant), &payload).await;
        out.messages
            .entry(part)
            .or_default()
            .push((offset, msg.span_count));
    }
    out
}

/// One message whose spans are renamed to `name` (a marker for fault injection).
pub fn marked_message(generator: &mut Generator, name: &str) -> (String, Vec<u8>, usize) {
    let msg = generator.next_message(SystemTime::now());
    let mut req: ExportTraceServiceRequest = msg.request;
    for s in req
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        s.name = name.to_string();
    }
    (msg.tenant, req.encode_to_vec(), msg.span_count)
}

pub async fn span_count(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM spans", &[])
        .await
        .expect("count")
        .get(0)
}

pub async fn stored_offsets(db: &TestDb, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    db.client()
        .await
        .query(
            "SELECT partition, next_offset FROM ingest_offsets WHERE consumer_group = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await
        .expect("offsets")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Rows in the dead-letter ledger.
pub async fn ledger_count(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .expect("ledger")
        .get(0)
}

/// Derived counts are exact: every trace's span_count and error_count equal
/// the spans actually stored for it.
pub async fn assert_traces_exact(db: &TestDb) {
    let client = db.client().await;
    let wrong: i64 = client
        .query_one(
            "SELECT count(*) FROM traces t
             LEFT JOIN (SELECT tenant_id, trace_id, count(*) AS n,
                               count(*) FILTER (WHERE status_code = 2) AS errors
                        FROM spans GROUP BY tenant_id, trace_id) s USING (tenant_id, trace_id)
             WHERE t.span_count IS DISTINCT FROM s.n OR t.error_count IS DISTINCT FROM s.errors",
            &[],
        )
        .await
        .expect("traces check")
        .get(0);
    assert_eq!(
        wrong, 0,
        "traces rows whose counts differ from the stored spans"
    );
}
