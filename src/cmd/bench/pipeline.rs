//! One measurement of the pipeline: `spansink run` in a process of its own,
//! with default settings (unless the operator adds some), reading a topic fed
//! with the bench's traffic, timed from its start until PostgreSQL holds the
//! last offset.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::Broker;
use super::db;
use super::measure;
use super::traffic::{Feeder, Traffic};
use super::Figures;
use crate::error::{Error, Result};

const GROUP: &str = "spansink-bench";
const POLL: Duration = Duration::from_millis(25);

pub struct Pipeline<'a> {
    pub traffic: &'a Traffic,
    pub broker: &'a Broker,
    pub topic: &'a str,
    pub partitions: i32,
    pub database: &'a str,
    pub url: &'a str,
    /// More flags for `spansink run`.
    pub run_args: &'a [String],
    pub timeout: Duration,
}

impl Pipeline<'_> {
    pub async fn measure(&self) -> Result<Figures> {
        let sql = db::client(self.url).await?;
        let before = db::counts(&sql).await?;
        let mut feeder = Feeder::new(
            self.traffic,
            self.broker.bootstrap(),
            self.topic,
            self.partitions,
            self.broker.is_bounded(),
        )?;
        // What fits on the broker is there before the clock starts.
        feeder.feed(&vec![None; self.partitions as usize]).await?;
        let workdir = tempfile::tempdir().map_err(|e| Error::io("a bench directory", e))?;
        let metrics_addr = free_port()?;
        let started = Instant::now();
        let mut child = ChildGuard(self.spawn(workdir.path(), &metrics_addr)?);
        let pid = child.0.id() as i32;
        let (ends, first_commit) = self
            .wait_stored(&sql, &mut feeder, &mut child, workdir.path(), started)
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        let spansink_cpu = measure::cpu_seconds(pid)?;
        let peak_rss = measure::peak_rss_bytes(pid)?;
        let backends = measure::backend_pids(&sql, self.database, "spansink").await?;
        let pg_cpu = measure::cpu_between(&Default::default(), &measure::cpu_by_pid(&backends));
        let metrics = measure::http_get(&metrics_addr, "/metrics").await?.1;
        let latency =
            |q| measure::histogram_quantile(&metrics, crate::metric::PG_TRANSACTION_SECONDS, q);
        drop(child);
        let after = db::counts(&sql).await?;
        let spans = after.spans - before.spans;
        if spans != self.traffic.spans as i64 {
            return Err(Error::Internal(format!(
                "{} spans produced, {spans} stored: no figures for this run",
                self.traffic.spans
            )));
        }
        tracing::debug!(?ends, "every offset stored");
        Ok(Figures {
            seconds,
            spans,
            rows: spans + (after.events - before.events) + (after.traces - before.traces),
            bytes: self.traffic.bytes,
            spansink_cpu: Some(spansink_cpu),
            first_commit,
            pg_cpu,
            peak_rss: Some(peak_rss),
            p50: latency(0.5),
            p99: latency(0.99),
            connections: backends.len(),
            transactions: measure::counter_total(&metrics, crate::metric::BATCHES_COMMITTED) as u64,
        })
    }

    fn spawn(&self, dir: &std::path::Path, metrics_addr: &str) -> Result<Child> {
        let exe = std::env::current_exe().map_err(|e| Error::io("finding spansink", e))?;
        let log = std::fs::File::create(dir.join("spansink.log"))
            .map_err(|e| Error::io("the bench's log file", e))?;
        Command::new(exe)
            .arg("run")
            .arg(format!("--brokers={}", self.broker.bootstrap()))
            .arg(format!("--database-url={}", self.url))
            .arg(format!("--group-id={GROUP}"))
            .arg(format!(
                "--traces-topic={}:{}",
                self.topic, self.traffic.encoding
            ))
            .arg(format!("--metrics-addr={metrics_addr}"))
            .arg("--admin-addr=off")
            .arg(format!("--spool-dir={}", dir.join("spool").display()))
            .arg("--no-migrate")
            .args(self.run_args)
            .env_remove("SPANSINK_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::io("starting spansink run", e))
    }

    /// Feeds the topic as consumption allows until PostgreSQL holds every
    /// partition's last offset; returns those offsets, and how long after
    /// `started` the first batch was committed (to within a poll).
    async fn wait_stored(
        &self,
        sql: &tokio_postgres::Client,
        feeder: &mut Feeder<'_>,
        child: &mut ChildGuard,
        dir: &std::path::Path,
        started: Instant,
    ) -> Result<(Vec<i64>, Option<f64>)> {
        let deadline = Instant::now() + self.timeout;
        let ends = feeder.end_offsets();
        let mut first_commit = None;
        loop {
            let stored = stored_offsets(sql, self.topic, self.partitions).await?;
            if first_commit.is_none() && stored.iter().any(Option::is_some) {
                first_commit = Some(started.elapsed().as_secs_f64());
            }
            if feeder.done() && stored.iter().zip(&ends).all(|(s, e)| *s == Some(*e)) {
                return Ok((ends, first_commit));
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                let log = std::fs::read_to_string(dir.join("spansink.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                return Err(Error::Internal(format!(
                    "spansink run exited ({status}): {tail}"
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Internal(format!(
                    "not every offset was stored within {}",
                    humantime::format_duration(self.timeout)
                )));
            }
            feeder.feed(&stored).await?;
            tokio::time::sleep(POLL).await;
        }
    }
}

async fn stored_offsets(
    sql: &tokio_postgres::Client,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Option<i64>>> {
    let rows = sql
        .query(
            include_str!("../../../sql/offsets_read_all.sql"),
            &[&GROUP, &topic],
        )
        .await?;
    let mut stored = vec![None; partitions as usize];
    for row in rows {
        let (p, next): (i32, i64) = (row.get(0), row.get(1));
        if let Some(slot) = stored.get_mut(p as usize) {
            *slot = Some(next);
        }
    }
    Ok(stored)
}

/// A loopback address nothing listens on (the port may be taken meanwhile,
/// which `spansink run` would report).
fn free_port() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(addr.to_string())
}

/// The spansink under measurement; it is stopped however the bench ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = stop(&mut self.0);
    }
}

/// SIGTERM would drain cleanly, but a bench has nothing left to drain.
fn stop(child: &mut Child) -> std::io::Result<()> {
    child.kill()?;
    child.wait().map(|_| ())
}
