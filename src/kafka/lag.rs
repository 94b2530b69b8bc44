//! Consumer lag per partition, in messages and in seconds, and partitions
//! whose fetching is stuck.
//!
//! Messages: the partition's end (the largest of the last stable offset in
//! librdkafka's statistics, the high watermark of the partition's last fetch
//! response, and the high watermark asked of the broker every few seconds,
//! which stays truthful while fetches fail) minus the offset PostgreSQL
//! holds.
//! Seconds: the age of the oldest message not yet committed. It stays truthful
//! when nothing is in flight (breaker open, spool full, fetching paused): then it
//! is the age of the last committed message, which only grows, for as long as
//! the lag in messages is above zero.
//!
//! Stuck: the worker has waited for a message for `--fetch-stuck-after` while the
//! partition's end is beyond librdkafka's fetch position. That is what a
//! message too large to receive looks like (librdkafka retries the fetch for
//! ever), whatever error text goes with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::Consumer as _;
use tokio_util::sync::CancellationToken;

use crate::kafka::consume::Consumer;

use crate::kafka::rebalance::TopicPartition;
use crate::metric;

/// How often the high watermarks are asked of the broker.
const WATERMARK_INTERVAL: Duration = Duration::from_secs(10);

/// How long a worker may wait for a message that should come before its
/// partition counts as stuck, unless configured.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// The partition's high watermark as the last fetch response from its leader
/// gave it, which librdkafka keeps: no request goes to the broker. `None`
/// before the partition's first fetch. The safe wrapper has only the query
/// that asks the broker ([`rdkafka::consumer::Consumer::fetch_watermarks`]).
pub fn fetched_end(consumer: &Consumer, topic: &str, partition: i32) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the handle is owned by `consumer`, which outlives the call. The
    // call reads the NUL-terminated topic name, which lives until the end of
    // this function, and writes the two offsets through pointers to locals;
    // it takes the partition's lock itself, so any thread may call it.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[derive(Debug, Default, Clone, Copy)]
struct PartitionLag {
    /// The partition's end: its last stable or high watermark offset.
    end: Option<i64>,
    /// librdkafka's next offset to fetch, from its statistics.
    fetch_position: Option<i64>,
    /// Since when the worker has been waiting for a message with nothing in hand.
    idle_since: Option<Instant>,
    /// Such waiting in earlier fetch turns, since the last message: a
    /// partition that takes turns at fetching is stuck after as much waiting
    /// in all as one that fetches all along.
    idle_banked: Duration,
    /// What PostgreSQL holds: the next offset to consume.
    next: Option<i64>,
    /// Kafka timestamp of the oldest message fetched and not yet committed.
    oldest_pending_ms: Option<i64>,
    /// Kafka timestamp of the newest committed message.
    last_committed_ms: Option<i64>,
}

pub struct Lag {
    partitions: Mutex<HashMap<TopicPartition, PartitionLag>>,
    stuck_after: Duration,
}

impl Default for Lag {
    fn default() -> Self {
        Lag::new(STUCK_AFTER)
    }
}

impl Lag {
    pub fn new(stuck_after: Duration) -> Self {
        Lag {
            partitions: Mutex::default(),
            stuck_after,
        }
    }

