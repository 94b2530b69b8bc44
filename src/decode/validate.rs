//! The checks every row passes: id shapes and the acceptance window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Reason, Result};

use super::Limits;

/// A trace id: exactly 16 bytes, not all zero.
pub(super) fn trace_id(field: &str, bytes: &[u8]) -> Result<[u8; 16]> {
    nonzero_id(field, bytes)
}

/// A span id: exactly 8 bytes, not all zero.
pub(super) fn span_id(field: &str, bytes: &[u8]) -> Result<[u8; 8]> {
    nonzero_id(field, bytes)
}

/// A parent span id: empty or all zero means a root span.
pub(super) fn parent_span_id(bytes: &[u8]) -> Result<Option<[u8; 8]>> {
    optional_id("parent_span_id", bytes)
}

/// An id that may be absent: empty, or all zero (the "invalid" id of the W3C
/// trace context, which OTLP producers send for "none").
pub(super) fn optional_id<const N: usize>(field: &str, bytes: &[u8]) -> Result<Option<[u8; N]>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let id = fixed_id::<N>(field, bytes)?;
    Ok((id != [0; N]).then_some(id))
}

fn nonzero_id<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N]> {
    let id = fixed_id::<N>(field, bytes)?;
    if id == [0; N] {
        return Err(Error::input(
            Reason::InvalidId,
            format!("{field} is all zero"),
        ));
    }
    Ok(id)
}

fn fixed_id<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N]> {
    <[u8; N]>::try_from(bytes).map_err(|_| {
        // Show the start of the id: enough to find it, bounded for a huge field.
        let shown = &bytes[..bytes.len().min(32)];
        let more = if bytes.len() > shown.len() { "…" } else { "" };
        Error::input(
            Reason::InvalidId,
            format!(
                "{field} is {} bytes ({}{more}), must be {N}",
                bytes.len(),
                hex::encode(shown)
            ),
        )
    })
}

/// A timestamp that is stored but not window-checked (end times, event times):
/// it only has to fit the `bigint` column.
pub(super) fn stored_time(field: &str, unix_nano: u64) -> Result<i64> {
    i64::try_from(unix_nano).map_err(|_| {
        Error::input(
            Reason::TimestampOutOfWindow,
            format!(
                "{field} {unix_nano} is after {} (the largest bigint)",
                rfc3339(i128::from(i64::MAX))
            ),
        )
    })
}

/// The span start times accepted, in nanoseconds since the Unix epoch:
/// `[now - accept_past, now + accept_future]`, computed once per message.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    earliest: i128,
    latest: i128,
    past: Duration,
    future: Duration,
}

impl Window {
    pub(super) fn new(now: SystemTime, limits: &Limits) -> Self {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(after) => nanos(after),
            Err(before) => -nanos(before.duration()),
        };
        Window {
            earliest: now.saturating_sub(nanos(limits.accept_past)),
            latest: now.saturating_add(nanos(limits.accept_future)),
            past: limits.accept_past,
            future: limits.accept_future,
        }
    }

    /// `unix_nano` as stored, if it is inside the window. Values above
    /// `i64::MAX` cannot be stored and are outside any window.
    pub(super) fn check(&self, field: &str, unix_nano: u64) -> Result<i64> {
        let t = i128::from(unix_nano);
        match i64::try_from(unix_nano) {
            Ok(stored) if (self.earliest..=self.latest).contains(&t) => Ok(stored),
            _ => Err(Error::input(
                Reason::TimestampOutOfWindow,
                format!(
                    "{field} {} is outside the acceptance window {} .. {} (now - {} .. now + {})",
                    rfc3339(t),
                    rfc3339(self.earliest),
                    rfc3339(self.latest),
                    humantime::format_duration(self.past),
                    humantime::format_duration(self.future),
                ),
            )),
        }
    }
}

fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// RFC 3339 for any nanosecond count; humantime only formats 1970 to 9999,
/// so anything else is shown as the raw count.
fn rfc3339(unix_nano: i128) -> String {
    const LAST_FORMATTABLE: i128 = 253_402_300_799_999_999_999;
    if !(0..=LAST_FORMATTABLE).contains(&unix_nano) {
        return format!("{unix_nano} ns after the Unix epoch");
    }
    let (secs, sub) = (unix_nano / 1_000_000_000, unix_nano % 1_000_000_000);
    // Both fit: the range check above bounds them.
    let since = Duration::new(
        u64::try_from(secs).unwrap_or(0),
        u32::try_from(sub).unwrap_or(0),
    );
    humantime::format_rfc3339_nanos(UNIX_EPOCH + since).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const NOW_NS: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z

    fn window() -> Window {
        let limits = Limits {
            max_message_bytes: 1,
            max_value_depth: 1,
            max_attributes: 1,
            items: crate::decode::ItemLimits::UNLIMITED,
            accept_past: 2 * HOUR,
            accept_future: HOUR,
        };
        Window::new(UNIX_EPOCH + Duration::from_nanos(NOW_NS), &limits)
    }

    fn reason<T: std::fmt::Debug>(r: Result<T>) -> Option<Reason> {
        r.unwrap_err().reason()
    }

    #[test]
    fn window_edges_are_inclusive() {
        let w = window();
        let past = 2 * 3_600_000_000_000;
        let future = 3_600_000_000_000;
        assert_eq!(w.check("t", NOW_NS).unwrap(), NOW_NS as i64);
        assert!(w.check("t", NOW_NS - past).is_ok());
        assert!(w.check("t", NOW_NS + future).is_ok());
        assert_eq!(
            reason(w.check("t", NOW_NS - past - 1)),
            Some(Reason::TimestampOutOfWindow)
        );
        assert_eq!(
            reason(w.check("t", NOW_NS + future + 1)),
            Some(Reason::TimestampOutOfWindow)
        );
        assert_eq!(reason(w.check("t", 0)), Some(Reason::TimestampOutOfWindow));
    }

    #[test]
    fn window_error_names_the_time_and_the_window() {
        let err = window()
            .check("span 00aa start", NOW_NS + 2 * 3_600_000_000_000)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("span 00aa start 2026-01-01T02:00:00.000000000Z"),
            "{text}"
        );
        assert!(
            text.contains("2025-12-31T22:00:00.000000000Z .. 2026-01-01T01:00:00.000000000Z"),
            "{text}"
        );
        assert!(text.contains("now - 2h .. now + 1h"), "{text}");
    }

    #[test]
    fn times_above_i64_max_are_outside_any_window() {
        let limits = Limits {
            max_message_bytes: 1,
            max_value_depth: 1,
            max_attributes: 1,
            items: crate::decode::ItemLimits::UNLIMITED,
            accept_past: Duration::MAX,
            accept_future: Duration::MAX,
        };
        let w = Window::new(SystemTime::now(), &limits);
        assert!(w.check("t", i64::MAX as u64).is_ok());
        assert_eq!(
            reason(w.check("t", i64::MAX as u64 + 1)),
            Some(Reason::TimestampOutOfWindow)
        );
        assert_eq!(
            reason(w.check("t", u64::MAX)),
            Some(Reason::TimestampOutOfWindow)
        );
        assert_eq!(stored_time("end", i64::MAX as u64).unwrap(), i64::MAX);
        assert_eq!(
            reason(stored_time("end", u64::MAX)),
            Some(Reason::TimestampOutOfWindow)
        );
    }

    #[test]
    fn id_rules() {
        let t = [7u8; 16];
        assert_eq!(trace_id("trace_id", &t).unwrap(), t);
        assert_eq!(
            reason(trace_id("trace_id", &t[..15])),
            Some(Reason::InvalidId)
        );
        assert_eq!(
            reason(trace_id("trace_id", &[7u8; 17])),
            Some(Reason::InvalidId)
        );
        assert_eq!(
            reason(trace_id("trace_id", &[0u8; 16])),
            Some(Reason::InvalidId)
        );
        assert_eq!(reason(trace_id("trace_id", &[])), Some(Reason::InvalidId));
        assert_eq!(span_id("span_id", &[1u8; 8]).unwrap(), [1u8; 8]);
        assert_eq!(
            reason(span_id("span_id", &[0u8; 8])),
            Some(Reason::InvalidId)
        );
        assert_eq!(
            reason(span_id("span_id", &[1u8; 7])),
            Some(Reason::InvalidId)
        );
        assert_eq!(parent_span_id(&[]).unwrap(), None);
        assert_eq!(parent_span_id(&[0u8; 8]).unwrap(), None);
        assert_eq!(parent_span_id(&[2u8; 8]).unwrap(), Some([2u8; 8]));
        assert_eq!(reason(parent_span_id(&[2u8; 4])), Some(Reason::InvalidId));
        assert_eq!(reason(parent_span_id(&[0u8; 9])), Some(Reason::InvalidId));
    }

    #[test]
    fn id_errors_show_length_and_bytes() {
        let err = trace_id("trace_id", &[0xab; 15]).unwrap_err().to_string();
        let shown = format!("trace_id is 15 bytes ({}), must be 16", "ab".repeat(15));
        assert!(err.contains(&shown), "{err}");
        let err = trace_id("trace_id", &[1; 100]).unwrap_err().to_string();
        assert!(err.contains("100 bytes") && err.contains('…'), "{err}");
    }
}
