//! The worker's shared limits: the memory budget batches reserve from, the
//! fetch slots that bound librdkafka's prefetch, and the count of live workers
//! per partition.

use super::*;

/// The memory budget for batches, in KiB (semaphore permits are u32).
#[derive(Debug)]
pub struct Budget {
    pub(super) semaphore: Arc<Semaphore>,
    kib: u32,
}

impl Budget {
    pub fn new(bytes: usize) -> Self {
        let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        Budget {
            semaphore: Arc::new(Semaphore::new(kib as usize)),
            kib,
        }
    }

    pub(super) fn permits_for(&self, bytes: usize) -> u32 {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        kib.clamp(1, self.kib)
    }

    /// Publishes what batches hold now.
    pub fn record(&self) {
        let free = self.semaphore.available_permits() as f64;
        let used = (f64::from(self.kib) - free).max(0.0) * 1024.0;
        metrics::gauge!(metric::INFLIGHT_BYTES).set(used);
    }
}

/// Which partitions may fetch. librdkafka's prefetch limit holds per partition
/// and is fixed when the consumer is created, so its share of the budget is
/// kept by letting only so many partitions fetch at once: a partition fetches
/// while it holds a slot and is paused while it does not. A partition that
/// pauses also frees its prefetch ([`crate::kafka::pause`]), so a released
/// slot frees its memory.
#[derive(Debug)]
pub struct FetchSlots {
    semaphore: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// A partition's right to fetch; dropping it gives the slot back.
#[derive(Debug)]
pub struct FetchSlot {
    _permit: OwnedSemaphorePermit,
}

impl FetchSlots {
    pub fn new(slots: usize) -> Self {
        metrics::gauge!(metric::FETCH_SLOTS).set(slots as f64);
        FetchSlots {
            semaphore: Arc::new(Semaphore::new(slots.max(1))),
            waiting: AtomicUsize::new(0),
        }
    }

    pub(super) fn try_take(&self) -> Option<FetchSlot> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(self.taken(permit))
    }

    /// Waits for a slot, first come first served: a partition that gives its
    /// slot up queues behind those already waiting.
    pub(super) async fn take(&self) -> Option<FetchSlot> {
        let permit = {
            // Counted down on drop: a wait cut short by a stop stops waiting.
            let _waiting = Waiting::new(&self.waiting);
            self.semaphore.clone().acquire_owned().await.ok()?
        };
        Some(self.taken(permit))
    }

    /// Whether a partition waits for a slot: then a holder gives its own up
    /// at its next turn.
    pub(super) fn contended(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    fn taken(&self, permit: OwnedSemaphorePermit) -> FetchSlot {
        metrics::gauge!(metric::FETCHING_PARTITIONS).increment(1.0);
        FetchSlot { _permit: permit }
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        metrics::gauge!(metric::FETCHING_PARTITIONS).decrement(1.0);
    }
}

/// Counts the live workers of each partition: the coordinator's promise is at
/// most one, and this is where a broken promise would show.
#[derive(Debug, Default)]
pub struct LiveWorkers {
    live: Mutex<HashMap<TopicPartition, usize>>,
}

/// One live worker; dropping it (the task ended or was aborted) ends it.
#[derive(Debug)]
pub struct Alive<'a> {
    workers: &'a LiveWorkers,
    partition: TopicPartition,
}

impl LiveWorkers {
    pub(super) fn enter(&self, topic: &str, partition: i32) -> Alive<'_> {
        let key = (topic.to_string(), partition);
        let n = {
            let mut live = self.lock();
            let n = live.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        if n > 1 {
            metrics::counter!(metric::PARTITION_WORKER_OVERLAPS).increment(1);
            tracing::error!(
                topic,
                partition,
                live = n,
                "two workers of one partition are alive: a bug; its offsets are still fenced"
            );
        }
        Self::publish(&key, n);
        Alive {
            workers: self,
            partition: key,
        }
    }

    /// Live workers of a partition.
    pub fn count(&self, topic: &str, partition: i32) -> usize {
        self.lock()
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    fn publish(key: &TopicPartition, n: usize) {
        let labels = [("topic", key.0.clone()), ("partition", key.1.to_string())];
        metrics::gauge!(metric::PARTITION_WORKERS, &labels).set(n as f64);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, usize>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        let mut live = self.workers.lock();
        let n = live.get(&self.partition).copied().unwrap_or(1) - 1;
        if n == 0 {
            live.remove(&self.partition);
        } else {
            live.insert(self.partition.clone(), n);
        }
        LiveWorkers::publish(&self.partition, n);
    }
}
