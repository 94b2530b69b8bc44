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
    /// The subscribed topics that do not exist yet.
    topics_missing: Mutex<Vec<String>>,
    /// Why PostgreSQL cannot be reached, while it cannot.
    pg_unreachable: Mutex<Option<String>>,
    /// The Kafka client's last error before the group was joined: what a
    /// broker that does not answer looks like.
    kafka_error: Mutex<Option<String>>,
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

    pub fn set_topics_missing(&self, missing: Vec<String>) {
        *lock(&self.topics_missing) = missing;
    }

    /// `Some(why)` while PostgreSQL cannot be reached; `None` once it can.
    pub fn set_pg_unreachable(&self, why: Option<String>) {
        *lock(&self.pg_unreachable) = why;
    }

    pub fn set_kafka_error(&self, error: String) {
        *lock(&self.kafka_error) = Some(error);
    }

    pub fn set_spool_full(&self, full: bool) {
        self.spool_full.store(full, Ordering::Relaxed);
    }

    pub fn set_breaker_open(&self, open: bool) {
        self.breaker_open.store(open, Ordering::Relaxed);
    }

    pub fn set_stuck(&self, stuck: Vec<String>) {
        *lock(&self.stuck) = stuck;
    }

    pub fn heartbeat(&self) {
        self.heartbeat.store(unix_now(), Ordering::Relaxed);
    }

    /// Why the instance is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons: Vec<String> = Vec::new();
        if let Some(why) = lock(&self.pg_unreachable).as_deref() {
            reasons.push(format!("postgresql unreachable: {why}"));
        }
        let missing = lock(&self.topics_missing);
        if !missing.is_empty() {
            reasons.push(format!(
                "waiting for topics to exist (--traces-topic, --logs-topic): {}",
                missing.join(", ")
            ));
        }
        if self.spool_full.load(Ordering::Relaxed) {
            reasons.push("spool full".to_string());
        }
        if self.breaker_open.load(Ordering::Relaxed) {
            reasons.push("circuit breaker open".to_string());
        }
        for stuck in lock(&self.stuck).iter() {
            reasons.push(format!("cannot fetch {stuck}"));
        }
        if !self.joined.load(Ordering::Relaxed) {
            match lock(&self.kafka_error).as_deref() {
                Some(last) => reasons.push(format!(
                    "consumer has not joined its group (--brokers, --group-id); last Kafka error: {last}"
                )),
                None => reasons.push("consumer has not joined its group".to_string()),
            }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
