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

/// Where the recent poison comes from.
#[derive(Debug, PartialEq, Eq)]
enum Confinement {
    /// One tenant, while others are stored.
    Tenant(Arc<str>),
    /// One partition, while others are stored.
    Partition(i32),
    None,
}

impl TopicBreakers {
    fn new() -> Self {
        TopicBreakers {
            topic: Breaker {
                state: State::Closed,
            },
            partitions: HashMap::new(),
            recent: VecDeque::new(),
            poison_in_window: 0,
            poison_in_tail: 0,
            held: None,
            confined_logged: None,
        }
    }

    fn breaker_mut(&mut self, partition: Option<i32>) -> Option<&mut Breaker> {
        match partition {
            None => Some(&mut self.topic),
            Some(p) => self.partitions.get_mut(&p),
        }
    }

    /// Whether neither the topic's breaker nor the partition's is open.
    fn closed_for(&self, partition: i32) -> bool {
        self.topic.state == State::Closed
            && self
                .partitions
                .get(&partition)
                .is_none_or(|b| b.state == State::Closed)
    }

    fn any_open(&self) -> bool {
        self.topic.state != State::Closed
            || self.partitions.values().any(|b| b.state != State::Closed)
    }

    /// The rules for one poison verdict; see [`Breakers::poison`].
    fn judge_poison(
        &mut self,
        topic: &str,
        partition: i32,
        tenant: &str,
        probe: Option<&Probe>,
        cfg: &BreakerConfig,
    ) -> bool {
        self.push(
            Verdict {
                poison: true,
                partition,
                tenant: Arc::from(tenant),
            },
            cfg,
        );
        // A probe that held poison: only its own breaker reopens.
        if let Some(p) = probe {
            if let Some(b) = self.breaker_mut(p.scope.partition) {
                if b.state == (State::HalfOpen { probe: Some(p.id) }) {
                    tracing::warn!(
                        topic,
                        partition,
                        "circuit breaker probe held poison: open again"
                    );
                    b.state = State::Open {
                        since: Instant::now(),
                    };
                    return false;
                }
            }
        }
        if !self.closed_for(partition) {
            return false;
        }
        if self.holding() {
            return true;
        }
        let Some((poison, messages)) = self.tripped(cfg) else {
            return true;
        };
        let opened = match self.confinement(cfg) {
            Confinement::Tenant(tenant) => {
                if self
                    .confined_logged
                    .is_none_or(|at| at.elapsed() >= CONFINED_LOG_EVERY)
                {
                    self.confined_logged = Some(Instant::now());
                    tracing::warn!(topic, tenant = %tenant, poison, messages,
                        "poison confined to one tenant while others are stored: dead-lettering it, not pausing");
                }
                return true;
            }
            Confinement::Partition(p) => Some(p),
            Confinement::None => None,
        };
        let since = Instant::now();
        match opened {
            None => self.topic.state = State::Open { since },
            Some(p) => {
                self.partitions.insert(
                    p,
                    Breaker {
                        state: State::Open { since },
                    },
                );
            }
        }
        tracing::error!(topic, partition = ?opened, poison, messages, threshold = cfg.threshold,
            "circuit breaker open: most recent messages are poison, which looks systemic \
             (a wrong encoding? a bad deploy?); pausing instead of dead-lettering the stream");
        metrics::counter!(metric::BREAKER_TRIPS, "topic" => topic.to_string()).increment(1);
        false
    }

    /// Whether an operator's hold is on; a poison verdict spends its budget.
    fn holding(&mut self) -> bool {
        let Some(hold) = self.held else {
            return false;
        };
        let expired = Instant::now() >= hold.until || hold.messages == Some(0);
        if expired {
            self.held = None;
            self.forget();
        }
        !expired
    }

    fn forget(&mut self) {
        self.recent.clear();
        self.poison_in_window = 0;
        self.poison_in_tail = 0;
    }

