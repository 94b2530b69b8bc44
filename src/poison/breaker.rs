//! The poison-rate circuit breaker.
//!
//! When a large share of recent messages is poison, the cause is systemic (a
//! wrong encoding, a bad deploy), and dead-lettering the whole stream would only
//! move the problem into the DLQ. The breaker opens instead: the topic's
//! partitions pause, the instance goes unready, and the log says why. After a
//! cool-down it goes half-open and lets one probe batch through; a clean probe
//! closes it, a poisoned one opens it again. An operator can close it by hand
//! (`POST /breaker/close`).
//!
//! Every verdict counts, whatever found it: decode, validation, PostgreSQL,
//! the crash guard. The poison path asks [`Breakers::poison`] before it
//! dead-letters each message, so once the breaker opens nothing more is
//! dead-lettered, even in the middle of a batch. It opens when more than the
//! threshold of the most recent `min_messages` verdicts are poison, or of the
//! most recent `window`: the first rule bounds how many dead letters a sudden
//! systemic failure costs (at most `min_messages`, whatever came before), the
//! second catches a steady high rate.
//!
//! Scope: one breaker per topic in each instance.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics as m;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Poison share above which the breaker opens (0.0..=1.0).
    pub threshold: f64,
    /// Messages in the long sliding window.
    pub window: usize,
    /// The short window, and the fewest verdicts the breaker opens on.
    pub min_messages: usize,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        since: Instant,
    },
    /// `probe`: the id of the probe batch under way, if any.
    HalfOpen {
        probe: Option<u64>,
    },
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

/// Whether a worker may take its next batch.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; with a probe while the breaker is half-open.
    Proceed(Option<Probe>),
    /// Dead-letter nothing: keep the partition paused and ask again after this long.
    Wait(Duration),
}

/// The half-open breaker's one probe batch. Only the batch holding it closes
/// or reopens the breaker; dropping it (the batch was stopped, fenced or
/// aborted) lets another batch probe.
#[derive(Debug)]
pub struct Probe {
    breakers: Arc<Breakers>,
    topic: String,
    id: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut topics = self.breakers.lock();
        if let Some(b) = topics.get_mut(&self.topic) {
            if b.state
                == (State::HalfOpen {
                    probe: Some(self.id),
                })
            {
                b.set_state(&self.topic, State::HalfOpen { probe: None });
            }
        }
    }
}

#[derive(Debug)]
struct TopicBreaker {
    state: State,
    /// true = poison, most recent last; at most `window` long.
    recent: VecDeque<bool>,
    poison_in_window: usize,
    /// Poison among the last `min_messages` verdicts.
    poison_in_tail: usize,
}

#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    topics: Mutex<HashMap<String, TopicBreaker>>,
    probes: AtomicU64,
}

