//! Liveness and readiness, as the pipeline's loops report them.
//!
//! Ready means: PostgreSQL reachable, the consumer has joined its group, every
//! subscribed topic exists, the spool is not full, and no circuit breaker is open. Live means: the main loop made progress recently.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Health {
    joined: AtomicBool,
    topics_missing: AtomicBool,
    pg_down: AtomicBool,
    spool_full: AtomicBool,
    breaker_open: AtomicBool,
    /// Unix seconds of the main loop's last turn.
    heartbeat: AtomicU64,
    /// Partitions whose messages cannot be fetched, described.
    stuck: Mutex<Vec<String>>,
}

impl Health {
    pub fn new() -> Self {
        let h = Health::default();
        h.heartbeat();
        h
    }

    pub fn set_joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
    }

    pub fn set_topics_missing(&self, missing: bool) {
        self.topics_missing.store(missing, Ordering::Relaxed);
    }

    pub fn set_pg_down(&self, down: bool) {
        self.pg_down.store(down, Ordering::Relaxed);
    }

    pub fn set_spool_full(&self, full: bool) {
        self.spool_full.store(full, Ordering::Relaxed);
    }

    pub fn set_breaker_open(&self, open: bool) {
        self.breaker_open.store(open, Ordering::Relaxed);
    }

    pub fn set_stuck(&self, stuck: Vec<String>) {
        *self.stuck.lock().unwrap_or_else(|p| p.into_inner()) = stuck;
    }

    pub fn heartbeat(&self) {
        self.heartbeat.store(unix_now(), Ordering::Relaxed);
    }

    /// Why the instance is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons: Vec<String> = Vec::new();
        if self.pg_down.load(Ordering::Relaxed) {
            reasons.push("postgresql unreachable".to_string());
        }
        if self.topics_missing.load(Ordering::Relaxed) {
            reasons.push("waiting for topics to exist".to_string());
        }
        if self.spool_full.load(Ordering::Relaxed) {
            reasons.push("spool full".to_string());
        }
        if self.breaker_open.load(Ordering::Relaxed) {
            reasons.push("circuit breaker open".to_string());
        }
        for stuck in self.stuck.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            reasons.push(format!("cannot fetch {stuck}"));
        }
        if !self.joined.load(Ordering::Relaxed) {
            reasons.push("consumer has not joined its group".to_string());
        }
        reasons
    }

    pub fn is_live(&self, max_silence: Duration) -> bool {
        unix_now().saturating_sub(self.heartbeat.load(Ordering::Relaxed)) <= max_silence.as_secs()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
