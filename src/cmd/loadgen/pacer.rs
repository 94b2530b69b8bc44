//! Pacing to a rate in spans per second, kept apart from producing so that
//! its timing can be tested without a broker.

use std::time::{Duration, Instant};

/// After a stall, how far behind schedule the rate limiter lets the producer be,
/// and so the largest burst it sends to catch up.
const MAX_CATCH_UP: Duration = Duration::from_millis(50);

/// Paces messages to a rate in spans per second. Each message is due when the
/// spans before it would have gone out at an even rate, so the rate holds over
/// any stretch of time rather than per second; after a stall it catches up by
/// at most [`MAX_CATCH_UP`] worth of spans.
#[derive(Debug)]
pub(super) struct Pacer {
    /// `None`: no limit.
    per_span: Option<Duration>,
    due: Instant,
}

impl Pacer {
    pub(super) fn new(rate: f64, start: Instant) -> Pacer {
        let per_span = (rate > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / rate).ok())
            .flatten();
        Pacer {
            per_span,
            due: start,
        }
    }

    /// Books a message of `spans` spans; returns when to send it, `None` for now.
    pub(super) fn reserve(&mut self, now: Instant, spans: usize) -> Option<Instant> {
        let per_span = self.per_span?;
        let earliest = now.checked_sub(MAX_CATCH_UP).unwrap_or(now);
        let at = self.due.max(earliest);
        let cost = per_span.saturating_mul(u32::try_from(spans).unwrap_or(u32::MAX));
        // A due time past what Instant can hold is as good as never.
        self.due = at.checked_add(cost).unwrap_or(at);
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_messages_evenly() {
        let t0 = Instant::now();
        // 1000 spans/s, 10 spans a message: one message every 10 ms.
        let mut p = Pacer::new(1000.0, t0);
        assert_eq!(p.reserve(t0, 10), None);
        assert_eq!(p.reserve(t0, 10), Some(t0 + Duration::from_millis(10)));
        assert_eq!(p.reserve(t0, 10), Some(t0 + Duration::from_millis(20)));
        // On time: no wait, and the next slot follows this one.
        let t30 = t0 + Duration::from_millis(30);
        assert_eq!(p.reserve(t30, 10), None);
        assert_eq!(p.reserve(t30, 10), Some(t0 + Duration::from_millis(40)));
    }

    #[test]
    fn pacer_catches_up_at_most_a_short_burst_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000.0, t0);
        p.reserve(t0, 10);
        let late = t0 + Duration::from_secs(5);
        let mut immediate = 0;
        while p.reserve(late, 10).is_none() {
            immediate += 1;
        }
        // 50 ms of catch-up at 10 ms a message, plus the one due now.
        assert_eq!(immediate, 6);
    }

    #[test]
    fn no_rate_means_no_waiting() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.0, t0);
        assert!((0..1000).all(|_| p.reserve(t0, 1000).is_none()));
    }
}
