//! The bench's messages: generated and encoded before anything is timed, then
//! fed to the broker, in waves that wait for consumption when the broker
//! forgets old messages.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::Encoding;
use crate::error::{Error, Result};
use crate::loadgen::{Generator, TenantMix, TrafficSpec};

/// How much of a partition may be produced and not yet stored in PostgreSQL,
/// when the broker keeps only 5 MiB per partition. librdkafka's mock cluster
/// drops a partition's oldest message sets whole, and the producer's sets
/// reach `batch.size` (1 MB by default), so the set holding the first
/// unstored message may hold up to 1 MB already stored: 3 MiB leaves room
/// for it and the records' framing.
const UNSTORED_WINDOW: u64 = 3 << 20;

/// One message, encoded.
pub struct Message {
    pub tenant: Arc<str>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Every message of a bench, in production order.
pub struct Traffic {
    pub messages: Vec<Message>,
    pub spans: usize,
    pub bytes: u64,
    pub encoding: Encoding,
}

impl Traffic {
    pub fn generate(
        spans: usize,
        spans_per_message: usize,
        encoding: Encoding,
        seed: u64,
    ) -> Result<Traffic> {
        let spec = TrafficSpec {
            tenants: "acme:3,globex:2,initech:1"
                .parse::<TenantMix>()
                .map_err(|e| Error::config("tenants", e))?,
            spans_per_message,
            seed,
            run_id: format!("bench-{seed:x}"),
            error_ratio: 0.05,
        };
        spec.validate()?;
        let mut generator = Generator::new(spec);
        let mut messages = Vec::with_capacity(spans / spans_per_message.max(1) + 1);
        let (mut left, mut bytes) = (spans, 0);
        while left > 0 {
            let m = generator.next_message_of(left.min(spans_per_message), SystemTime::now());
            let payload = crate::cmd::loadgen::encode(encoding, &m.request);
            bytes += payload.len() as u64;
            left -= m.span_count;
            messages.push(Message {
                tenant: Arc::from(m.tenant.as_str()),
                key: m.key,
                payload,
            });
        }
        Ok(Traffic {
            messages,
            spans,
            bytes,
            encoding,
        })
    }

    /// The messages of each partition, round robin: the `k`-th message of
    /// partition `p` lands at offset `k`.
    pub fn by_partition(&self, partitions: i32) -> Vec<Vec<usize>> {
        let n = partitions.max(1) as usize;
        let mut out = vec![Vec::new(); n];
        for i in 0..self.messages.len() {
            out[i % n].push(i);
        }
        out
    }
}

/// Feeds a topic partition by partition, keeping at most [`UNSTORED_WINDOW`]
/// produced but not yet stored on a bounded broker.
pub struct Feeder<'a> {
    traffic: &'a Traffic,
    topic: String,
    producer: FutureProducer,
    /// The messages each partition has still to receive.
    queues: Vec<VecDeque<usize>>,
    /// Bytes produced to each partition so far, by offset: `produced[p][k]`
    /// is the total of offsets `0..k`.
    produced: Vec<Vec<u64>>,
    bounded: bool,
}

impl<'a> Feeder<'a> {
    pub fn new(
        traffic: &'a Traffic,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        bounded: bool,
    ) -> Result<Self> {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.max.bytes", "100000000")
            .create()
            .map_err(Error::Kafka)?;
        let queues: Vec<VecDeque<usize>> = traffic
            .by_partition(partitions)
            .into_iter()
            .map(VecDeque::from)
            .collect();
        let produced = vec![vec![0]; queues.len()];
        Ok(Feeder {
            traffic,
            topic: topic.to_string(),
            producer,
            queues,
            produced,
            bounded,
        })
    }

    /// Every partition's offset once all is produced.
    pub fn end_offsets(&self) -> Vec<i64> {
        self.queues
            .iter()
            .zip(&self.produced)
            .map(|(q, p)| (q.len() + p.len() - 1) as i64)
            .collect()
    }

    pub fn done(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Produces what the window allows, given each partition's stored offset
    /// (`None`: nothing stored yet), and waits for the broker's acknowledgements.
    pub async fn feed(&mut self, stored: &[Option<i64>]) -> Result<()> {
        let Feeder {
            traffic,
            topic,
            producer,
            queues,
            produced,
            bounded,
        } = self;
        let mut deliveries = FuturesUnordered::new();
        for (p, (queue, sums)) in queues.iter_mut().zip(produced.iter_mut()).enumerate() {
            let stored_bytes = stored
                .get(p)
                .copied()
                .flatten()
                .and_then(|o| sums.get(usize::try_from(o).ok()?).copied())
                .unwrap_or(0);
            while let Some(&i) = queue.front() {
                let message = &traffic.messages[i];
                let total = sums.last().copied().unwrap_or(0);
                let unstored = total - stored_bytes + message.payload.len() as u64;
                if *bounded && unstored > UNSTORED_WINDOW && total > stored_bytes {
                    break;
                }
                queue.pop_front();
                sums.push(total + message.payload.len() as u64);
                let headers = OwnedHeaders::new().insert(Header {
                    key: "X-Scope-OrgID",
                    value: Some(message.tenant.as_bytes()),
                });
                let record = FutureRecord::to(topic)
                    .partition(p as i32)
                    .key(&message.key)
                    .payload(&message.payload)
                    .headers(headers);
                deliveries.push(producer.send(record, Duration::from_secs(60)));
            }
        }
        while let Some(delivered) = deliveries.next().await {
            delivered.map_err(|(e, _)| Error::Kafka(e))?;
        }
        Ok(())
    }
}
