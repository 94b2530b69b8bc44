//! `spansink retention`: one retention round, for cron. `run` applies the
//! same on a schedule when `--retention` is set; the advisory lock lets any
//! number of them overlap safely.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::{RetentionArgs, RetentionCmdArgs};
use crate::error::{Error, Result};
use crate::metric;
use crate::pg::retention::{self, Report};

pub async fn run(args: &RetentionCmdArgs) -> Result<()> {
    args.db.validate()?;
    args.retention.validate()?;
    if !args.retention.enabled() {
        return Err(Error::config(
            "--retention",
            "nothing to do: set --retention and/or --dead-letter-retention",
        ));
    }
    let pool = crate::pg::pool::connect(&args.db.settings()).await?;
    let client = pool.get().await?;
    match retention::run_once(&client, args.retention.settings(), SystemTime::now()).await? {
        Some(report) => {
            log(&report);
            println!("{}", summary(&report));
        }
        None => println!("retention: another instance is applying it; nothing done"),
    }
    Ok(())
}

/// Applies retention every `--retention-interval` until `stop`; failures are
/// logged and retried next round (retention is never urgent).
pub async fn schedule(pool: deadpool_postgres::Pool, args: RetentionArgs, stop: CancellationToken) {
    if !args.enabled() {
        return;
    }
    let mut tick = tokio::time::interval(args.retention_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round = async {
            let client = pool.get().await?;
            retention::run_once(&client, args.settings(), SystemTime::now()).await
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            done = round => match done {
                Ok(Some(report)) => {
                    log(&report);
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or(Duration::ZERO);
                    metrics::gauge!(metric::RETENTION_LAST_SUCCESS).set(now.as_secs_f64());
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "retention round failed; retrying next round"),
            }
        }
    }
}

fn log(report: &Report) {
    tracing::info!(
        partitions = report.partitions_dropped.len(),
        traces = report.traces_deleted,
        dead_letters = report.dead_letters_deleted,
        "retention applied"
    );
}

fn summary(report: &Report) -> String {
    format!(
        "retention: dropped {} daily partitions{}; deleted {} traces and {} dead-letter ledger rows",
        report.partitions_dropped.len(),
        if report.partitions_dropped.is_empty() {
            String::new()
        } else {
            format!(" ({})", report.partitions_dropped.join(", "))
        },
        report.traces_deleted,
        report.dead_letters_deleted
    )
}
