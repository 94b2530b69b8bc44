//! A partition's batch: consecutive messages of one partition, bounded by
//! messages, bytes and linger time, carrying its offset range.

use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use crate::error::Error;

/// One Kafka message as the batch holds it: the original bytes, kept unchanged
/// for the dead-letter path. Decoding waits until the batch is processed, after
/// the crash guard has recorded its range.
#[derive(Debug)]
pub struct Received {
    pub offset: i64,
    /// Kafka message timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Vec<u8>,
    /// The tenant, or why the message has none.
    pub tenant: Result<std::sync::Arc<str>, Error>,
    /// What the message will take in memory once decoded (counted before
    /// decoding), or why it is refused without being decoded.
    pub decoded: Result<u64, Error>,
}

impl Received {
    /// The memory this message holds while it is in flight: its bytes as
    /// received (key and headers included) and what decoding will make of them.
    pub fn budget_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let received = self.payload.len() + self.key.as_ref().map_or(0, Vec::len) + headers;
        let decoded = self.decoded.as_ref().map_or(0, |d| *d);
        received.saturating_add(usize::try_from(decoded).unwrap_or(usize::MAX))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub linger: Duration,
}

#[derive(Debug)]
pub struct Batch {
    pub messages: Vec<Received>,
    bytes: usize,
    opened: Option<Instant>,
    /// The in-flight budget this batch holds; released when the batch is dropped.
    permit: Option<OwnedSemaphorePermit>,
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            messages: Vec::new(),
            bytes: 0,
            opened: None,
            permit: None,
        }
    }

    pub fn push(&mut self, message: Received, permit: Option<OwnedSemaphorePermit>) {
        self.opened.get_or_insert_with(Instant::now);
        self.bytes += message.payload.len();
        self.messages.push(message);
        match (&mut self.permit, permit) {
            (Some(held), Some(p)) => held.merge(p),
            (held @ None, p) => *held = p,
            (Some(_), None) => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_full(&self, limits: &BatchLimits) -> bool {
        self.messages.len() >= limits.max_messages || self.bytes >= limits.max_bytes
    }

    /// When linger runs out; `None` while the batch is empty.
    pub fn deadline(&self, limits: &BatchLimits) -> Option<Instant> {
        self.opened.map(|t| t + limits.linger)
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.messages.first().map(|m| m.offset)
    }

    /// The offset stored once this batch commits: its last offset + 1.
    pub fn next_offset(&self) -> Option<i64> {
        self.messages.last().map(|m| m.offset + 1)
    }

    /// Number of distinct tenants, for the batch's log line.
    pub fn tenant_count(&self) -> usize {
        let mut tenants: Vec<&str> = self
            .messages
            .iter()
            .filter_map(|m| m.tenant.as_deref().ok())
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        tenants.len()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(offset: i64, len: usize) -> Received {
        Received {
            offset,
            timestamp_ms: None,
            key: None,
            headers: vec![],
            payload: vec![0; len],
            tenant: Ok("t".into()),
            decoded: Ok(0),
        }
    }

    #[test]
    fn closes_on_messages_or_bytes_and_tracks_offsets() {
        let limits = BatchLimits {
            max_messages: 3,
            max_bytes: 100,
            linger: Duration::from_millis(50),
        };
        let mut b = Batch::new();
        assert!(b.deadline(&limits).is_none());
        b.push(received(7, 10), None);
        b.push(received(9, 10), None);
        assert!(!b.is_full(&limits));
        assert_eq!((b.first_offset(), b.next_offset()), (Some(7), Some(10)));
        b.push(received(10, 10), None);
        assert!(b.is_full(&limits));
        let mut big = Batch::new();
        big.push(received(0, 100), None);
        assert!(big.is_full(&limits));
        assert!(big.deadline(&limits).is_some());
    }
}
