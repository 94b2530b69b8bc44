//! Time as Kafka counts it: milliseconds since the Unix epoch. Timestamps come
//! from producers and can be anything an `i64` holds, so every difference
//! saturates instead of overflowing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch; negative before it, saturating far from it.
pub fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Now, in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

/// Seconds from `then_ms` to `now_ms`, never negative: a timestamp in the
/// future (a producer's clock ahead of ours) is no age at all.
pub fn age_seconds(now_ms: i64, then_ms: i64) -> f64 {
    now_ms.saturating_sub(then_ms).max(0) as f64 / 1000.0
}

/// The instant `ms` milliseconds after the epoch; `None` before the epoch.
pub fn from_unix_millis(ms: i64) -> Option<SystemTime> {
    u64::try_from(ms)
        .ok()
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_timestamps_saturate() {
        assert_eq!(age_seconds(1_000, i64::MIN), i64::MAX as f64 / 1000.0);
        assert_eq!(age_seconds(1_000, -1), 1.001);
        assert_eq!(age_seconds(1_000, i64::MAX), 0.0);
        assert_eq!(age_seconds(i64::MIN, i64::MAX), 0.0);
        assert_eq!(unix_millis(UNIX_EPOCH), 0);
        assert_eq!(unix_millis(UNIX_EPOCH - Duration::from_millis(5)), -5);
        assert_eq!(from_unix_millis(-1), None);
        assert_eq!(
            from_unix_millis(5),
            Some(UNIX_EPOCH + Duration::from_millis(5))
        );
    }
}
