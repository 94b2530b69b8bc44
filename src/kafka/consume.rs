//! The consumer: its librdkafka configuration, derived from spansink's own
//! settings and one memory budget; the thread that polls its main queue; and
//! the wait for topics that do not exist yet.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::Offset;
use tokio_util::sync::CancellationToken;

use crate::error::{Class, Error, Result};
use crate::health::Health;
use crate::kafka::rebalance::Context;
use crate::kafka::Settings;
use crate::shutdown::Stopper;

pub type Consumer = StreamConsumer<Context>;

/// librdkafka caps `queued.max.messages.kbytes` here.
const MAX_QUEUED_KBYTES: usize = 2_097_151;
/// librdkafka's own default and ceiling for one fetch response.
const MAX_FETCH_BYTES: usize = 50 << 20;
/// librdkafka's ceiling for `receive.message.max.bytes`.
const MAX_RECEIVE_BYTES: usize = 2_147_483_647;

/// How the in-flight budget is shared between librdkafka's prefetch and the
/// batches, by turns.
///
/// With a queue per partition, `queued.max.messages.kbytes` holds per
/// partition and is fixed when the consumer is created, whatever the number
/// of partitions assigned later. So a partition fetches, and builds batches,
/// only during its turn: `slots` partitions at once, the others paused
/// (the workers' fetch slots). One partition's prefetch is small (a full
/// queue plus one more fetch on top of it); the rest of the budget goes to
/// batches. Few turns at a time also keep batches large: a budget shared by
/// every assigned partition at once would make many small ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    /// `queued.max.messages.kbytes`, in bytes.
    pub queue_bytes: usize,
    /// `max.partition.fetch.bytes`: what one fetch may add to a full queue.
    pub fetch_bytes: usize,
    /// `fetch.max.bytes`: one response from one broker, for all its partitions.
    pub response_bytes: usize,
    /// Partitions that may fetch at once.
    pub slots: usize,
}

impl Prefetch {
    /// The most one partition's queue holds; librdkafka's fetch size default.
    const PARTITION_QUEUE: usize = 1 << 20;
    /// The budget one turn stands for: its prefetch and its share of batches.
    const TURN: usize = 8 << 20;

    /// The plan for an in-flight budget of `budget` bytes: prefetch takes at
    /// most a quarter of it.
    pub fn within(budget: usize) -> Self {
        let slots = (budget / Self::TURN).max(1);
        let queue = (budget / (8 * slots)).clamp(1024, Self::PARTITION_QUEUE);
        Prefetch {
            queue_bytes: queue,
            fetch_bytes: queue,
            response_bytes: (slots * queue).clamp(1 << 20, MAX_FETCH_BYTES),
            slots,
        }
    }

    /// What one fetching partition may hold in librdkafka.
    pub fn per_partition(&self) -> usize {
        self.queue_bytes + self.fetch_bytes
    }

    /// What librdkafka may hold in all: every slot's partition at its most.
    pub fn total(&self) -> usize {
        self.slots * self.per_partition()
    }
}

