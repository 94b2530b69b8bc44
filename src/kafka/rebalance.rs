//! The consumer context: librdkafka's callbacks, turned into events for
//! whoever owns partition state.
//!
//! librdkafka runs the rebalance callback inside the poll of the consumer's
//! main queue, which spansink drives on a thread of its own
//! ([`crate::kafka::consume::spawn_poller`]). The callback only sends an event
//! and waits for the answer: on assignment, the offsets each partition starts
//! at (read from PostgreSQL once the partition's previous worker has ended);
//! on revocation, word that the partitions' workers have ended. It blocks that
//! thread, never a runtime worker, and this module knows nothing of workers.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::error::{Class, Error};
use crate::health::Health;
use crate::kafka::consume;
use crate::kafka::lag::Lag;
use crate::metric;
use crate::shutdown::Stopper;

pub type TopicPartition = (String, i32);

/// What the rebalance callback asks of the owner of partition state.
#[derive(Debug)]
pub enum RebalanceEvent {
    /// These partitions are being assigned. Reply with each one's start
    /// offset, in order (`None`: from the beginning), once it is safe to
    /// consume them. No reply (the sender dropped) assigns nothing known.
    Assign {
        partitions: Vec<TopicPartition>,
        reply: SyncSender<Vec<Option<i64>>>,
        /// Cancelled once librdkafka holds the assignment, paused: before
        /// that a worker's pause or resume would not take.
        assigned: CancellationToken,
    },
    /// These partitions are being revoked; `lost` when the group already gave
    /// them to another member (nothing may be committed for them). Drop
    /// `done` once their workers have ended.
    Revoke {
        partitions: Vec<TopicPartition>,
        lost: bool,
        done: SyncSender<()>,
    },
}

pub struct Context {
    events: Option<UnboundedSender<RebalanceEvent>>,
    lag: Option<Arc<Lag>>,
    health: Option<Arc<Health>>,
    stopper: Option<Stopper>,
}

impl Context {
    pub fn new(
        events: UnboundedSender<RebalanceEvent>,
        lag: Arc<Lag>,
        health: Arc<Health>,
        stopper: Stopper,
    ) -> Self {
        Context {
            events: Some(events),
            lag: Some(lag),
            health: Some(health),
            stopper: Some(stopper),
        }
    }

    /// A context for clients that never join a group.
    pub fn detached() -> Self {
        Context {
            events: None,
            lag: None,
            health: None,
            stopper: None,
        }
    }

    /// Sends the assignment and waits for the start offsets.
    fn assign(&self, tpl: &mut TopicPartitionList, assigned: &CancellationToken) {
        let partitions = partitions_of(tpl);
        let (reply, answer) = sync_channel(1);
        let Some(events) = &self.events else { return };
        if events
            .send(RebalanceEvent::Assign {
                partitions: partitions.clone(),
                reply,
                assigned: assigned.clone(),
            })
            .is_err()
        {
            return; // shutting down: nothing will be consumed
        }
        let Ok(offsets) = answer.recv() else { return };
        for ((topic, partition), offset) in partitions.iter().zip(offsets) {
            let start = consume::start_offset(offset);
            if let Err(e) = tpl.set_partition_offset(topic, *partition, start) {
                tracing::error!(error = %e, topic, partition, "cannot set start offset");
            }
        }
    }

    /// Sends the revocation and waits until the partitions' workers have ended.
    fn revoke(&self, tpl: &TopicPartitionList, lost: bool) {
        let (done, ended) = sync_channel(1);
        let Some(events) = &self.events else { return };
        let revoke = RebalanceEvent::Revoke {
            partitions: partitions_of(tpl),
            lost,
            done,
        };
        if events.send(revoke).is_ok() {
            // Err: the owner dropped `done` or is gone; either way nothing runs.
            let _ = ended.recv();
        }
    }

    fn fail(&self, err: Error) {
        if let Some(stopper) = &self.stopper {
            stopper.fail(err);
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let Some(lag) = &self.lag else { return };
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // The last stable offset is as far as a read_committed consumer can go.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if *id >= 0 && end >= 0 {
                    lag.set_end(name, *id, end);
                }
                if *id >= 0 && p.next_offset >= 0 {
                    lag.set_fetch_position(name, *id, p.next_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let err = Error::Kafka(error);
        if err.class() == Class::Fatal {
            tracing::error!(error = %err, reason, "fatal Kafka error");
            self.fail(err);
        } else {
            // Broker transport errors and the like: librdkafka reconnects by
            // itself. Until the group is joined, readiness says why it is not.
            if let Some(health) = &self.health {
                health.set_kafka_error(format!("{err}: {reason}"));
            }
            if let Some(held_back) = crate::logcap::allow("Kafka client error") {
                tracing::warn!(error = %err, reason, held_back, "Kafka client error");
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if self.events.is_none() {
            return;
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                metrics::counter!(metric::REBALANCES, "kind" => "assign").increment(1);
                let assigned = CancellationToken::new();
                // Whatever happens below, the workers go on (or stop with the process).
                let _assigned = assigned.clone().drop_guard();
                self.assign(tpl, &assigned);
                if let Err(e) = base.incremental_assign(tpl) {
                    // librdkafka's default rebalance ignores this error; an assignment
                    // that did not take would leave partitions unconsumed without a word.
                    tracing::error!(error = %e, "incremental assign failed");
                    self.fail(Error::Kafka(e));
                } else if let Err(e) = base.pause(tpl) {
                    // Each partition fetches once its worker has a fetch slot;
                    // unpaused, all would prefetch at once, past the budget.
                    tracing::warn!(error = %e, "cannot pause newly assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = base.assignment_lost();
                let kind = if lost { "lost" } else { "revoke" };
                metrics::counter!(metric::REBALANCES, "kind" => kind).increment(1);
                self.revoke(tpl, lost);
                if let Err(e) = base.incremental_unassign(tpl) {
                    tracing::error!(error = %e, "incremental unassign failed");
                }
            }
            other => {
                // As librdkafka's default does: give the partitions up. Nothing of
                // ours may commit for them any more.
                tracing::error!(error = ?other, "rebalance error: releasing partitions");
                metrics::counter!(metric::REBALANCES, "kind" => "lost").increment(1);
                self.revoke(tpl, true);
                if let Err(e) = base.incremental_unassign(tpl) {
                    tracing::error!(error = %e, "incremental unassign failed");
                }
            }
        }
    }
}