    fn push(&mut self, verdict: Verdict, cfg: &BreakerConfig) {
        if verdict.poison {
            if let Some(Hold {
                messages: Some(left),
                ..
            }) = &mut self.held
            {
                *left = left.saturating_sub(1);
            }
        }
        let poison = usize::from(verdict.poison);
        self.recent.push_back(verdict);
        self.poison_in_window += poison;
        self.poison_in_tail += poison;
        let len = self.recent.len();
        if len > cfg.min_messages {
            if let Some(left) = self.recent.get(len - 1 - cfg.min_messages) {
                self.poison_in_tail -= usize::from(left.poison);
            }
        }
        if len > cfg.window {
            if let Some(old) = self.recent.pop_front() {
                self.poison_in_window -= usize::from(old.poison);
            }
        }
    }

    /// `(poison, messages)` of the window that is over the threshold, if one is.
    fn tripped(&self, cfg: &BreakerConfig) -> Option<(usize, usize)> {
        let n = self.recent.len();
        let tail = cfg.min_messages.max(1);
        if n < tail {
            return None;
        }
        let over = |poison: usize, of: usize| poison as f64 > cfg.threshold * of as f64;
        if over(self.poison_in_tail, tail) {
            Some((self.poison_in_tail, tail))
        } else if over(self.poison_in_window, n) {
            Some((self.poison_in_window, n))
        } else {
            None
        }
    }