/// The consumer settings spansink relies on, then the operator's `--kafka` settings.
///
/// Fetch sizes never shrink below one message: memory is bounded by pausing
/// partitions, not by refusing to receive. A fetch response holds up to
/// `fetch.max.bytes` of ordinary messages and, beyond it, one record batch up
/// to twice `--max-message-bytes`, whatever the budget: a message over the
/// limit arrives, and is dead-lettered as `message_too_large`. Only a larger
/// one cannot be received; it stops the partitions fetched from its broker,
/// which then show as stuck.
pub fn consumer_config(
    kafka: &Settings,
    group_id: &str,
    prefetch: &Prefetch,
    max_message_bytes: usize,
) -> ClientConfig {
    let queued_kbytes = (prefetch.queue_bytes / 1024).clamp(1, MAX_QUEUED_KBYTES);
    let receive_max = prefetch
        .response_bytes
        .saturating_add(max_message_bytes.saturating_mul(2))
        .saturating_add(512)
        .min(MAX_RECEIVE_BYTES);

    let own = [
        ("group.id", group_id.to_string()),
        ("client.id", format!("spansink-{}", crate::VERSION)),
        // Offsets move only after PostgreSQL commits; spansink commits them itself.
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        // Incremental rebalances: a partition that stays with this instance keeps
        // its worker and its in-flight batch.
        ("partition.assignment.strategy", "cooperative-sticky".into()),
        // Used only when a partition's start is out of range: offset 0 for a
        // partition with no row in ingest_offsets (see start_offset), or the
        // stored offset. Earliest never skips data that Kafka still holds:
        // below the log start the data is already gone (counted as a gap), and
        // re-reading is harmless because writes are idempotent.
        ("auto.offset.reset", "earliest".into()),
        ("enable.partition.eof", "false".into()),
        // Aborted transactional messages are never stored.
        ("isolation.level", "read_committed".into()),
        ("queued.max.messages.kbytes", queued_kbytes.to_string()),
        // The queues are small by design, so a full one is the normal state
        // while a batch is written: refetch soon after it drains, not after
        // librdkafka's default second.
        ("fetch.queue.backoff.ms", "10".into()),
        // A partition that gets its turn waits for the broker's pending long
        // poll before its first fetch: keep that wait short.
        ("fetch.wait.max.ms", "100".into()),
        ("fetch.max.bytes", prefetch.response_bytes.to_string()),
        (
            "max.partition.fetch.bytes",
            prefetch.fetch_bytes.to_string(),
        ),
        ("receive.message.max.bytes", receive_max.to_string()),
        // Statistics carry each partition's end offset, for the lag gauges.
        ("statistics.interval.ms", "5000".into()),
        // A topic created after start is noticed within seconds, not minutes.
        ("topic.metadata.refresh.interval.ms", "10000".into()),
    ];
    let mut config = kafka.client_config(&own);
    config.set_log_level(kafka.log_level());
    config
}

/// Where a partition starts: at the offset PostgreSQL holds, or at offset 0
/// when it holds none.
///
/// Not librdkafka's logical beginning: a logical offset is looked up at the
/// partition's leader, and while a fresh assignment's leader is not yet known
/// librdkafka postpones that lookup by a fixed 500 ms, which a new group's
/// first batches would all wait for. When retention has already deleted
/// offset 0, the fetch is out of range and `auto.offset.reset` = `earliest`
/// moves it to the log start, where the logical beginning is.
pub fn start_offset(stored: Option<i64>) -> Offset {
    Offset::Offset(stored.unwrap_or(0))
}

/// Creates the consumer; librdkafka's refusal of a setting names that setting.
pub fn create(config: &ClientConfig, context: Context) -> Result<Arc<Consumer>> {
    config
        .create_with_context(context)
        .map(Arc::new)
        .map_err(|e| crate::kafka::config_error("consumer", e))
}

/// Polls the consumer's main queue on a thread of its own until `stop`.
///
/// Messages flow through per-partition queues; the main queue serves
/// rebalances, errors and statistics, and polling it keeps
/// `max.poll.interval.ms` satisfied even while every partition is paused.
/// The rebalance callback runs here and blocks while partition state changes
/// hands ([`crate::kafka::rebalance`]): a dedicated thread, so that no runtime
/// worker ever blocks. A fatal consumer error stops the process.
pub fn spawn_poller(consumer: Arc<Consumer>, stopper: Stopper) -> std::io::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("kafka-poll".into())
        .spawn(move || runtime.block_on(poll(&consumer, &stopper)))
}

