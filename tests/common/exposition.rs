//! Reads what `/metrics` serves, Prometheus text exposition, with the
//! `prometheus-parse` crate.
//!
//! Each sample line is read on its own, so that every series keeps the name it
//! has in the text: a histogram's buckets stay `<name>_bucket` with an `le`
//! label, beside `<name>_sum` and `<name>_count`, as Prometheus stores them.
//!
//! The crate skips a line it cannot read, and it takes a label set apart at
//! every `,` and `=` without unescaping. A test must not pass on a line that
//! was never read, or read wrong, so here such a line is an error that names
//! it. spansink's label values (topics, partitions, reasons, kinds, versions)
//! need no escaping.

use std::collections::BTreeMap;

use prometheus_parse::{LineInfo, Scrape, Value};

/// One series of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of a scrape, `#` lines skipped; the first line that the crate
/// cannot read faithfully is the error.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| read_sample(l).map_err(|e| format!("{l:?}: {e}")))
        .collect()
}

fn read_sample(line: &str) -> Result<Sample, String> {
    let LineInfo::Sample { labels: text, .. } = LineInfo::parse(line) else {
        return Err("not a sample".into());
    };
    let scrape = Scrape::parse(std::iter::once(Ok(line.to_string()))).map_err(|e| e.to_string())?;
    // Without a `# TYPE` line every sample is untyped; one whose value is not
    // a number is skipped.
    let [sample] = scrape.samples.as_slice() else {
        return Err("the value is not a number".into());
    };
    let (Value::Untyped(value) | Value::Counter(value) | Value::Gauge(value)) = sample.value else {
        return Err(format!("read as {:?}", sample.value));
    };
    let labels: BTreeMap<String, String> = sample
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !read_back(&labels, text.unwrap_or_default()) {
        return Err(format!("the labels read as {labels:?}"));
    }
    Ok(Sample {
        name: sample.metric.clone(),
        labels,
        value,
    })
}

/// Whether the labels the crate found, written back, are the text between the
/// braces pair for pair, with no escape the crate would have kept as it was.
fn read_back(labels: &BTreeMap<String, String>, text: &str) -> bool {
    let mut written: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut pairs: Vec<&str> = text.split(',').filter(|p| !p.is_empty()).collect();
    written.sort();
    pairs.sort_unstable();
    !text.contains('\\') && written == pairs
}

/// Every sample of a scrape; a line that cannot be read fails the test.
pub fn samples(text: &str) -> Vec<Sample> {
    parse(text).unwrap_or_else(|e| panic!("unreadable scrape: {e}\n{text}"))
}

/// The series of `name` that carry all of `labels`, and maybe others.
pub fn series<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// Sum over every series of `name`; `None` when there is none.
pub fn total(samples: &[Sample], name: &str) -> Option<f64> {
    total_where(samples, name, &[])
}

/// Sum over the series of `name` that carry all of `labels`; `None` when there is none.
pub fn total_where(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(samples, name, labels)
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

/// Sum over the series of `name` that carry all of `labels`, in a scrape's
/// text; `None` when there is none.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    total_where(&samples(text), name, labels)
}

/// The largest value of the series of `name` that carry all of `labels`, in a
/// scrape's text; `None` when there is none.
pub fn metric_max(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(&samples(text), name, labels)
        .map(|s| s.value)
        .reduce(f64::max)
}
