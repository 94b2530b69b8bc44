//! What librdkafka leaves undone when a partition is paused or resumed.
//!
//! Pausing: librdkafka marks a partition's queued messages stale, but its
//! purge stops at the barrier the pause puts at the head of the queue, so the
//! messages, and the whole decompressed record batches they point into, stay
//! in memory until the queue is next polled. A partition waiting for its fetch
//! turn would hold its prefetch outside the budget: with 1024 partitions
//! taking turns that came to 360 MB. A poll drops stale messages without
//! returning them.
//!
//! Resuming: librdkafka applies a resume on its main thread and does not wake
//! the thread that fetches from the partition's leader. With nothing to fetch,
//! that thread sleeps up to a second between looks (`rd_kafka_max_block_ms`
//! in `rdkafka_broker.c`). So a partition resumed while every other partition
//! on its leader is paused, as all are just after an assignment, can get
//! nothing for up to a second. Any request to the leader wakes its thread,
//! which then sees the resume.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;

/// How long a wake-up request may wait for its answer, which nobody reads.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Polls a paused partition's queue once, without waiting, so that librdkafka
/// frees what the pause made stale. Whatever it returns was not stale: it is
/// delivered, librdkafka's position is past it, and the caller must treat it
/// as received.
pub fn drop_stale<C: ConsumerContext>(
    queue: &StreamPartitionQueue<C>,
) -> Option<KafkaResult<BorrowedMessage<'_>>> {
    queue.stream().next().now_or_never().flatten()
}

/// Wakes the thread that fetches a resumed partition from its leader, so that
/// it fetches now rather than within the second. Asks the leader for the
/// partition's watermarks (the smallest request that goes to it), on a
/// blocking thread, and does not wait for the answer.
pub fn wake_fetcher<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    topic: &str,
    partition: i32,
) {
    let (consumer, topic) = (Arc::clone(consumer), topic.to_string());
    tokio::task::spawn_blocking(move || {
        // Failure is harmless: the thread wakes by itself within the second.
        let _ = consumer.fetch_watermarks(&topic, partition, WAKE_TIMEOUT);
    });
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use rdkafka::client::ClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Message as _;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    use rdkafka::statistics::Statistics;
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;
    use crate::kafka::mock::MockKafka;

    /// The messages librdkafka's statistics last counted in each partition's
    /// queue.
    #[derive(Clone, Default)]
    struct Queued(Arc<Mutex<HashMap<i32, i64>>>);

    impl ClientContext for Queued {
        fn stats(&self, statistics: Statistics) {
            let mut queued = self.0.lock().expect("stats");
            for topic in statistics.topics.values() {
                for (&p, partition) in &topic.partitions {
                    queued.insert(p, partition.fetchq_cnt);
                }
            }
        }
    }

    impl ConsumerContext for Queued {}

    impl Queued {
        /// Waits for statistics that satisfy `want`; the last count seen if
        /// none did in time. Fails if none came at all.
        async fn wait_for(&self, want: impl Fn(i64) -> bool) -> i64 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = self.0.lock().expect("stats").get(&0).copied();
                if let Some(n) = now.filter(|&n| want(n)) {
                    return n;
                }
                if Instant::now() > deadline {
                    return now.expect("librdkafka sent statistics for partition 0");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// A mock cluster whose topic `t` has one partition holding `count`
    /// messages of `payload`, in lz4 record batches.
    fn topic_with(count: usize, payload: &[u8]) -> MockKafka {
        let kafka = MockKafka::start(1).expect("mock cluster");
        kafka.create_topic("t", 1).expect("topic");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .set("compression.type", "lz4")
            .create()
            .expect("producer");
        for i in 0..count {
            let key = i.to_string();
            producer
                .send(BaseRecord::to("t").partition(0).key(&key).payload(payload))
                .map_err(|(e, _)| e)
                .expect("queued");
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");
        kafka
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_partition_frees_its_prefetch_when_polled_and_resumes_where_it_was() {
        let kafka = topic_with(200, &[b'x'; 1000]);

        let queued = Queued::default();
        let consumer: Arc<StreamConsumer<Queued>> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", kafka.bootstrap_servers())
                .set("group.id", "g")
                .set("enable.auto.commit", "false")
                .set("statistics.interval.ms", "50")
                .create_with_context(queued.clone())
                .expect("consumer"),
        );
        let queue = consumer
            .split_partition_queue("t", 0)
            .expect("partition queue");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Beginning)
            .expect("offset");
        consumer.assign(&tpl).expect("assigned");
        // The main queue carries the statistics.
        let main = Arc::clone(&consumer);
        let poll = tokio::spawn(async move { main.recv().await.map(|m| m.offset()) });

        let first = queue.recv().await.expect("a message").offset();
        assert_eq!(first, 0);
        let prefetched = queued.wait_for(|n| n > 100).await;
        assert!(prefetched > 100, "prefetched {prefetched}");

        consumer.pause(&tpl).expect("paused");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kept = queued.wait_for(|n| n > 100).await;
        assert!(
            kept > 100,
            "librdkafka now frees the prefetch on pause ({kept} left): drop_stale is no longer needed"
        );

        assert!(
            drop_stale(&queue).is_none(),
            "only stale messages were queued"
        );
        let left = queued.wait_for(|n| n == 0).await;
        assert_eq!(left, 0, "the stale prefetch was freed");

        consumer.resume(&tpl).expect("resumed");
        let next = queue.recv().await.expect("a message").offset();
        assert_eq!(next, first + 1, "resumed right after what was delivered");
        poll.abort();
    }

    /// Assigned and paused at once, as the rebalance callback does, then
    /// resumed 100 ms later: librdkafka's fetcher thread, having found the
    /// partition paused, sleeps out its second unless something wakes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_resumed_while_its_fetcher_sleeps_fetches_at_once_when_woken() {
        let kafka = topic_with(10, b"x");

        // Assigned, not subscribed: no heartbeat wakes the fetcher.
        let consumer: Arc<StreamConsumer> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", kafka.bootstrap_servers())
                .set("group.id", "g")
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer"),
        );
        let queue = consumer
            .split_partition_queue("t", 0)
            .expect("partition queue");
        // Connected, and the partition's leader known, before the assignment.
        let c = Arc::clone(&consumer);
        tokio::task::spawn_blocking(move || c.fetch_watermarks("t", 0, Duration::from_secs(10)))
            .await
            .expect("joined")
            .expect("watermarks");
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Offset(0))
            .expect("offset");
        consumer.assign(&tpl).expect("assigned");
        consumer.pause(&tpl).expect("paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            drop_stale(&queue).is_none(),
            "nothing is delivered while paused"
        );

        consumer.resume(&tpl).expect("resumed");
        let resumed = Instant::now();
        wake_fetcher(&consumer, "t", 0);
        let first = tokio::time::timeout(Duration::from_secs(5), queue.recv())
            .await
            .expect("a message within 5 s")
            .expect("a message");
        let waited = resumed.elapsed();
        assert_eq!(first.offset(), 0);
        assert!(
            waited < Duration::from_millis(500),
            "the first message came {waited:?} after the resume"
        );
    }
}
