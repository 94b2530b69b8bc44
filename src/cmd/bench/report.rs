//! What one round measured, and the table the bench prints.

use std::fmt::Write as _;

/// One measurement: the pipeline's or a ceiling's.
#[derive(Debug, Clone)]
pub struct Figures {
    pub seconds: f64,
    pub spans: i64,
    /// Spans, span events and traces rows written.
    pub rows: i64,
    /// Kafka payload bytes consumed (the pipeline only).
    pub bytes: u64,
    pub spansink_cpu: Option<f64>,
    pub pg_cpu: f64,
    pub peak_rss: Option<u64>,
    /// Batch commit latency, seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub connections: usize,
    /// Batch transactions committed.
    pub transactions: u64,
}

impl Figures {
    pub fn spans_per_second(&self) -> f64 {
        self.spans as f64 / self.seconds.max(1e-9)
    }

    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-9)
    }
}

/// One round: the pipeline and both ceilings on the same rows.
#[derive(Debug, Clone)]
pub struct Round {
    pub partitions: i32,
    pub prefill: u64,
    pub pipeline: Figures,
    pub upsert: Figures,
    pub copy: Figures,
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.0}", s * 1000.0))
}

/// The rounds as a Markdown table.
pub fn table(rounds: &[Round]) -> String {
    let mut out = String::from(
        "| partitions | rows before | spans/s | rows/s | MB/s | p50 / p99 commit ms | transactions | spansink CPU s | PostgreSQL CPU s | peak RSS MB | connections | ceiling rows/s | ceiling PostgreSQL CPU s | pipeline / ceiling | bare COPY rows/s | pipeline / bare COPY |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rounds {
        let p = &r.pipeline;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.1} | {} / {} | {} | {:.1} | {:.1} | {} | {} | {:.0} | {:.1} | {:.2} | {:.0} | {:.2} |",
            r.partitions,
            r.prefill,
            p.spans_per_second(),
            p.rows_per_second(),
            p.bytes as f64 / p.seconds.max(1e-9) / 1e6,
            ms(p.p50),
            ms(p.p99),
            p.transactions,
            p.spansink_cpu.unwrap_or(0.0),
            p.pg_cpu,
            p.peak_rss.map_or("-".into(), |b| format!("{:.0}", b as f64 / 1e6)),
            p.connections,
            r.upsert.rows_per_second(),
            r.upsert.pg_cpu,
            p.rows_per_second() / r.upsert.rows_per_second().max(1e-9),
            r.copy.rows_per_second(),
            p.rows_per_second() / r.copy.rows_per_second().max(1e-9),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(seconds: f64, rows: i64) -> Figures {
        Figures {
            seconds,
            spans: rows / 2,
            rows,
            bytes: 2_000_000,
            spansink_cpu: Some(1.5),
            pg_cpu: 3.0,
            peak_rss: Some(100_000_000),
            p50: Some(0.012),
            p99: None,
            connections: 4,
            transactions: 10,
        }
    }

    #[test]
    fn the_ratio_is_the_pipelines_throughput_over_the_ceilings() {
        let round = Round {
            partitions: 4,
            prefill: 0,
            pipeline: figures(2.0, 1000),
            upsert: figures(1.6, 1000),
            copy: figures(1.0, 1000),
        };
        let text = table(&[round]);
        let row = text.lines().nth(2).unwrap();
        assert!(row.contains("| 500 |"), "{row}");
        assert!(row.contains("| 0.80 |"), "{row}");
        assert!(row.contains("| 0.50 |"), "{row}");
        assert!(row.contains("| 12 / - |"), "{row}");
    }
}
