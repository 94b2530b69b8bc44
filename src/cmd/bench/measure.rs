//! What a bench reads off the machine: CPU seconds and peak memory from
//! `/proc`, PostgreSQL's backends from `pg_stat_activity`, latency quantiles
//! from spansink's own histograms.

use std::collections::HashMap;

use procfs::process::Process;

use crate::error::{Error, Result};

fn proc_error(what: &str, e: procfs::ProcError) -> Error {
    Error::io(what.to_string(), std::io::Error::other(e.to_string()))
}

/// CPU seconds (user and system) a process has used so far.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| proc_error("reading a process's CPU time", e))?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// The most memory a process has held resident (VmHWM), in bytes.
pub fn peak_rss_bytes(pid: i32) -> Result<u64> {
    let status = Process::new(pid)
        .and_then(|p| p.status())
        .map_err(|e| proc_error("reading a process's memory", e))?;
    Ok(status.vmhwm.unwrap_or(0) * 1024)
}

/// CPU seconds of each of these processes; one that is gone counts nothing.
pub fn cpu_by_pid(pids: &[i32]) -> HashMap<i32, f64> {
    pids.iter()
        .filter_map(|&pid| cpu_seconds(pid).ok().map(|s| (pid, s)))
        .collect()
}

/// CPU used between two readings, by processes that may have started in
/// between (counted from zero).
pub fn cpu_between(before: &HashMap<i32, f64>, after: &HashMap<i32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, s)| s - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// The server processes of a database's sessions with this application name.
/// They run on this machine only when PostgreSQL does: the bench says so.
pub async fn backend_pids(
    client: &tokio_postgres::Client,
    database: &str,
    application: &str,
) -> Result<Vec<i32>> {
    let rows = client
        .query(
            include_str!("../../../sql/bench_backends.sql"),
            &[&database, &application],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `GET http://{addr}{path}`: status and body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use http_body_util::BodyExt as _;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::io(
            format!("GET {path}"),
            std::io::Error::other(format!("{what}: {e}")),
        )
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed("handshake", &e))?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| failed("request", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed("response", &e))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed("body", &e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The `q` quantile of a Prometheus histogram in exposition text, summed over
/// its series and interpolated within a bucket as Prometheus does.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for sample in scrape.samples.iter().filter(|s| s.metric == name) {
        if let prometheus_parse::Value::Histogram(hs) = &sample.value {
            for b in hs {
                match buckets.iter_mut().find(|(le, _)| *le == b.less_than) {
                    Some((_, count)) => *count += b.count,
                    None => buckets.push((b.less_than, b.count)),
                }
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    quantile_of_buckets(&buckets, q)
}

/// A counter's total over its series.
pub fn counter_total(text: &str, name: &str) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return 0.0;
    };
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn quantile_of_buckets(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let within = (rank - previous.1) / (count - previous.1).max(f64::MIN_POSITIVE);
            return Some(previous.0 + (le - previous.0) * within);
        }
        previous = (le, count);
    }
    None
}

/// The `q` quantile of measured values.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = ((values.len() - 1) as f64 * q).round() as usize;
    values.get(at).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_interpolates_within_its_bucket() {
        let buckets = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile_of_buckets(&buckets, 0.5), Some(0.1));
        let p75 = quantile_of_buckets(&buckets, 0.75).unwrap();
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        assert_eq!(quantile_of_buckets(&[(0.1, 0.0)], 0.5), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak() {
        let me = std::process::id() as i32;
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(peak_rss_bytes(me).unwrap() > 0);
    }
}
