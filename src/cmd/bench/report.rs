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
    /// Seconds from the start of `spansink run` to its first batch committed
    /// (the pipeline only): connecting, joining the group, the first fetch
    /// and the first batch.
    pub first_commit: Option<f64>,
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

impl Round {
    /// The pipeline's rows per second over those of one of its ceilings.
    pub fn ratio(&self, ceiling: &Figures) -> f64 {
        self.pipeline.rows_per_second() / ceiling.rows_per_second().max(1e-9)
    }
}

/// The rounds as a Markdown table.
pub fn table(rounds: &[Round]) -> String {
    let mut out = String::from(
        "| partitions | rows before | spans/s | rows/s | MB/s | first commit s | p50 / p99 commit ms | transactions | spansink CPU s | PostgreSQL CPU s | peak RSS MB | connections | ceiling rows/s | ceiling PostgreSQL CPU s | pipeline / ceiling | bare COPY rows/s | pipeline / bare COPY |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rounds {
        let p = &r.pipeline;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.1} | {} | {} / {} | {} | {:.1} | {:.1} | {} | {} | {:.0} | {:.1} | {:.2} | {:.0} | {:.2} |",
            r.partitions,
            r.prefill,
            p.spans_per_second(),
            p.rows_per_second(),
            p.bytes as f64 / p.seconds.max(1e-9) / 1e6,
            p.first_commit.map_or("-".into(), |s| format!("{s:.2}")),
            ms(p.p50),
            ms(p.p99),
            p.transactions,
            p.spansink_cpu.unwrap_or(0.0),
            p.pg_cpu,
            p.peak_rss.map_or("-".into(), |b| format!("{:.0}", b as f64 / 1e6)),
            p.connections,
            r.upsert.rows_per_second(),
            r.upsert.pg_cpu,
            r.ratio(&r.upsert),
            r.copy.rows_per_second(),
            r.ratio(&r.copy),
        );
    }
    out
}

/// Each partition count's rounds in one line: the median and the range of
/// the ratios (each round's ratio pairs a pipeline with the ceilings measured
/// right after it), and the median throughput.
pub fn summary(rounds: &[Round]) -> String {
    let mut out = String::from(
        "| partitions | rows before | rounds | spans/s (median) | pipeline / ceiling: median (range) | pipeline / bare COPY: median (range) |\n\
         |---|---|---|---|---|---|\n",
    );
    for group in rounds.chunk_by(|a, b| (a.partitions, a.prefill) == (b.partitions, b.prefill)) {
        let of = |f: fn(&Round) -> f64| group.iter().map(f).collect::<Vec<f64>>();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} |",
            group[0].partitions,
            group[0].prefill,
            group.len(),
            median(&mut of(|r| r.pipeline.spans_per_second())),
            spread(of(|r| r.ratio(&r.upsert))),
            spread(of(|r| r.ratio(&r.copy))),
        );
    }
    out
}

/// The middle value; the mean of the two middle ones for an even count.
/// Sorts `values`.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `median (min–max)`, or the value of a single round.
fn spread(mut values: Vec<f64>) -> String {
    let mid = median(&mut values);
    match (values.first(), values.last()) {
        (Some(only), _) if values.len() == 1 => format!("{only:.2}"),
        (Some(min), Some(max)) => format!("{mid:.2} ({min:.2}–{max:.2})"),
        _ => "-".into(),
    }
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
            first_commit: Some(0.75),
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
        assert!(row.contains("| 0.75 | 12 / - |"), "{row}");
    }

    #[test]
    fn the_summary_gives_each_partition_counts_medians_and_ranges() {
        let round = |partitions, pipeline_seconds| Round {
            partitions,
            prefill: 0,
            pipeline: figures(pipeline_seconds, 1000),
            upsert: figures(1.6, 1000),
            copy: figures(1.0, 1000),
        };
        let rounds = [
            round(16, 2.0),
            round(16, 1.6),
            round(16, 3.2),
            round(64, 2.0),
            round(64, 1.0),
        ];
        let text = summary(&rounds);
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{text}");
        // Ratios 0.80, 1.00 and 0.50: the median is the middle round's.
        assert_eq!(
            rows[0],
            "| 16 | 0 | 3 | 250 | 0.80 (0.50–1.00) | 0.50 (0.31–0.62) |"
        );
        // Two rounds, 0.80 and 1.60: the mean of the two.
        assert_eq!(
            rows[1],
            "| 64 | 0 | 2 | 375 | 1.20 (0.80–1.60) | 0.75 (0.50–1.00) |"
        );
    }
}