    fn with(&self, topic: &str, partition: i32, f: impl FnOnce(&mut PartitionLag)) {
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry((topic.to_string(), partition)).or_default());
    }

    /// From librdkafka's statistics callback, or a watermark query.
    pub fn set_end(&self, topic: &str, partition: i32, end: i64) {
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        // Only partitions this instance tracks: statistics also list others.
        if let Some(p) = map.get_mut(&(topic.to_string(), partition)) {
            p.end = Some(p.end.map_or(end, |e| e.max(end)));
        }
    }

    /// librdkafka's fetch position, from its statistics.
    pub fn set_fetch_position(&self, topic: &str, partition: i32, position: i64) {
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = map.get_mut(&(topic.to_string(), partition)) {
            p.fetch_position = Some(position);
        }
    }

    /// The worker waits for a message with nothing in hand (true), or has one (false).
    pub fn idle(&self, topic: &str, partition: i32, idle: bool) {
        self.with(topic, partition, |p| match (idle, p.idle_since) {
            (true, None) => p.idle_since = Some(Instant::now()),
            (false, _) => {
                p.idle_since = None;
                p.idle_banked = Duration::ZERO;
            }
            _ => {}
        });
    }

    /// The worker gave its fetch turn up: waiting for the next one is not
    /// waiting for a fetch, so the idle clock stops, keeping what it counted.
    pub fn turn_over(&self, topic: &str, partition: i32) {
        self.with(topic, partition, |p| {
            if let Some(since) = p.idle_since.take() {
                p.idle_banked += since.elapsed();
            }
        });
    }

    /// Whether the partition holds messages beyond what PostgreSQL has; true
    /// while its end is not known yet.
    pub fn lagging(&self, topic: &str, partition: i32) -> bool {
        let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&(topic.to_string(), partition)) {
            Some(p) => match (p.end, p.next) {
                (Some(end), Some(next)) => end > next,
                (Some(end), None) => end > 0,
                (None, _) => true,
            },
            None => true,
        }
    }

    /// The partitions this instance tracks.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    /// Partitions whose worker has waited `stuck_after` for messages that
    /// librdkafka does not deliver, with the offset they are stuck at.
    pub fn stuck(&self) -> Vec<(TopicPartition, i64)> {
        let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter_map(|(tp, p)| {
                let waiting = p.idle_since.map(|t| t.elapsed());
                if waiting.is_none() && p.idle_banked.is_zero() {
                    return None;
                }
                let waited = p.idle_banked + waiting.unwrap_or_default() >= self.stuck_after;
                let position = p.fetch_position.or(p.next)?;
                (waited && p.end? > position).then(|| (tp.clone(), position))
            })
            .collect()
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

    pub fn record_commit(&self, topic: &str, partition: i32, next: i64, newest_ms: Option<i64>) {
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

    /// Asks the broker for each tracked partition's high watermark every
    /// [`WATERMARK_INTERVAL`], until `stop`: librdkafka's statistics learn it
    /// only from fetches that succeed, and a partition whose fetches fail must
    /// still show its lag.
    pub async fn watch_watermarks(
        self: Arc<Self>,
        consumer: Arc<Consumer>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(WATERMARK_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let (lag, consumer) = (Arc::clone(&self), Arc::clone(&consumer));
            // Lag is a gauge: a failed ask waits for the next tick.
            let asked = crate::blocking::run("watermark refresh", move || {
                for (topic, partition) in lag.partitions() {
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5))
                    {
                        lag.set_end(&topic, partition, high);
                    }
                }
                Ok(())
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = asked => {}
            }
        }
    }

    /// Learns the partition's end from what librdkafka kept of its last fetch
    /// response ([`fetched_end`]), then says whether it is lagging.
    ///
    /// Statistics come every few seconds and list a partition's end only once
    /// it has been fetched before they were taken, and the watermark query
    /// runs less often still. A partition that takes turns at fetching is
    /// mostly fetched between them, and one whose end is not known counts as
    /// lagging: after storing all it has, it would keep its turn for a second
    /// waiting for more, while others wait for the slot.
    pub fn lagging_as_fetched(&self, consumer: &Consumer, topic: &str, partition: i32) -> bool {
        if let Some(end) = fetched_end(consumer, topic, partition) {
            self.set_end(topic, partition, end);
        }
        self.lagging(topic, partition)
    }

    /// Sets the lag gauges of every tracked partition.
    pub fn publish(&self, now: SystemTime) {
        let now_ms = crate::clock::unix_millis(now);
        let stuck = self.stuck();
        let map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for ((topic, partition), p) in map.iter() {
            let is_stuck = stuck.iter().any(|((t, q), _)| t == topic && q == partition);
            let (messages, seconds) = p.lag(now_ms);
            let labels = [
                ("topic", topic.clone()),
                ("partition", partition.to_string()),
            ];
            if let Some(messages) = messages {
                metrics::gauge!(metric::CONSUMER_LAG_MESSAGES, &labels).set(messages as f64);
            }
            metrics::gauge!(metric::CONSUMER_LAG_SECONDS, &labels).set(seconds);
            metrics::gauge!(metric::PARTITION_STUCK, &labels).set(if is_stuck { 1.0 } else { 0.0 });
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
    fn a_worker_waiting_for_messages_that_never_come_is_stuck() {
        let lag = Lag::default();
        lag.assigned("t", 0, Some(5));
        lag.set_end("t", 0, 9);
        lag.set_fetch_position("t", 0, 5);
        lag.idle("t", 0, true);
        assert!(lag.stuck().is_empty(), "not yet");
        lag.with("t", 0, |p| {
            p.idle_since = Instant::now().checked_sub(STUCK_AFTER)
        });
        assert_eq!(lag.stuck(), vec![(("t".to_string(), 0), 5)]);
        // The end is where the fetch is (transaction markers, compaction): not stuck.
        lag.set_fetch_position("t", 0, 9);
        assert!(lag.stuck().is_empty());
        // A message arrived: not stuck.
        lag.set_fetch_position("t", 0, 5);
        lag.idle("t", 0, false);
        assert!(lag.stuck().is_empty());
    }

    #[test]
    fn waiting_in_fetch_turns_adds_up_and_waiting_for_a_turn_does_not() {
        let lag = Lag::default();
        lag.assigned("t", 0, Some(5));
        lag.set_end("t", 0, 9);
        lag.set_fetch_position("t", 0, 5);
        assert!(lag.lagging("t", 0));
        let half = STUCK_AFTER / 2 + Duration::from_millis(1);
        for _ in 0..2 {
            lag.idle("t", 0, true);
            assert!(lag.stuck().is_empty(), "not yet");
            lag.with("t", 0, |p| p.idle_since = Instant::now().checked_sub(half));
            // The turn goes to another partition; the clock stops, keeping its count.
            lag.turn_over("t", 0);
            lag.with("t", 0, |p| assert!(p.idle_since.is_none()));
        }
        assert_eq!(lag.stuck(), vec![(("t".to_string(), 0), 5)]);
        // A message arrived: the count starts again.
        lag.idle("t", 0, false);
        assert!(lag.stuck().is_empty());
        // Nothing beyond what PostgreSQL holds: not lagging.
        lag.record_commit("t", 0, 9, None);
        assert!(!lag.lagging("t", 0));
    }

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
