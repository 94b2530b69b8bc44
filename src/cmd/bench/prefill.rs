//! The template every round's databases are made from: migrated, and with
//! `--prefill` spans already stored, as a table that has been in use is.

use std::time::SystemTime;

use super::db::{self, Server};
use crate::config::Encoding;
use crate::decode::Limits;
use crate::error::Result;
use crate::loadgen::{Generator, TrafficSpec};
use crate::model::SpanRow;

/// Spans written per transaction while pre-filling.
const CHUNK: usize = 50_000;

/// Creates the template database `name`: migrated, with `rows` spans of a
/// tenant of its own (so that the bench's counts can leave them out).
pub async fn template(server: &Server, name: &str, rows: u64, limits: &Limits) -> Result<()> {
    let url = server.create(name, None).await?;
    let pool = crate::pg::pool::connect(&crate::pg::pool::Settings {
        url: url.clone(),
        pool_size: 1,
        pool_timeout: std::time::Duration::from_secs(30),
        statement_timeout: std::time::Duration::ZERO,
    })
    .await?;
    crate::cmd::migrate::apply(&pool, 2).await?;
    drop(pool);
    if rows == 0 {
        return Ok(());
    }
    let mut client = db::client(&url).await?;
    let copy = client
        .prepare(include_str!("../../../sql/spans_copy_direct.sql"))
        .await?;
    let spec = TrafficSpec {
        tenants: "prefill:1"
            .parse()
            .map_err(|e| crate::error::Error::config("tenants", e))?,
        spans_per_message: 100,
        seed: 7,
        run_id: "prefill".into(),
        error_ratio: 0.05,
    };
    let mut generator = Generator::new(spec);
    let tenant: std::sync::Arc<str> = std::sync::Arc::from("prefill");
    let mut left = rows;
    while left > 0 {
        let mut spans: Vec<SpanRow> = Vec::with_capacity(CHUNK);
        while spans.len() < CHUNK && (spans.len() as u64) < left {
            let m = generator.next_message(SystemTime::now());
            let payload = crate::cmd::loadgen::encode(Encoding::OtlpProto, &m.request);
            let decoded = crate::decode::decode_traces(
                &payload,
                Encoding::OtlpProto,
                &tenant,
                limits,
                SystemTime::now(),
            )?;
            spans.extend(decoded.spans);
        }
        spans.truncate(usize::try_from(left).unwrap_or(usize::MAX));
        let refs: Vec<&SpanRow> = spans.iter().collect();
        let tx = client.transaction().await?;
        crate::pg::copy::copy_spans(&tx, &copy, &refs).await?;
        tx.commit().await?;
        left -= refs.len() as u64;
    }
    client.batch_execute("VACUUM ANALYZE spans").await?;
    Ok(())
}