    /// Where the poison of the short window comes from, judged against the
    /// good messages of the whole window.
    fn confinement(&self, cfg: &BreakerConfig) -> Confinement {
        let tail_start = self.recent.len().saturating_sub(cfg.min_messages.max(1));
        let tail = self.recent.iter().skip(tail_start).filter(|v| v.poison);
        let tenants: HashSet<&Arc<str>> = tail.clone().map(|v| &v.tenant).collect();
        let partitions: HashSet<i32> = tail.map(|v| v.partition).collect();
        let good = self.recent.iter().filter(|v| !v.poison);
        if let [tenant] = tenants.into_iter().collect::<Vec<_>>()[..] {
            if good.clone().any(|v| v.tenant != *tenant) {
                return Confinement::Tenant(tenant.clone());
            }
        }
        if let [partition] = partitions.into_iter().collect::<Vec<_>>()[..] {
            if good.clone().any(|v| v.partition != partition) {
                return Confinement::Partition(partition);
            }
        }
        Confinement::None
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

    fn proceed(b: &Arc<Breakers>, partition: i32) -> Option<Probe> {
        match b.admit("t", partition) {
            Admission::Proceed(probe) => probe,
            Admission::Wait(d) => panic!("expected to proceed, told to wait {d:?}"),
        }
    }

    fn good(b: &Breakers, partition: i32, tenant: &str, n: usize) {
        b.good("t", partition, std::iter::repeat_n(tenant, n), None);
    }

    /// Poison verdicts until one is refused; how many were allowed.
    fn flood(b: &Breakers, partition: i32, tenant: &str, most: usize) -> usize {
        (0..most)
            .take_while(|_| b.poison("t", partition, tenant, None))
            .count()
    }

    #[test]
    fn a_poisoned_stream_opens_it_after_at_most_min_messages_verdicts() {
        let b = breakers(Duration::from_secs(60));
        assert_eq!(flood(&b, 0, "acme", 50), 9, "the tenth verdict opens it");
        assert!(matches!(b.state("t"), State::Open { .. }));
        assert!(matches!(b.admit("t", 0), Admission::Wait(_)));
        assert!(matches!(b.admit("t", 1), Admission::Wait(_)));
        assert_eq!(b.open_topics(), vec!["t".to_string()]);
    }

    #[test]
    fn a_long_good_history_does_not_delay_a_systemic_failure() {
        let b = breakers(Duration::from_secs(60));
        for p in 0..2 {
            good(&b, p, "acme", 500);
            good(&b, p, "globex", 500);
        }
        // Every tenant and every partition fails now.
        let allowed = (0..100)
            .take_while(|i: &usize| {
                b.poison("t", (i % 2) as i32, ["acme", "globex"][(i / 2) % 2], None)
            })
            .count();
        assert!(allowed <= 10, "{allowed} dead letters before opening");
        assert!(matches!(b.state("t"), State::Open { .. }));
    }

    #[test]
    fn poison_of_one_tenant_while_others_are_stored_never_pauses() {
        let b = breakers(Duration::from_secs(60));
        good(&b, 1, "acme", 20);
        // Judged over the window, which still holds acme's good messages.
        assert_eq!(flood(&b, 0, "mallory", 70), 70);
        assert_eq!(b.state("t"), State::Closed);
        assert!(b.open_topics().is_empty());
    }

    #[test]
    fn poison_of_one_partition_while_others_are_stored_opens_that_partition_only() {
        let b = breakers(Duration::from_secs(60));
        good(&b, 1, "acme", 20);
        let allowed = (0..50)
            .take_while(|i| b.poison("t", 0, ["acme", "globex"][i % 2], None))
            .count();
        assert!(allowed < 10);
        assert_eq!(b.state("t"), State::Closed);
        assert!(matches!(b.partition_state("t", 0), State::Open { .. }));
        assert!(matches!(b.admit("t", 0), Admission::Wait(_)));
        assert!(proceed(&b, 1).is_none(), "the other partition goes on");
    }

    #[test]
    fn occasional_poison_passes() {
        let b = breakers(Duration::from_secs(60));
        for _ in 0..50 {
            assert!(b.poison("t", 0, "acme", None));
            good(&b, 0, "acme", 9);
        }
        assert_eq!(b.state("t"), State::Closed);
        let fresh = breakers(Duration::from_secs(60));
        assert_eq!(flood(&fresh, 0, "acme", 9), 9, "too few verdicts to judge");
    }

    #[test]
    fn half_open_lets_one_probe_through_and_only_it_decides() {
        let b = breakers(Duration::ZERO);
        flood(&b, 0, "acme", 50);
        let probe = proceed(&b, 0).expect("a probe");
        assert!(matches!(b.admit("t", 1), Admission::Wait(PROBE_POLL)));
        // A batch that is not the probe neither closes nor reopens it.
        good(&b, 1, "acme", 5);
        assert!(!b.poison("t", 1, "acme", None));
        assert!(matches!(b.state("t"), State::HalfOpen { .. }));
        b.good("t", 0, std::iter::once("acme"), Some(&probe));
        assert_eq!(b.state("t"), State::Closed);
        drop(probe);
        assert_eq!(b.state("t"), State::Closed);
    }

    #[test]
    fn a_poisoned_probe_reopens_it() {
        let b = breakers(Duration::ZERO);
        flood(&b, 0, "acme", 50);
        let probe = proceed(&b, 0).expect("a probe");
        assert!(!b.poison("t", 0, "acme", Some(&probe)));
        assert!(matches!(b.state("t"), State::Open { .. }));
    }

    #[test]
    fn an_abandoned_probe_lets_another_batch_probe() {
        let b = breakers(Duration::ZERO);
        flood(&b, 0, "acme", 50);
        let probe = proceed(&b, 0).expect("a probe");
        drop(probe);
        assert_eq!(b.state("t"), State::HalfOpen { probe: None });
        assert!(proceed(&b, 0).is_some());
    }

    #[test]
    fn an_operators_close_holds_while_the_flood_drains() {
        let b = breakers(Duration::from_secs(3600));
        flood(&b, 0, "acme", 50);
        let hold = Hold {
            until: Instant::now() + Duration::from_secs(3600),
            messages: Some(30),
        };
        assert_eq!(b.close_all(hold), 1);
        assert_eq!(b.state("t"), State::Closed);
        assert_eq!(
            flood(&b, 0, "acme", 30),
            30,
            "held closed for 30 dead letters"
        );
        // The budget is spent: the next flood opens it again.
        assert!(flood(&b, 0, "acme", 50) < 10);
        assert!(matches!(b.state("t"), State::Open { .. }));
    }
}
