//! An embedded Kafka: librdkafka's mock cluster, hosted on a thread of its own.
//!
//! The mock cluster is `!Send`, so it cannot sit inside async code or be shared
//! between test threads. [`MockKafka`] keeps it on one dedicated thread and sends
//! that thread closures to run against it. Every call is a quick in-memory
//! operation, so blocking briefly on the reply is fine from sync and async code.
//!
//! `spansink demo` uses it as its broker, and integration tests use it as the
//! broker of a `spansink` child process through [`MockKafka::bootstrap_servers`].

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::{RDKafkaApiKey, RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::ClientConfig;

use crate::error::{Error, Result};

/// The cluster as the host thread sees it: borrowed from the client that owns it.
type Cluster<'c> = MockCluster<'c, HostContext>;

/// One operation on the cluster, run on the host thread.
type Op = Box<dyn for<'c> FnOnce(&Cluster<'c>) -> KafkaResult<()> + Send>;

struct Request {
    op: Op,
    reply: mpsc::SyncSender<KafkaResult<()>>,
}

/// How often the host thread serves its client's event queue while idle.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// An embedded Kafka cluster with fault injection. Dropping it stops the cluster.
pub struct MockKafka {
    requests: Option<mpsc::Sender<Request>>,
    host: Option<thread::JoinHandle<()>>,
    bootstrap: String,
    brokers: i32,
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers on random loopback ports.
    ///
    /// The group coordinator's initial rebalance delay is set to zero, so that a
    /// consumer's first join takes milliseconds instead of about three seconds.
    pub fn start(brokers: i32) -> Result<MockKafka> {
        if brokers < 1 {
            return Err(Error::config("mock brokers", "must be at least 1"));
        }
        let (requests, inbox) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<KafkaResult<String>>(1);
        let host = thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || host(brokers, inbox, ready_tx))
            .map_err(|e| Error::io("starting the embedded Kafka thread", e))?;
        let started = ready_rx.recv().unwrap_or(Err(host_gone()));
        match started {
            Ok(bootstrap) => Ok(MockKafka {
                requests: Some(requests),
                host: Some(host),
                bootstrap,
                brokers,
            }),
            Err(e) => {
                // The thread has already returned after sending its error.
                let _ = host.join();
                Err(Error::Kafka(e))
            }
        }
    }

    /// The cluster's `bootstrap.servers` list.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic replicated on every broker (at most three), so that any
    /// broker can be made its partitions' leader.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let name = name.to_string();
        let replication = self.brokers.min(3);
        self.run(Box::new(move |c| {
            c.create_topic(&name, partitions, replication)
        }))
    }

    /// Takes broker `id` down; `-1` takes down every broker.
    pub fn broker_down(&self, id: i32) -> Result<()> {
        self.run(Box::new(move |c| c.broker_down(id)))
    }

    /// Brings broker `id` back; `-1` brings back every broker.
    pub fn broker_up(&self, id: i32) -> Result<()> {
        self.run(Box::new(move |c| c.broker_up(id)))
    }

    /// Makes `broker` the leader of one partition. Leadership never moves by itself
    /// in the mock, not even when its broker goes down.
    pub fn partition_leader(&self, topic: &str, partition: i32, broker: i32) -> Result<()> {
        let topic = topic.to_string();
        self.run(Box::new(move |c| {
            c.partition_leader(&topic, partition, Some(broker))
        }))
    }

    /// Makes `broker` the coordinator of consumer group `group`, so that a test
    /// can take other brokers down without stopping the group.
    pub fn group_coordinator(&self, group: &str, broker: i32) -> Result<()> {
        let group = group.to_string();
        self.run(Box::new(move |c| {
            c.coordinator(rdkafka::mocking::MockCoordinator::Group(group), broker)
        }))
    }

    /// Makes the next requests of kind `api` fail, one error code per request, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) -> Result<()> {
        let errors = errors.to_vec();
        self.run(Box::new(move |c| {
            c.request_errors(api, &errors);
            Ok(())
        }))
    }

    /// Forgets the errors still queued for requests of kind `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> Result<()> {
        self.run(Box::new(move |c| {
            c.clear_request_errors(api);
            Ok(())
        }))
    }

    /// Runs one operation on the host thread and waits for its result.
    fn run(&self, op: Op) -> Result<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        let requests = self.requests.as_ref().ok_or_else(host_gone)?;
        requests
            .send(Request { op, reply })
            .map_err(|_| host_gone())?;
        let result = answer.recv().map_err(|_| host_gone())?;
        result.map_err(Error::Kafka)
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        // Closing the channel is the stop signal; the host drops the cluster on its way out.
        self.requests = None;
        if let Some(host) = self.host.take() {
            let _ = host.join();
        }
    }
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka")
            .field("bootstrap", &self.bootstrap)
            .field("brokers", &self.brokers)
            .finish()
    }
}

