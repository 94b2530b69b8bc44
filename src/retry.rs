//! The one way spansink waits out a transient failure.
//!
//! A transient failure never moves a partition and never exits the process:
//! [`until_ok`] counts it, logs it and tries again after a jittered,
//! exponentially growing delay, for as long as it takes, unless `stop` fires.
//! Poison and fatal failures are returned at once: what they mean is the
//! caller's decision.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::error::{Class, Error, Result};
use crate::metric;

/// The delays between tries: from `initial`, doubling, never above `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub initial: Duration,
    pub max: Duration,
}

impl Policy {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Policy { initial, max }
    }

    pub fn backoff(self) -> Backoff {
        Backoff::new(self.initial, self.max)
    }
}

/// Runs `op` until it succeeds or fails with anything but a transient error.
/// `op` gets the number of earlier tries, so that a retry can first find out
/// what the failed try left behind. `stop` is honoured between tries, never
/// during one: a try is a unit the caller chose. Returns `Error::Shutdown`
/// when `stop` fires while waiting.
pub async fn until_ok<T, F, Fut>(
    what: &'static str,
    stop: &CancellationToken,
    policy: Policy,
    mut op: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = policy.backoff();
    let mut tries = 0u32;
    loop {
        match op(tries).await {
            Err(e) if e.class() == Class::Transient && !matches!(e, Error::Shutdown) => {
                metrics::counter!(metric::TRANSIENT_RETRIES, "kind" => e.transient_kind())
                    .increment(1);
                // Every partition may be waiting on the same outage: sample the log.
                if let Some(held_back) = crate::logcap::allow(what) {
                    tracing::warn!(error = %e, what, tries = tries + 1, held_back, "transient failure; backing off and retrying");
                }
                backoff.wait(stop).await?;
                tries = tries.saturating_add(1);
            }
            other => return other,
        }
    }
}

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
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const FAST: Policy = Policy::new(Duration::from_millis(1), Duration::from_millis(2));

    fn transient() -> Error {
        Error::io("test", std::io::Error::other("disk full"))
    }

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

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_operation_succeeds() {
        let stop = CancellationToken::new();
        let got = until_ok("test", &stop, FAST, |tries| async move {
            if tries < 3 {
                Err(transient())
            } else {
                Ok(tries)
            }
        })
        .await;
        assert_eq!(got.ok(), Some(3));
    }

    #[tokio::test]
    async fn poison_and_fatal_failures_return_at_once() {
        let stop = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let poison = until_ok("test", &stop, FAST, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>(Error::input(crate::error::Reason::BadJson, "x")) }
        })
        .await;
        assert!(matches!(poison, Err(Error::Input { .. })));
        let fatal = until_ok("test", &stop, FAST, |_| {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>(Error::Internal("broken".into())) }
        })
        .await;
        assert!(matches!(fatal, Err(Error::Internal(_))));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn stop_ends_the_wait_with_shutdown() {
        let stop = CancellationToken::new();
        let slow = Policy::new(Duration::from_secs(60), Duration::from_secs(60));
        let stopper = stop.clone();
        let got = until_ok("test", &stop, slow, |_| {
            stopper.cancel();
            async { Err::<(), _>(transient()) }
        })
        .await;
        assert!(matches!(got, Err(Error::Shutdown)));
    }
}
