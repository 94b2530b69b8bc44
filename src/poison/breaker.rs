//! The poison-rate circuit breaker.
//!
//! When more than a configured share of recent messages is poison, the cause is
//! systemic (a wrong encoding, a bad deploy), and dead-lettering the whole
//! stream would only move the problem into the DLQ. The breaker opens instead:
//! the topic's partitions pause, the instance goes unready, and the log says
//! why. After a cool-down it goes half-open and lets one probe batch through; a
//! clean probe closes it, a poisoned one opens it again. An operator can close
//! it by hand (`POST /breaker/close`).
//!
//! Scope: one breaker per topic in each instance, over a sliding window of the
//! most recent messages.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics as m;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Poison share above which the breaker opens (0.0..=1.0).
    pub threshold: f64,
    /// Messages in the sliding window.
    pub window: usize,
    /// The breaker never opens on fewer messages than this.
    pub min_messages: usize,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { since: Instant },
    HalfOpen { probing: bool },
}

impl State {
    fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen { .. } => 1.0,
            State::Open { .. } => 2.0,
        }
    }
}

/// What a worker may do with a batch that holds `poison` of `total` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead: dead-letter the poison, commit the rest.
    Proceed,
    /// Do not dead-letter anything; pause and ask again after this long.
    Wait(Duration),
}

struct TopicBreaker {
    state: State,
    /// true = poison, most recent last.
    recent: VecDeque<bool>,
    poison_in_window: usize,
}

pub struct Breakers {
    config: BreakerConfig,
    topics: Mutex<HashMap<String, TopicBreaker>>,
}

