//! The poison-rate circuit breaker.
//!
//! When a large share of recent messages is poison, the cause is systemic (a
//! wrong encoding, a bad deploy), and dead-lettering the whole stream would only
//! move the problem into the DLQ. The breaker opens instead: the partitions
//! pause, the instance goes unready, and the log says why. But it never stalls
//! what it cannot fix:
//!
//! - Every verdict counts, whatever found it: decode, validation, PostgreSQL,
//!   the crash guard. The poison path asks [`Breakers::poison`] before it
//!   dead-letters each message, so once the breaker opens nothing more is
//!   dead-lettered, even in the middle of a batch.
//! - It looks at the topic's verdicts in this instance: more than the threshold
//!   of the most recent `min_messages` verdicts poison, or of the most recent
//!   `window`. The first rule bounds what a sudden systemic failure costs (at
//!   most `min_messages` dead letters, whatever came before); the second
//!   catches a steady high rate.
//! - Poison confined to one tenant, while other tenants' messages are stored,
//!   is that tenant's producer's problem, not a systemic one: it is
//!   dead-lettered and nothing pauses. Poison confined to one partition,
//!   while other partitions are stored, opens that partition's breaker only.
//!   Anything else opens the topic's.
//! - After the cool-down an open breaker goes half-open and lets one message
//!   through as its probe: a good one closes it, a poisoned one opens it again.
//!   Only the probe decides; a probe that is dropped (stopped, fenced, aborted)
//!   lets another message probe.
//! - An operator's close ([`Breakers::close_all`]) holds the breakers closed
//!   for a while or for a number of dead letters, so that a flood the operator
//!   has accepted drains to the DLQ without reopening them. A held breaker
//!   shows in `spansink_circuit_breaker_held`.

mod window;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metric;

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
    /// `probe`: the id of the probe under way, if any.
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
    /// Go ahead; with a probe (a batch of one message) while half-open.
    Proceed(Option<Probe>),
    /// Dead-letter nothing: keep the partition paused and ask again after this long.
    Wait(Duration),
}

/// How long an operator's close holds: until `until`, or until `messages`
/// more dead letters, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub until: Instant,
    pub messages: Option<u64>,
}

/// The half-open breaker's probe. Only the batch holding it closes or
/// reopens the breaker; dropping it lets another batch probe.
#[derive(Debug)]
pub struct Probe {
    breakers: Arc<Breakers>,
    scope: Scope,
    id: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut inner = self.breakers.lock();
        if let Some(b) = inner
            .topics
            .get_mut(&self.scope.topic)
            .and_then(|t| t.breaker_mut(self.scope.partition))
        {
            if b.state
                == (State::HalfOpen {
                    probe: Some(self.id),
                })
            {
                b.state = State::HalfOpen { probe: None };
            }
        }
        inner.publish(&self.scope.topic);
    }
}

/// A topic, or one partition of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    topic: String,
    partition: Option<i32>,
}

/// One verdict in a topic's window.
#[derive(Debug, Clone)]
struct Verdict {
    poison: bool,
    partition: i32,
    tenant: Arc<str>,
}

#[derive(Debug)]
struct Breaker {
    state: State,
}

#[derive(Debug)]
struct TopicBreakers {
    topic: Breaker,
    partitions: HashMap<i32, Breaker>,
    /// Most recent last; at most `window` long.
    recent: VecDeque<Verdict>,
    poison_in_window: usize,
    /// Poison among the last `min_messages` verdicts.
    poison_in_tail: usize,
    held: Option<Hold>,
    /// When the confinement to one tenant was last logged.
    confined_logged: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    topics: HashMap<String, TopicBreakers>,
}

#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    probes: AtomicU64,
}

