//! Consumer lag per partition, in messages and in seconds.
//!
//! Messages: the partition's last stable offset (librdkafka's statistics; a
//! read_committed consumer cannot go past it) minus the offset PostgreSQL holds.
//! Seconds: the age of the oldest message not yet committed. It stays truthful
//! when nothing is in flight (breaker open, spool full, fetching paused): then it
//! is the age of the last committed message, which only grows, for as long as
//! the lag in messages is above zero.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::kafka::rebalance::TopicPartition;
use crate::metrics as m;

#[derive(Debug, Default, Clone, Copy)]
struct PartitionLag {
    /// Last stable offset from librdkafka's statistics.
    end: Option<i64>,
    /// What PostgreSQL holds: the next offset to consume.
    next: Option<i64>,
    /// Kafka timestamp of the oldest message fetched and not yet committed.
    oldest_pending_ms: Option<i64>,
    /// Kafka timestamp of the newest committed message.
    last_committed_ms: Option<i64>,
}

#[derive(Default)]
pub struct Lag {
    partitions: Mutex<HashMap<TopicPartition, PartitionLag>>,
}

impl Lag {
    fn with(&self, topic: &str, partition: i32, f: impl FnOnce(&mut PartitionLag)) {
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry((topic.to_string(), partition)).or_default());
    }

    /// From librdkafka's statistics callback.
    pub fn set_end(&self, topic: &str, partition: i32, end: i64) {
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        // Only partitions this instance tracks: statistics also list others.
        if let Some(p) = map.get_mut(&(topic.to_string(), partition)) {
            p.end = Some(end);
        }
    }

    pub fn assigned(&self, topic: &str, partition: i32, next: Option<i64>) {
        self.with(topic, partition, |p| {
            *p = PartitionLag {
                next,
                ..PartitionLag::default()
            }
        });
    }

    pub fn pending(&self, topic: &str, partition: i32, oldest_ms: Option<i64>) {
        self.with(topic, partition, |p| {
            if p.oldest_pending_ms.is_none() {
                p.oldest_pending_ms = oldest_ms;
            }
        });
    }

    pub fn committed(&self, topic: &str, partition: i32, next: i64, newest_ms: Option<i64>) {
        self.with(topic, partition, |p| {
            p.next = Some(next);
            p.oldest_pending_ms = None;
            if newest_ms.is_some() {
                p.last_committed_ms = newest_ms;
            }
        });
    }

    pub fn revoked(&self, topic: &str, partition: i32) {
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(topic.to_string(), partition));
    }

    /// Sets the lag gauges of every tracked partition.
    pub fn publish(&self, now: SystemTime) {
        let now_ms = crate::clock::unix_millis(now);
        let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for ((topic, partition), p) in map.iter() {
            let (messages, seconds) = p.lag(now_ms);
            let labels = [
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            if let Some(messages) = messages {
                metrics::gauge!(m::CONSUMER_LAG_MESSAGES, &labels).set(messages as f64);
            }
            metrics::gauge!(m::CONSUMER_LAG_SECONDS, &labels).set(seconds);
        }
    }
}

impl PartitionLag {
    fn lag(&self, now_ms: i64) -> (Option<i64>, f64) {
        let messages = self
            .end
            .map(|end| end.saturating_sub(self.next.unwrap_or(0)).max(0));
        let behind = messages.is_some_and(|m| m > 0) || self.oldest_pending_ms.is_some();
        if !behind {
            return (messages, 0.0);
        }
        let since = self.oldest_pending_ms.or(self.last_committed_ms);
        let seconds = since.map_or(0.0, |t| crate::clock::age_seconds(now_ms, t));
        (messages, seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_come_from_the_oldest_pending_then_the_last_committed() {
        let mut p = PartitionLag {
            end: Some(10),
            next: Some(4),
            ..Default::default()
        };
        p.oldest_pending_ms = Some(1_000);
        p.last_committed_ms = Some(500);
        assert_eq!(p.lag(4_000), (Some(6), 3.0));
        // Nothing in flight (paused, breaker open): still truthful, and growing.
        p.oldest_pending_ms = None;
        assert_eq!(p.lag(4_000), (Some(6), 3.5));
        assert_eq!(p.lag(5_000), (Some(6), 4.5));
        // Caught up: zero.
        p.next = Some(10);
        assert_eq!(p.lag(5_000), (Some(0), 0.0));
    }
}