/// How often a waiting worker looks again while another one probes.
const PROBE_POLL: Duration = Duration::from_millis(200);

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// Asks before a batch is dead-lettered or committed. `poison` is what is
    /// already known to be poison (decode and validation failures).
    pub fn check(&self, topic: &str, poison: usize, total: usize) -> Verdict {
        let cfg = self.config;
        let mut topics = self.lock();
        let b = topics
            .entry(topic.to_string())
            .or_insert_with(TopicBreaker::new);
        match b.state {
            State::Open { since } => {
                let elapsed = since.elapsed();
                if elapsed < cfg.cooldown {
                    return Verdict::Wait(cfg.cooldown - elapsed);
                }
                tracing::info!(
                    topic,
                    "circuit breaker half-open: letting one probe batch through"
                );
                b.set_state(topic, State::HalfOpen { probing: true });
                self.probe(topic, b, poison)
            }
            State::HalfOpen { probing: true } => Verdict::Wait(PROBE_POLL),
            State::HalfOpen { probing: false } => {
                b.set_state(topic, State::HalfOpen { probing: true });
                self.probe(topic, b, poison)
            }
            State::Closed => {
                let (p, n) = b.share_with(poison, total, cfg.window);
                if n >= cfg.min_messages && poison > 0 && (p as f64) > cfg.threshold * n as f64 {
                    tracing::error!(topic, poison = p, messages = n, threshold = cfg.threshold,
                        "circuit breaker open: most recent messages are poison, which looks systemic \
                         (a wrong encoding? a bad deploy?); pausing instead of dead-lettering the stream");
                    metrics::counter!(m::BREAKER_TRIPS, "topic" => topic.to_string()).increment(1);
                    b.set_state(
                        topic,
                        State::Open {
                            since: Instant::now(),
                        },
                    );
                    return Verdict::Wait(cfg.cooldown);
                }
                Verdict::Proceed
            }
        }
    }

    fn probe(&self, topic: &str, b: &mut TopicBreaker, poison: usize) -> Verdict {
        if poison > 0 {
            tracing::warn!(
                topic,
                poison,
                "circuit breaker probe held poison: open again"
            );
            b.set_state(
                topic,
                State::Open {
                    since: Instant::now(),
                },
            );
            return Verdict::Wait(self.config.cooldown);
        }
        Verdict::Proceed
    }

    /// Records a processed batch: `poison` of `total` messages were dead-lettered.
    pub fn record(&self, topic: &str, poison: usize, total: usize) {
        let window = self.config.window;
        let mut topics = self.lock();
        let b = topics
            .entry(topic.to_string())
            .or_insert_with(TopicBreaker::new);
        if let State::HalfOpen { probing: true } = b.state {
            if poison == 0 {
                tracing::info!(topic, "circuit breaker closed: the probe batch was clean");
                b.recent.clear();
                b.poison_in_window = 0;
                b.set_state(topic, State::Closed);
            } else {
                b.set_state(
                    topic,
                    State::Open {
                        since: Instant::now(),
                    },
                );
                return;
            }
        }
        b.push(poison, total, window);
    }

    /// A worker gave up its probe without finishing it (stop, fence, retry).
    pub fn abandon_probe(&self, topic: &str) {
        let mut topics = self.lock();
        if let Some(b) = topics.get_mut(topic) {
            if let State::HalfOpen { probing: true } = b.state {
                b.set_state(topic, State::HalfOpen { probing: false });
            }
        }
    }

    /// The operator's override: close every breaker and forget the window.
    pub fn close_all(&self) -> usize {
        let mut topics = self.lock();
        let mut closed = 0;
        for (topic, b) in topics.iter_mut() {
            if b.state != State::Closed {
                closed += 1;
                tracing::warn!(topic, "circuit breaker closed by the operator");
            }
            b.recent.clear();
            b.poison_in_window = 0;
            b.set_state(topic, State::Closed);
        }
        closed
    }

    /// Topics whose breaker is not closed, for readiness.
    pub fn open_topics(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, b)| !matches!(b.state, State::Closed))
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub fn state(&self, topic: &str) -> State {
        self.lock().get(topic).map_or(State::Closed, |b| b.state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopicBreaker>> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl TopicBreaker {
    fn new() -> Self {
        TopicBreaker {
            state: State::Closed,
            recent: VecDeque::new(),
            poison_in_window: 0,
        }
    }

    fn set_state(&mut self, topic: &str, state: State) {
        self.state = state;
        metrics::gauge!(m::BREAKER_STATE, "topic" => topic.to_string()).set(state.gauge());
    }

    /// The window's poison count and size if a batch of `total` with `poison` were added.
    fn share_with(&self, poison: usize, total: usize, window: usize) -> (usize, usize) {
        let total = total.min(window);
        let poison = poison.min(total);
        let keep = window - total;
        let dropped = self.recent.len().saturating_sub(keep);
        let dropped_poison = self.recent.iter().take(dropped).filter(|p| **p).count();
        let n = self.recent.len() - dropped + total;
        (self.poison_in_window - dropped_poison + poison, n)
    }

    fn push(&mut self, poison: usize, total: usize, window: usize) {
        let good = total.saturating_sub(poison);
        let outcomes = std::iter::repeat_n(false, good).chain(std::iter::repeat_n(true, poison));
        for p in outcomes {
            self.recent.push_back(p);
            self.poison_in_window += usize::from(p);
            if self.recent.len() > window {
                if let Some(old) = self.recent.pop_front() {
                    self.poison_in_window -= usize::from(old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(cooldown: Duration) -> Breakers {
        Breakers::new(BreakerConfig {
            threshold: 0.5,
            window: 100,
            min_messages: 10,
            cooldown,
        })
    }

    #[test]
    fn a_poisoned_stream_opens_it_before_anything_is_dead_lettered() {
        let b = breakers(Duration::from_secs(60));
        assert_eq!(b.check("t", 50, 50), Verdict::Wait(Duration::from_secs(60)));
        assert!(matches!(b.state("t"), State::Open { .. }));
        assert_eq!(b.open_topics(), vec!["t".to_string()]);
    }

    #[test]
    fn occasional_poison_passes() {
        let b = breakers(Duration::from_secs(60));
        for _ in 0..20 {
            assert_eq!(b.check("t", 1, 10), Verdict::Proceed);
            b.record("t", 1, 10);
        }
        assert_eq!(b.state("t"), State::Closed);
        // Too few messages to judge: proceed even if all are poison.
        assert_eq!(
            breakers(Duration::from_secs(1)).check("u", 3, 3),
            Verdict::Proceed
        );
    }

    #[test]
    fn the_window_slides() {
        let b = breakers(Duration::from_secs(60));
        b.record("t", 60, 60);
        b.record("t", 0, 100); // pushes every poison message out of the window
        assert_eq!(b.check("t", 10, 20), Verdict::Proceed);
    }

    #[test]
    fn half_open_probe_closes_or_reopens() {
        let b = breakers(Duration::ZERO);
        assert!(matches!(b.check("t", 20, 20), Verdict::Wait(_)));
        // Cool-down over: one probe goes, a second worker waits.
        assert_eq!(b.check("t", 0, 5), Verdict::Proceed);
        assert_eq!(b.check("t", 0, 5), Verdict::Wait(PROBE_POLL));
        b.record("t", 0, 5);
        assert_eq!(b.state("t"), State::Closed);
        // A poisoned probe opens it again.
        assert!(matches!(b.check("t", 20, 20), Verdict::Wait(_)));
        assert!(matches!(b.check("t", 3, 5), Verdict::Wait(_)));
        assert!(matches!(b.state("t"), State::Open { .. }));
    }

    #[test]
    fn the_operator_closes_it() {
        let b = breakers(Duration::from_secs(3600));
        assert!(matches!(b.check("t", 20, 20), Verdict::Wait(_)));
        assert_eq!(b.close_all(), 1);
        assert_eq!(b.state("t"), State::Closed);
        assert!(b.open_topics().is_empty());
    }
}