/// The host thread only exists because of a bug (a panic) or while it stops, so a
/// missing host reads as librdkafka's own "instance is being destroyed".
fn host_gone() -> KafkaError {
    KafkaError::MockCluster(RDKafkaErrorCode::BrokerDestroy)
}

/// The body of the host thread: owns the client, and with it the cluster.
fn host(
    brokers: i32,
    inbox: mpsc::Receiver<Request>,
    ready: mpsc::SyncSender<KafkaResult<String>>,
) {
    let client = match ClientConfig::new()
        .set("test.mock.num.brokers", brokers.to_string())
        .set_log_level(RDKafkaLogLevel::Info)
        .create_with_context::<_, BaseProducer<HostContext>>(HostContext)
    {
        Ok(client) => client,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let Some(cluster) = client.client().mock_cluster() else {
        let _ = ready.send(Err(KafkaError::MockCluster(RDKafkaErrorCode::Fail)));
        return;
    };
    disable_initial_rebalance_delay(&client);
    if ready.send(Ok(cluster.bootstrap_servers())).is_err() {
        return;
    }
    serve(&client, &cluster, &inbox);
    // `cluster` only borrows the client; dropping the client destroys the cluster.
    drop(cluster);
    drop(client);
}

fn serve(
    client: &BaseProducer<HostContext>,
    cluster: &Cluster<'_>,
    inbox: &mpsc::Receiver<Request>,
) {
    loop {
        match inbox.recv_timeout(POLL_INTERVAL) {
            Ok(Request { op, reply }) => {
                // The caller may have given up waiting; the operation has happened anyway.
                let _ = reply.send(op(cluster));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // The host client never produces, but its error events queue up until served.
        client.poll(Duration::ZERO);
    }
}

/// Sets the group coordinator's initial rebalance delay to zero. The safe wrapper
/// has no call for it, and `MockCluster::new` exposes no raw handle, which is why
/// the cluster is created through a client's `test.mock.num.brokers` instead.
fn disable_initial_rebalance_delay(client: &BaseProducer<HostContext>) {
    let rk = client.client().native_ptr();
    // SAFETY: `rk` is a live handle owned by `client`, which outlives this call.
    // `rd_kafka_handle_mock_cluster` returns the cluster that handle created (it
    // did, because of `test.mock.num.brokers`) or null, and the cluster lives as
    // long as the handle. The setter only stores an integer under the cluster's
    // own lock, so calling it from this thread races with nothing.
    unsafe {
        let mcluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(rk);
        if !mcluster.is_null() {
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mcluster, 0);
        }
    }
}

/// The host client carries the cluster and sends nothing. Its connection errors
/// while a broker is down are expected, so they are logged at debug level only.
struct HostContext;

impl ClientContext for HostContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "spansink::kafka::mock", ?level, fac, "{message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "spansink::kafka::mock", %error, "{reason}");
    }
}

impl ProducerContext for HostContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_reports_one_address_per_broker() {
        let kafka = MockKafka::start(3).unwrap();
        assert_eq!(kafka.bootstrap_servers().split(',').count(), 3);
        kafka.create_topic("t", 2).unwrap();
        kafka.partition_leader("t", 1, 2).unwrap();
    }

    #[test]
    fn refuses_zero_brokers() {
        assert!(MockKafka::start(0).is_err());
    }

    #[test]
    fn an_unknown_broker_is_an_error() {
        let kafka = MockKafka::start(1).unwrap();
        let err = kafka.broker_down(7).unwrap_err();
        assert!(
            matches!(err, Error::Kafka(KafkaError::MockCluster(_))),
            "{err}"
        );
    }
}
