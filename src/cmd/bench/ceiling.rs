//! What PostgreSQL alone can take: the rows a pipeline run wrote, decoded
//! beforehand, written by bare binary COPY on as many connections as the
//! pipeline used, in batches of the same size, with no Kafka, no decoding, no
//! staging table and no offset fence.
//!
//! Two ceilings: `upsert` writes `traces` and `span_metrics` by the same
//! `ON CONFLICT DO UPDATE`s the pipeline runs (the pipeline must: a trace or a
//! minute may come back), each connection in a shard of its own as each
//! partition is; `copy` copies spans, events and `traces`, which only a bench
//! that knows every trace is new can, and leaves `span_metrics` out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_postgres::Client;

use super::db;
use super::measure;
use super::Figures;
use crate::error::{Error, Result};
use crate::model::{Decoded, SpanEventRow, SpanRow};
use crate::pg::copy;
use crate::pg::span_metrics::{self, MetricRow};
use crate::pg::traces::{self, TraceRow};

/// How `traces` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traces {
    Upsert,
    Copy,
}

/// One transaction's rows.
pub struct Batch {
    pub spans: Vec<SpanRow>,
    pub events: Vec<SpanEventRow>,
    pub traces: Vec<TraceRow>,
    pub metrics: Vec<MetricRow>,
}

impl Batch {
    pub fn of(messages: Vec<Decoded>) -> Batch {
        let mut spans = Vec::new();
        let mut events = Vec::new();
        for m in messages {
            spans.extend(m.spans);
            events.extend(m.events);
        }
        let traces = traces::fold(&spans);
        let metrics = span_metrics::fold(&spans);
        Batch {
            spans,
            events,
            traces,
            metrics,
        }
    }
}

/// Writes every batch on `connections` connections and measures it.
pub async fn measure(
    url: &str,
    batches: Vec<Batch>,
    connections: usize,
    traces: Traces,
) -> Result<Figures> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let client = db::client(url).await?;
        client
            .batch_execute(include_str!("../../../sql/bench_ceiling_session.sql"))
            .await?;
        crate::pg::pool::create_staging(&client).await?;
        clients.push(client);
    }
    let mut backends = Vec::with_capacity(clients.len());
    for client in &clients {
        backends.push(
            client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0),
        );
    }
    let before = db::counts(&clients[0]).await?;
    let queue = Arc::new(Mutex::new(VecDeque::from(batches)));
    let started = Instant::now();
    let cpu_before = measure::cpu_by_pid(&backends);
    let mut tasks = Vec::new();
    for (shard, mut client) in clients.into_iter().enumerate() {
        let queue = Arc::clone(&queue);
        let shard = shard as i32;
        tasks.push(tokio::spawn(async move {
            let took = drain(&mut client, &queue, traces, shard).await;
            // Kept open: its server process is measured after the last commit.
            (client, took)
        }));
    }
    let mut latencies = Vec::new();
    let mut open = Vec::new();
    for task in tasks {
        let (client, took) = task
            .await
            .map_err(|e| Error::Internal(format!("a ceiling writer failed: {e}")))?;
        latencies.append(&mut took?);
        open.push(client);
    }
    let seconds = started.elapsed().as_secs_f64();
    let pg_cpu = measure::cpu_between(&cpu_before, &measure::cpu_by_pid(&backends));
    drop(open);
    let sql = db::client(url).await?;
    let after = db::counts(&sql).await?;
    Ok(Figures {
        seconds,
        spans: after.spans - before.spans,
        rows: (after.spans - before.spans)
            + (after.events - before.events)
            + (after.traces - before.traces),
        bytes: 0,
        spansink_cpu: None,
        first_commit: None,
        pg_cpu,
        peak_rss: None,
        transactions: latencies.len() as u64,
        p50: measure::quantile(&mut latencies, 0.5),
        p99: measure::quantile(&mut latencies, 0.99),
        connections,
    })
}

/// One connection: batches off the shared queue until it is empty; the
/// seconds each transaction took.
async fn drain(
    client: &mut Client,
    queue: &Mutex<VecDeque<Batch>>,
    traces: Traces,
    shard: i32,
) -> Result<Vec<f64>> {
    let spans = client
        .prepare(include_str!("../../../sql/spans_copy_direct.sql"))
        .await?;
    let events = client
        .prepare(include_str!("../../../sql/events_copy_direct.sql"))
        .await?;
    let (copy_traces, upsert) = match traces {
        Traces::Upsert => (
            client
                .prepare(include_str!("../../../sql/traces_copy_stage.sql"))
                .await?,
            Some(
                client
                    .prepare(include_str!("../../../sql/traces_upsert.sql"))
                    .await?,
            ),
        ),
        Traces::Copy => (
            client
                .prepare(include_str!("../../../sql/bench_copy_traces.sql"))
                .await?,
            None,
        ),
    };
    let metrics = match traces {
        Traces::Upsert => Some((
            client
                .prepare(include_str!("../../../sql/span_metrics_copy_stage.sql"))
                .await?,
            client
                .prepare(include_str!("../../../sql/span_metrics_upsert.sql"))
                .await?,
        )),
        Traces::Copy => None,
    };
    let mut took = Vec::new();
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(batch) = next else { return Ok(took) };
        let started = Instant::now();
        let tx = client.transaction().await?;
        let span_refs: Vec<&SpanRow> = batch.spans.iter().collect();
        let event_refs: Vec<&SpanEventRow> = batch.events.iter().collect();
        copy::copy_spans(&tx, &spans, &span_refs).await?;
        copy::copy_events(&tx, &events, &event_refs).await?;
        traces::copy_traces(&tx, &copy_traces, &batch.traces).await?;
        if let Some(upsert) = &upsert {
            tx.execute(upsert, &[]).await?;
        }
        if let Some((stage, upsert)) = &metrics {
            span_metrics::copy_metrics(&tx, stage, &batch.metrics).await?;
            tx.execute(upsert, &[&shard]).await?;
        }
        tx.commit().await?;
        took.push(started.elapsed().as_secs_f64());
    }
}