/// How often a waiting worker looks again while another one probes.
const PROBE_POLL: Duration = Duration::from_millis(200);

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            topics: Mutex::new(HashMap::new()),
            probes: AtomicU64::new(0),
        }
    }

    /// Asked before each batch.
    pub fn admit(self: &Arc<Self>, topic: &str) -> Admission {
        let cooldown = self.config.cooldown;
        let mut topics = self.lock();
        let b = topics
            .entry(topic.to_string())
            .or_insert_with(TopicBreaker::new);
        match b.state {
            State::Closed => Admission::Proceed(None),
            State::Open { since } if since.elapsed() < cooldown => {
                Admission::Wait(cooldown - since.elapsed())
            }
            State::HalfOpen { probe: Some(_) } => Admission::Wait(PROBE_POLL),
            State::Open { .. } | State::HalfOpen { probe: None } => {
                let id = self.probes.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    topic,
                    "circuit breaker half-open: letting one probe batch through"
                );
                b.set_state(topic, State::HalfOpen { probe: Some(id) });
                Admission::Proceed(Some(Probe {
                    breakers: Arc::clone(self),
                    topic: topic.to_string(),
                    id,
                }))
            }
        }
    }

    /// One message was judged poison. True: dead-letter it. False: the breaker
    /// is open (or opens now), and nothing may be dead-lettered.
    pub fn poison(&self, topic: &str, probe: Option<&Probe>) -> bool {
        let cfg = self.config;
        let mut topics = self.lock();
        let b = topics
            .entry(topic.to_string())
            .or_insert_with(TopicBreaker::new);
        match b.state {
            State::Closed => {
                b.push(true, &cfg);
                let Some((poison, messages)) = b.tripped(&cfg) else {
                    return true;
                };
                tracing::error!(topic, poison, messages, threshold = cfg.threshold,
                    "circuit breaker open: most recent messages are poison, which looks systemic \
                     (a wrong encoding? a bad deploy?); pausing instead of dead-lettering the stream");
                metrics::counter!(m::BREAKER_TRIPS, "topic" => topic.to_string()).increment(1);
                b.set_state(
                    topic,
                    State::Open {
                        since: Instant::now(),
                    },
                );
                false
            }
            State::HalfOpen { probe: Some(id) } if probe.is_some_and(|p| p.id == id) => {
                tracing::warn!(topic, "circuit breaker probe held poison: open again");
                b.set_state(
                    topic,
                    State::Open {
                        since: Instant::now(),
                    },
                );
                false
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    /// `messages` were committed as good.
    pub fn good(&self, topic: &str, messages: usize, probe: Option<&Probe>) {
        let cfg = self.config;
        let mut topics = self.lock();
        let b = topics
            .entry(topic.to_string())
            .or_insert_with(TopicBreaker::new);
        if let State::HalfOpen { probe: Some(id) } = b.state {
            if probe.is_some_and(|p| p.id == id) {
                tracing::info!(topic, "circuit breaker closed: the probe batch was clean");
                b.forget();
                b.set_state(topic, State::Closed);
            }
        }
        for _ in 0..messages.min(cfg.window) {
            b.push(false, &cfg);
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
            b.forget();
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
            poison_in_tail: 0,
        }
    }

    fn set_state(&mut self, topic: &str, state: State) {
        self.state = state;
        metrics::gauge!(m::BREAKER_STATE, "topic" => topic.to_string()).set(state.gauge());
    }

    fn forget(&mut self) {
        self.recent.clear();
        self.poison_in_window = 0;
        self.poison_in_tail = 0;
    }

    fn push(&mut self, poison: bool, cfg: &BreakerConfig) {
        self.recent.push_back(poison);
        self.poison_in_window += usize::from(poison);
        self.poison_in_tail += usize::from(poison);
        let len = self.recent.len();
        if len > cfg.min_messages {
            if let Some(left) = self.recent.get(len - 1 - cfg.min_messages) {
                self.poison_in_tail -= usize::from(*left);
            }
        }
        if len > cfg.window {
            if let Some(old) = self.recent.pop_front() {
                self.poison_in_window -= usize::from(old);
            }
        }
    }

    /// `(poison, messages)` of the window that is over the threshold, if one is.
    fn tripped(&self, cfg: &BreakerConfig) -> Option<(usize, usize)> {
        let n = self.recent.len();
        if n < cfg.min_messages.max(1) {
            return None;
        }
        let over = |poison: usize, of: usize| poison as f64 > cfg.threshold * of as f64;
        if over(self.poison_in_tail, cfg.min_messages.max(1)) {
            Some((self.poison_in_tail, cfg.min_messages))
        } else if over(self.poison_in_window, n) {
            Some((self.poison_in_window, n))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(cooldown: Duration) -> Arc<Breakers> {
        Arc::new(Breakers::new(BreakerConfig {
            threshold: 0.5,
            window: 100,
            min_messages: 10,
            cooldown,
        }))
    }

    fn proceed(b: &Arc<Breakers>, topic: &str) -> Option<Probe> {
        match b.admit(topic) {
            Admission::Proceed(probe) => probe,
            Admission::Wait(d) => panic!("expected to proceed, told to wait {d:?}"),
        }
    }

    #[test]
    fn a_poisoned_stream_opens_it_after_at_most_min_messages_verdicts() {
        let b = breakers(Duration::from_secs(60));
        let allowed = (0..50).take_while(|_| b.poison("t", None)).count();
        assert_eq!(allowed, 9, "the tenth poison verdict opens it");
        assert!(matches!(b.state("t"), State::Open { .. }));
        assert!(matches!(b.admit("t"), Admission::Wait(_)));
        assert_eq!(b.open_topics(), vec!["t".to_string()]);
    }

    #[test]
    fn a_long_good_history_does_not_delay_tripping() {
        let b = breakers(Duration::from_secs(60));
        b.good("t", 1000, None);
        let allowed = (0..100).take_while(|_| b.poison("t", None)).count();
        assert!(allowed <= 10, "{allowed} dead letters before opening");
    }

    #[test]
    fn occasional_poison_passes() {
        let b = breakers(Duration::from_secs(60));
        for _ in 0..50 {
            assert!(b.poison("t", None));
            b.good("t", 9, None);
        }
        assert_eq!(b.state("t"), State::Closed);
        // Too few verdicts to judge.
        let fresh = breakers(Duration::from_secs(60));
        assert!((0..9).all(|_| fresh.poison("u", None)));
    }

    #[test]
    fn half_open_lets_one_probe_through_and_only_it_decides() {
        let b = breakers(Duration::ZERO);
        while b.poison("t", None) {}
        let probe = proceed(&b, "t").expect("a probe");
        assert!(matches!(b.admit("t"), Admission::Wait(PROBE_POLL)));
        // A batch that is not the probe neither closes nor reopens it.
        b.good("t", 5, None);
        assert!(!b.poison("t", None));
        assert!(matches!(b.state("t"), State::HalfOpen { .. }));
        b.good("t", 5, Some(&probe));
        assert_eq!(b.state("t"), State::Closed);
        drop(probe);
        assert_eq!(b.state("t"), State::Closed);
    }

    #[test]
    fn a_poisoned_probe_reopens_it() {
        let b = breakers(Duration::ZERO);
        while b.poison("t", None) {}
        let probe = proceed(&b, "t").expect("a probe");
        assert!(!b.poison("t", Some(&probe)));
        assert!(matches!(b.state("t"), State::Open { .. }));
    }

    #[test]
    fn an_abandoned_probe_lets_another_batch_probe() {
        let b = breakers(Duration::ZERO);
        while b.poison("t", None) {}
        let probe = proceed(&b, "t").expect("a probe");
        drop(probe);
        assert_eq!(b.state("t"), State::HalfOpen { probe: None });
        assert!(proceed(&b, "t").is_some());
    }

    #[test]
    fn the_operator_closes_it() {
        let b = breakers(Duration::from_secs(3600));
        while b.poison("t", None) {}
        assert_eq!(b.close_all(), 1);
        assert_eq!(b.state("t"), State::Closed);
        assert!(b.open_topics().is_empty());
        assert!(b.poison("t", None), "the window was forgotten");
    }
}