/// How often a waiting worker looks again while another one probes.
const PROBE_POLL: Duration = Duration::from_millis(200);
/// How often "poison confined to one tenant" is logged per topic.
const CONFINED_LOG_EVERY: Duration = Duration::from_secs(60);

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            inner: Mutex::new(Inner::default()),
            probes: AtomicU64::new(0),
        }
    }

    /// Asked before each batch of a partition.
    pub fn admit(self: &Arc<Self>, topic: &str, partition: i32) -> Admission {
        let cooldown = self.config.cooldown;
        let mut inner = self.lock();
        let t = inner.topic(topic);
        // The topic's breaker first: a systemic failure stops every partition.
        let mut probing = None;
        for scope in [None, Some(partition)] {
            let Some(b) = t.breaker_mut(scope) else {
                continue;
            };
            match b.state {
                State::Closed => continue,
                State::Open { since } if since.elapsed() < cooldown => {
                    return Admission::Wait(cooldown - since.elapsed())
                }
                State::HalfOpen { probe: Some(_) } => return Admission::Wait(PROBE_POLL),
                State::Open { .. } | State::HalfOpen { probe: None } => {
                    let id = self.probes.fetch_add(1, Ordering::Relaxed) + 1;
                    b.state = State::HalfOpen { probe: Some(id) };
                    probing = Some((scope, id));
                    break;
                }
            }
        }
        let Some((scope, id)) = probing else {
            return Admission::Proceed(None);
        };
        tracing::info!(
            topic,
            partition = ?scope,
            "circuit breaker half-open: letting one probe message through"
        );
        inner.publish(topic);
        Admission::Proceed(Some(Probe {
            breakers: Arc::clone(self),
            scope: Scope {
                topic: topic.to_string(),
                partition: scope,
            },
            id,
        }))
    }

    /// One message of `tenant` on `partition` was judged poison. True:
    /// dead-letter it. False: a breaker is open (or opens now), and nothing
    /// may be dead-lettered.
    pub fn poison(&self, topic: &str, partition: i32, tenant: &str, probe: Option<&Probe>) -> bool {
        let cfg = self.config;
        let mut inner = self.lock();
        let allowed = inner
            .topic(topic)
            .judge_poison(topic, partition, tenant, probe, &cfg);
        inner.publish(topic);
        allowed
    }

    /// Messages of `tenants` (one entry per message) on `partition` were
    /// committed as good.
    pub fn good<'t>(
        &self,
        topic: &str,
        partition: i32,
        tenants: impl Iterator<Item = &'t str>,
        probe: Option<&Probe>,
    ) {
        let cfg = self.config;
        let mut inner = self.lock();
        let t = inner.topic(topic);
        if let Some(p) = probe {
            if let Some(b) = t.breaker_mut(p.scope.partition) {
                if b.state == (State::HalfOpen { probe: Some(p.id) }) {
                    tracing::info!(
                        topic,
                        partition,
                        "circuit breaker closed: the probe was clean"
                    );
                    b.state = State::Closed;
                    t.forget();
                }
            }
        }
        for tenant in tenants.take(cfg.window) {
            t.push(
                Verdict {
                    poison: false,
                    partition,
                    tenant: Arc::from(tenant),
                },
                &cfg,
            );
        }
        inner.publish(topic);
    }

    /// The operator's override: close every breaker, forget the windows, and
    /// hold them closed as `hold` says. Returns how many were not closed.
    pub fn close_all(&self, hold: Hold) -> usize {
        let mut inner = self.lock();
        let mut closed = 0;
        let topics: Vec<String> = inner.topics.keys().cloned().collect();
        for topic in topics {
            let t = inner.topic(&topic);
            for b in std::iter::once(&mut t.topic).chain(t.partitions.values_mut()) {
                if b.state != State::Closed {
                    closed += 1;
                }
                b.state = State::Closed;
            }
            t.forget();
            t.held = Some(hold);
            tracing::warn!(topic, until = ?hold.until, messages = ?hold.messages,
                "circuit breaker closed by the operator and held closed");
            inner.publish(&topic);
        }
        closed
    }

    /// Topics with a breaker (of the topic or of a partition) not closed, for readiness.
    pub fn open_topics(&self) -> Vec<String> {
        self.lock()
            .topics
            .iter()
            .filter(|(_, t)| t.any_open())
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// The topic-wide breaker's state.
    pub fn state(&self, topic: &str) -> State {
        self.lock()
            .topics
            .get(topic)
            .map_or(State::Closed, |t| t.topic.state)
    }

    /// One partition's own breaker's state.
    pub fn partition_state(&self, topic: &str, partition: i32) -> State {
        self.lock()
            .topics
            .get(topic)
            .and_then(|t| t.partitions.get(&partition))
            .map_or(State::Closed, |b| b.state)
    }

    /// Refreshes the gauges, which a hold's end changes with time alone.
    pub fn record_metrics(&self) {
        let mut inner = self.lock();
        let topics: Vec<String> = inner.topics.keys().cloned().collect();
        for topic in topics {
            inner.publish(&topic);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the map consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn topic(&mut self, topic: &str) -> &mut TopicBreakers {
        self.topics
            .entry(topic.to_string())
            .or_insert_with(TopicBreakers::new)
    }

    fn publish(&mut self, topic: &str) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let worst = std::iter::once(&t.topic)
            .chain(t.partitions.values())
            .map(|b| b.state.gauge())
            .fold(0.0, f64::max);
        let open_partitions = t
            .partitions
            .values()
            .filter(|b| b.state != State::Closed)
            .count();
        let held = t.holding();
        metrics::gauge!(metric::BREAKER_STATE, "topic" => topic.to_string()).set(worst);
        metrics::gauge!(metric::BREAKER_OPEN_PARTITIONS, "topic" => topic.to_string())
            .set(open_partitions as f64);
        metrics::gauge!(metric::BREAKER_HELD, "topic" => topic.to_string()).set(if held {
            1.0
        } else {
            0.0
        });
    }
}

#[cfg(test)]
mod tests;