async fn poll(consumer: &Consumer, stopper: &Stopper) {
    let stop = stopper.token().clone();
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = consumer.recv() => received,
        };
        match received {
            Ok(msg) => {
                // Every assigned partition has its own queue; a message here means a
                // partition was not split (an assignment during shutdown). Rewind
                // it rather than drop it; this thread may block.
                let (topic, partition, offset) =
                    (msg.topic().to_string(), msg.partition(), msg.offset());
                drop(msg);
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    "message on the main queue; rewinding the partition"
                );
                let _ = consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                );
            }
            Err(e) => {
                let err = Error::Kafka(e);
                if err.class() == Class::Fatal {
                    stopper.fail(err);
                } else {
                    if let Some(held_back) = crate::logcap::allow("consumer error") {
                        tracing::warn!(error = %err, held_back, "consumer error");
                    }
                }
            }
        }
    }
}

/// How often missing topics are looked for again.
const TOPIC_LOOKUP: Duration = Duration::from_secs(5);

/// Waits until at least one of `topics` exists and returns those that do.
/// A missing topic is not fatal, nor are brokers that do not answer: the
/// instance stays unready and keeps looking. Each topic is waited for on its
/// own ([`watch_for_topics`]), so that a logs topic nobody has created yet
/// never holds up the traces.
pub async fn wait_for_topics(
    consumer: &Arc<Consumer>,
    brokers: &str,
    topics: &[String],
    health: &Health,
    stop: &CancellationToken,
) -> Result<Vec<String>> {
    let mut attempt: u32 = 0;
    loop {
        let found = find_topics(consumer, topics).await?;
        if let Some(e) = &found.unanswered {
            if attempt.is_multiple_of(6) {
                tracing::warn!(error = %e, brokers, "no metadata from the brokers (--brokers); retrying");
            }
            health.set_kafka_error(format!("no metadata from {brokers}: {e}"));
        } else if found.missing.len() < topics.len() {
            health.set_topics_missing(Vec::new());
            return Ok(found.present(topics));
        } else if attempt.is_multiple_of(6) {
            tracing::warn!(topics = ?found.missing, "waiting for topics to exist (--traces-topic, --logs-topic); not ready until one does");
        }
        health.set_topics_missing(found.missing);
        attempt += 1;
        tokio::select! {
            _ = stop.cancelled() => return Err(Error::Shutdown),
            _ = tokio::time::sleep(TOPIC_LOOKUP) => {}
        }
    }
}

/// Looks for the topics not yet consumed until they all are: each one that
/// appears is added to the subscription (`subscribe` gets the whole list),
/// which rebalances the group onto it. Ends when every topic is consumed or
/// on shutdown.
pub async fn watch_for_topics(
    consumer: Arc<Consumer>,
    topics: Vec<String>,
    mut consumed: Vec<String>,
    stop: CancellationToken,
    subscribe: impl Fn(&[String]) -> Result<()>,
) {
    let mut attempt: u32 = 0;
    loop {
        let waiting: Vec<String> = topics
            .iter()
            .filter(|t| !consumed.contains(t))
            .cloned()
            .collect();
        if waiting.is_empty() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TOPIC_LOOKUP) => {}
        }
        let found = match find_topics(&consumer, &waiting).await {
            Ok(found) if found.unanswered.is_none() => found,
            _ => continue,
        };
        let appeared = found.present(&waiting);
        if appeared.is_empty() {
            if attempt.is_multiple_of(12) {
                tracing::warn!(topics = ?waiting, "topics do not exist yet; the others are consumed meanwhile");
            }
            attempt += 1;
            continue;
        }
        consumed.extend(appeared);
        if let Err(e) = subscribe(&consumed) {
            tracing::error!(error = %e, "cannot widen the subscription");
        }
    }
}

/// What the brokers said about the topics.
struct Found {
    /// Topics the brokers say do not exist.
    missing: Vec<String>,
    /// Why the brokers did not answer, if they did not: whether the topics
    /// exist is then unknown.
    unanswered: Option<Error>,
}

