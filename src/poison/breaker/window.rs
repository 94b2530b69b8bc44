//! One topic's breakers and the window of recent verdicts that decides them.

use super::*;

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
    pub(super) fn new() -> Self {
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

    pub(super) fn breaker_mut(&mut self, partition: Option<i32>) -> Option<&mut Breaker> {
        match partition {
            None => Some(&mut self.topic),
            Some(p) => self.partitions.get_mut(&p),
        }
    }

    /// Whether neither the topic's breaker nor the partition's is open.
    pub(super) fn closed_for(&self, partition: i32) -> bool {
        self.topic.state == State::Closed
            && self
                .partitions
                .get(&partition)
                .is_none_or(|b| b.state == State::Closed)
    }

    pub(super) fn any_open(&self) -> bool {
        self.topic.state != State::Closed
            || self.partitions.values().any(|b| b.state != State::Closed)
    }

    /// The rules for one poison verdict; see [`Breakers::poison`].
    pub(super) fn judge_poison(
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
    pub(super) fn holding(&mut self) -> bool {
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

    pub(super) fn forget(&mut self) {
        self.recent.clear();
        self.poison_in_window = 0;
        self.poison_in_tail = 0;
    }

    pub(super) fn push(&mut self, verdict: Verdict, cfg: &BreakerConfig) {
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
