//! Jittered exponential backoff for transient failures.
//!
//! A transient failure never moves a partition and never exits the process: the
//! caller waits here and tries again, for as long as it takes, unless shutdown
//! or a revocation asks it to stop.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// An endless sequence of jittered, exponentially growing delays.
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let delays = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff { delays, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        // Jitter adds up to one more delay on top; keep the cap the operator set.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Sleeps for the next delay; returns `Err(Error::Shutdown)` if `stop` fires first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> Result<()> {
        let delay = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => Err(Error::Shutdown),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let delays: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(200)));
        assert!(delays[15] >= Duration::from_millis(100), "{delays:?}");
    }

    #[tokio::test]
    async fn wait_returns_early_on_stop() {
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(matches!(b.wait(&stop).await, Err(Error::Shutdown)));
    }
}