impl Found {
    /// The topics of `asked` the brokers know.
    fn present(&self, asked: &[String]) -> Vec<String> {
        asked
            .iter()
            .filter(|t| !self.missing.contains(t))
            .cloned()
            .collect()
    }
}

async fn find_topics(consumer: &Arc<Consumer>, topics: &[String]) -> Result<Found> {
    let consumer = consumer.clone();
    let topics = topics.to_vec();
    crate::blocking::run("topic metadata", move || {
        let mut found = Found {
            missing: Vec::new(),
            unanswered: None,
        };
        for topic in &topics {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
                Ok(md) => {
                    let exists = md.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    });
                    if !exists {
                        found.missing.push(topic.clone());
                    }
                }
                Err(e)
                    if e.rdkafka_error_code()
                        == Some(RDKafkaErrorCode::UnknownTopicOrPartition) =>
                {
                    found.missing.push(topic.clone())
                }
                Err(e) => {
                    let err = Error::Kafka(e);
                    if err.class() == crate::error::Class::Fatal {
                        return Err(err);
                    }
                    found.unanswered = Some(err);
                    break;
                }
            }
        }
        Ok(found)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[(&str, &str)]) -> Settings {
        Settings {
            brokers: "127.0.0.1:9092".into(),
            overrides: extra
                .iter()
                .map(|(k, v)| crate::kafka::Setting {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn limits_derive_from_one_budget() {
        let prefetch = Prefetch::within(64 << 20);
        assert_eq!(
            prefetch,
            Prefetch {
                queue_bytes: 1 << 20,
                fetch_bytes: 1 << 20,
                response_bytes: 8 << 20,
                slots: 8,
            }
        );
        let c = consumer_config(&args(&[]), "g", &prefetch, 16 << 20);
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("1024"));
        assert_eq!(c.get("fetch.max.bytes"), Some(&*(8usize << 20).to_string()));
        assert_eq!(
            c.get("max.partition.fetch.bytes"),
            Some(&*(1usize << 20).to_string())
        );
        assert_eq!(
            c.get("receive.message.max.bytes"),
            Some(&*((40usize << 20) + 512).to_string()),
            "a full fetch and a batch of twice the largest message, whatever the budget"
        );
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
    }

    #[test]
    fn prefetch_takes_at_most_a_quarter_of_the_budget() {
        // Above 8 KiB: librdkafka queues no less than 1 KiB a partition.
        for budget in [8 << 10, 1 << 20, 3 << 20, 64 << 20, 100 << 20, 1 << 30] {
            let p = Prefetch::within(budget);
            assert!(p.slots >= 1);
            assert!(
                p.total() <= budget / 4,
                "{budget}: {p:?} holds more than a quarter"
            );
        }
        assert_eq!(Prefetch::within(1 << 20).slots, 1);
        assert_eq!(Prefetch::within(1 << 30).slots, 128);
    }

    #[test]
    fn operator_settings_pass_through() {
        let c = consumer_config(
            &args(&[("session.timeout.ms", "6000")]),
            "g",
            &Prefetch::within(64 << 20),
            16 << 20,
        );
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
    }

    #[tokio::test]
    async fn tls_and_sasl_settings_are_understood() {
        let c = consumer_config(
            &args(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "spansink"),
                ("sasl.password", "secret"),
            ]),
            "g",
            &Prefetch::within(64 << 20),
            16 << 20,
        );
        let created = create(&c, crate::kafka::rebalance::Context::detached());
        assert!(
            created.is_ok(),
            "{:?}",
            created.err().map(|e| e.to_string())
        );
    }

    #[tokio::test]
    async fn an_unknown_setting_fails_naming_it() {
        let c = consumer_config(
            &args(&[("no.such.setting", "1")]),
            "g",
            &Prefetch::within(64 << 20),
            16 << 20,
        );
        let pipeline = crate::kafka::rebalance::Context::detached();
        let err = create(&c, pipeline)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no.such.setting"), "{err}");
    }
}
