//! A batch's rows as one transaction writes them: each span once.
//!
//! Log records need no such pass: their key is where they were read, so a
//! batch holds each one once, and `ON CONFLICT DO NOTHING` on the staged path
//! tolerates a key proposed twice anyway.

use std::collections::hash_map::Entry;

use foldhash::{HashMap, HashMapExt as _};

use crate::model::{Decoded, LogRow, SpanEventRow, SpanRow};
use crate::pg::partitions::day_of_unix_nano;

/// A batch's rows after deduplication within the batch.
pub(crate) struct Rows<'a> {
    pub spans: Vec<&'a SpanRow>,
    pub events: Vec<&'a SpanEventRow>,
    pub logs: Vec<&'a LogRow>,
    /// Spans in the batch before deduplication.
    pub total_spans: usize,
}

/// What makes a span the same span, as the primary key says: tenant, ids and
/// the start to the microsecond (PostgreSQL's precision). A replay carries the
/// same start.
type SpanKey<'a> = (&'a str, &'a [u8; 16], &'a [u8; 8], i64);

fn start_micros(unix_nano: i64) -> i64 {
    unix_nano.div_euclid(1_000)
}

impl<'a> Rows<'a> {
    /// Keeps the first occurrence of each span (in offset order, so which one is
    /// stored never depends on chance) and the events of the message it came
    /// from. Besides exact counts, this keeps the traces upsert valid:
    /// ON CONFLICT DO UPDATE refuses a statement that proposes one key twice.
    pub fn dedupe(messages: &[&'a Decoded]) -> Self {
        let mut winner: HashMap<SpanKey<'a>, usize> =
            HashMap::with_capacity(messages.iter().map(|m| m.spans.len()).sum());
        let mut spans = Vec::new();
        let mut total_spans = 0;
        for (i, m) in messages.iter().enumerate() {
            for s in &m.spans {
                total_spans += 1;
                let key = (
                    &*s.tenant_id,
                    &s.trace_id,
                    &s.span_id,
                    start_micros(s.start_unix_nano),
                );
                if let Entry::Vacant(v) = winner.entry(key) {
                    v.insert(i);
                    spans.push(s);
                }
            }
        }
        let winner = &winner;
        let events = messages
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.events.iter().filter(move |e| {
                    let key = (
                        &*e.tenant_id,
                        &e.trace_id,
                        &e.span_id,
                        start_micros(e.span_start_unix_nano),
                    );
                    winner.get(&key).is_none_or(|w| *w == i)
                })
            })
            .collect();
        let logs = messages.iter().flat_map(|m| &m.logs).collect();
        Rows {
            spans,
            events,
            logs,
            total_spans,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.events.is_empty() && self.logs.is_empty()
    }

    /// The UTC days whose partitions the rows go to.
    pub fn days(&self) -> Vec<i32> {
        let spans = self.spans.iter().map(|s| s.start_unix_nano);
        let events = self.events.iter().map(|e| e.span_start_unix_nano);
        let logs = self.logs.iter().map(|l| l.time_unix_nano);
        let mut days: Vec<i32> = spans
            .chain(events)
            .chain(logs)
            .map(day_of_unix_nano)
            .collect();
        days.sort_unstable();
        days.dedup();
        days
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SpanEventRow;

    fn span(tenant: &str, id: u8, start: i64) -> SpanRow {
        SpanRow {
            event_count: 1,
            ..SpanRow::bare(tenant, [1; 16], id, start)
        }
    }

    fn event(s: &SpanRow, name: &str) -> SpanEventRow {
        SpanEventRow {
            tenant_id: s.tenant_id.clone(),
            trace_id: s.trace_id,
            span_id: s.span_id,
            span_start_unix_nano: s.start_unix_nano,
            event_index: 0,
            time_unix_nano: s.start_unix_nano,
            name: name.into(),
            attributes: "{}".into(),
            dropped_attributes_count: 0,
        }
    }

    fn message(spans: Vec<SpanRow>, event_name: &str) -> Decoded {
        let events = spans.iter().map(|s| event(s, event_name)).collect();
        Decoded {
            spans,
            events,
            ..Default::default()
        }
    }

    #[test]
    fn first_copy_of_a_span_wins_with_its_events() {
        let a = message(vec![span("t", 1, 10), span("t", 2, 10)], "first");
        let b = message(vec![span("t", 2, 10), span("t", 3, 10)], "second");
        let rows = Rows::dedupe(&[&a, &b]);
        assert_eq!(rows.total_spans, 4);
        let ids: Vec<u8> = rows.spans.iter().map(|s| s.span_id[0]).collect();
        assert_eq!(ids, [1, 2, 3]);
        let events: Vec<(u8, &str)> = rows
            .events
            .iter()
            .map(|e| (e.span_id[0], e.name.as_str()))
            .collect();
        assert_eq!(events, [(1, "first"), (2, "first"), (3, "second")]);
    }

    #[test]
    fn tenant_and_start_are_part_of_the_identity() {
        let a = message(
            vec![span("t", 1, 10), span("u", 1, 10), span("t", 1, 2_000)],
            "e",
        );
        assert_eq!(Rows::dedupe(&[&a]).spans.len(), 3);
    }

    #[test]
    fn starts_within_one_microsecond_are_one_span_and_the_first_wins() {
        // As the primary key sees them: start_time has microseconds.
        let a = message(vec![span("t", 1, 1_000)], "first");
        let b = message(vec![span("t", 1, 1_001)], "second");
        let rows = Rows::dedupe(&[&a, &b]);
        assert_eq!(rows.spans.len(), 1);
        assert_eq!(rows.spans[0].start_unix_nano, 1_000);
        let events: Vec<&str> = rows.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(events, ["first"]);
    }

    #[test]
    fn days_cover_spans_and_events() {
        let day = 86_400 * 1_000_000_000;
        let a = message(vec![span("t", 1, day + 5), span("t", 2, 3 * day)], "e");
        let b = message(vec![span("t", 3, day)], "e");
        assert_eq!(Rows::dedupe(&[&a, &b]).days(), [1, 3]);
    }
}
