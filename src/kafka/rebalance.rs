//! The consumer context: assignment with offsets read from PostgreSQL, and the
//! revocation handshake.
//!
//! librdkafka runs this callback inside the poll of the main consumer queue, on
//! a tokio worker thread. The PostgreSQL reads and the wait for draining workers
//! run under `block_in_place`, so the runtime moves its other tasks away instead
//! of stalling them.

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;

use crate::error::{Class, Error};
use crate::pipeline::Pipeline;

pub struct Context {
    pipeline: Option<Arc<Pipeline>>,
}

impl Context {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Context {
            pipeline: Some(pipeline),
        }
    }

    /// A context with no pipeline behind it, for clients that never join a group.
    pub fn detached() -> Self {
        Context { pipeline: None }
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        self.record_statistics(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let err = Error::Kafka(error);
        if err.class() == Class::Fatal {
            tracing::error!(error = %err, reason, "fatal Kafka error");
            if let Some(p) = &self.pipeline {
                p.fail(err);
            }
        } else {
            // Broker transport errors and the like: librdkafka reconnects by itself.
            tracing::warn!(error = %err, reason, "Kafka client error");
        }
    }
}

impl Context {
    fn record_statistics(&self, stats: &Statistics) {
        let Some(pipeline) = &self.pipeline else {
            return;
        };
        for (name, topic) in &stats.topics {
            for (id, p) in &topic.partitions {
                // The last stable offset is as far as a read_committed consumer can go.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if *id >= 0 && end >= 0 {
                    pipeline.lag.set_end(name, *id, end);
                }
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
        let Some(pipeline) = &self.pipeline else {
            return;
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                pipeline.on_assign(tpl);
                if let Err(e) = base.incremental_assign(tpl) {
                    // librdkafka's default rebalance ignores this error; an assignment
                    // that did not take would leave partitions unconsumed without a word.
                    tracing::error!(error = %e, "incremental assign failed");
                    pipeline.fail(Error::Kafka(e));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                pipeline.on_revoke(tpl, base.assignment_lost());
                if let Err(e) = base.incremental_unassign(tpl) {
                    tracing::error!(error = %e, "incremental unassign failed");
                }
            }
            other => {
                // As librdkafka's default does: give the partitions up. Nothing of
                // ours may commit for them any more.
                tracing::error!(error = ?other, "rebalance error: releasing partitions");
                pipeline.on_revoke(tpl, true);
                if let Err(e) = base.incremental_unassign(tpl) {
                    tracing::error!(error = %e, "incremental unassign failed");
                }
            }
        }
    }
}
