//! `spansink bench` end to end, small: the mock broker and `spansink run` in
//! processes of their own, a fresh database per phase, every span stored, and
//! the table of rounds with its summary.

#[path = "common/db.rs"]
mod db;
#[path = "common/spansink.rs"]
mod spansink;

use std::process::Command;

/// The cells of a Markdown table row.
fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

#[test]
fn two_rounds_are_tabled_each_with_its_first_commit_and_summarised_by_their_median() {
    let out = Command::new(spansink::binary())
        .args([
            "bench",
            "--spans=3000",
            "--spans-per-message=100",
            "--partitions=2",
            "--rounds=2",
            "--timeout=3m",
        ])
        .arg(format!("--database-url={}/postgres", db::server_url()))
        .env_remove("SPANSINK_LOG")
        .output()
        .expect("spansink bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The bench fails a round in which a span produced was not stored.
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");

    let tables: Vec<&str> = stdout.trim().split("\n\n").collect();
    assert_eq!(tables.len(), 2, "the rounds, then the summary:\n{stdout}");
    let header = cells(tables[0].lines().next().unwrap_or_default());
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name:?} in {header:?}"))
    };
    let (spans_per_second, first_commit, ratio) = (
        column("spans/s"),
        column("first commit s"),
        column("pipeline / ceiling"),
    );
    let rounds: Vec<Vec<&str>> = tables[0].lines().skip(2).map(cells).collect();
    assert_eq!(rounds.len(), 2, "{stdout}");
    let mut ratios = Vec::new();
    for round in &rounds {
        assert_eq!(round.len(), header.len(), "{round:?}");
        assert_eq!(round[0], "2", "partitions: {round:?}");
        let seconds: f64 = round[first_commit].parse().expect("first commit seconds");
        assert!(seconds > 0.0 && seconds < 180.0, "{round:?}");
        let rate: f64 = round[spans_per_second].parse().expect("spans/s");
        assert!(rate > 0.0, "{round:?}");
        ratios.push(round[ratio].parse::<f64>().expect("a ratio"));
    }

    let summary: Vec<Vec<&str>> = tables[1].lines().skip(2).map(cells).collect();
    assert_eq!(summary.len(), 1, "one partition count:\n{}", tables[1]);
    let row = &summary[0];
    assert_eq!(
        &row[..3],
        &["2", "0", "2"],
        "partitions, rows before, rounds"
    );
    ratios.sort_by(f64::total_cmp);
    // The table rounds each ratio to two places; the summary takes the median
    // of the unrounded ones, so it may differ in the last place.
    let mean = (ratios[0] + ratios[1]) / 2.0;
    let range = format!("({:.2}–{:.2})", ratios[0], ratios[1]);
    let median: f64 = row[4]
        .split_whitespace()
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no median in {:?}", row[4]));
    assert!(
        (median - mean).abs() <= 0.006 && row[4].ends_with(&range),
        "the summary's ratio {:?} is the median {mean:.3} of the rounds' {ratios:?} with {range}",
        row[4]
    );
}
