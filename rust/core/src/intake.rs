//! Intake: what happens to an encoded operation between the caller's thread and a lane, and what
//! happens when a delivered batch comes back.
//!
//! Per call (the binding encodes into `with_scratch` first): dedup check -> push under the
//! overflow policy (`OnFull`) -> dedup record -> count. `ack` closes the loop: delivery latency per
//! op and the `delivered` counter. Everything here is plain Rust; the binding crate only converts
//! arguments and releases the GIL around `BlockingWait::block`.

use std::cell::Cell;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, SeqCst},
};
use std::time::Duration;

use crate::batch::{Batch, Origin};
use crate::clock;
use crate::dedup::DedupSet;
use crate::dedup_policy::{DedupEntry, DedupPolicy, EventDedup};
use crate::error::{CoreError, ErrorKind};
use crate::fork;
use crate::json::py_repr;
use crate::metrics::Metrics;
use crate::ops;
use crate::queue::{Op, OpQueue};
use crate::sync::Mutex;

/// `push` results, shared with Python as module constants.
pub const ACCEPTED: i32 = 0;
pub const DEDUPED: i32 = 1;
pub const FULL: i32 = 2;
pub const FORKED: i32 = 3;
/// Refused: the core was closed ([`Shared::seal`]); nothing was queued. A call that passed its
/// tracker's "still open" check just before `close()` and pushes after the final drain would
/// otherwise be accepted and never sent nor reported.
pub const CLOSED: i32 = 4;

/// More lanes than this is a configuration mistake (one lane per region).
pub const MAX_LANES: usize = 256;

/// Waits longer than this (about 31 years) are clamped, so deadline arithmetic cannot overflow.
const MAX_WAIT_SECONDS: f64 = 1e9;

/// A seconds argument as a Duration: negative means zero, NaN is an error, huge is clamped.
pub fn seconds_arg(field: &str, value: f64) -> Result<Duration, CoreError> {
    if value.is_nan() {
        return Err(CoreError::argument(format!(
            "{field}: NaN is not a number of seconds"
        )));
    }
    Ok(Duration::from_secs_f64(value.clamp(0.0, MAX_WAIT_SECONDS)))
}

/// What a full lane does with one more operation (`Core(on_full=...)`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnFull {
    DropNewest,
    DropOldest,
    Block,
    /// Accepted into a per-lane overflow list that the caller spools (`take_overflow`).
    Spool,
}

impl OnFull {
    pub fn parse(value: &str) -> Result<Self, CoreError> {
        Ok(match value {
            "drop_newest" => OnFull::DropNewest,
            "drop_oldest" => OnFull::DropOldest,
            "block" => OnFull::Block,
            "spool" => OnFull::Spool,
            other => {
                return Err(CoreError::config(format!(
                    "on_full: {} is not one of 'drop_newest', 'drop_oldest', 'block', 'spool'",
                    py_repr(other)
                )))
            }
        })
    }
}

/// Runs a wait that may block (the `block` policy). The binding releases the GIL around it; Rust
/// callers use `InPlace`.
pub trait BlockingWait {
    fn block(&self, wait: &(dyn Fn() + Sync));
}

/// Waits on the calling thread as is.
pub struct InPlace;

impl BlockingWait for InPlace {
    fn block(&self, wait: &(dyn Fn() + Sync)) {
        wait()
    }
}

/// The constructor arguments of a core, as the caller gave them; `Shared::new` checks them.
#[derive(Clone, Debug)]
pub struct CoreConfig<'a> {
    pub lanes: usize,
    pub max_queue_ops: usize,
    pub max_queue_bytes: usize,
    pub max_batch_bytes: usize,
    pub on_full: &'a str,
    pub block_timeout: f64,
    pub dedup_ttl: f64,
    pub dedup_max_entries: usize,
    pub dedup_events: &'a str,
    pub metrics: bool,
}

impl Default for CoreConfig<'_> {
    /// The defaults of `Core(...)` in python/ciotrack/_core.pyi.
    fn default() -> Self {
        CoreConfig {
            lanes: 1,
            max_queue_ops: 1_000_000,
            max_queue_bytes: 64 << 20,
            max_batch_bytes: ops::MAX_BATCH_BYTES,
            on_full: "drop_newest",
            block_timeout: 0.0,
            dedup_ttl: 300.0,
            dedup_max_entries: 100_000,
            dedup_events: "id",
            metrics: true,
        }
    }
}

fn at_least_one(name: &str, value: usize) -> Result<usize, CoreError> {
    if value == 0 {
        return Err(CoreError::config(format!("{name}: must be at least 1")));
    }
    Ok(value)
}

/// Tells cores apart, so a batch is acked only by the core whose lane it came from.
static NEXT_CORE_ID: AtomicU64 = AtomicU64::new(1);

/// Everything a `Core`, its `Lane`s and its `Batch`es share; no Python objects inside, so it can
/// be used with the GIL released.
pub struct Shared {
    pub lanes: Vec<OpQueue>,
    pub max_batch_bytes: usize,
    max_queue_bytes: usize,
    on_full: OnFull,
    block_timeout: Duration,
    pub dedup: DedupSet,
    pub dedup_policy: DedupPolicy,
    pub metrics: Metrics,
    /// Ops refused under `on_full="spool"`, one list per lane (the caller spools each lane's ops
    /// under that lane's region, so the lane must survive the hand-over).
    overflow: Mutex<Vec<Vec<Box<[u8]>>>>,
    /// The fork generation this core was made in; any other means we are in a forked child.
    generation: u64,
    id: u64,
    /// Set by `seal()`: every later submit answers CLOSED.
    sealed: AtomicBool,
}

impl Shared {
    /// Checks every argument (in the order of the signature) and builds the core's state.
    pub fn new(config: &CoreConfig<'_>) -> Result<Self, CoreError> {
        let lanes = at_least_one("lanes", config.lanes)?;
        if lanes > MAX_LANES {
            return Err(CoreError::config(format!(
                "lanes: {lanes} is more than {MAX_LANES}"
            )));
        }
        let max_queue_ops = at_least_one("max_queue_ops", config.max_queue_ops)?;
        let max_queue_bytes = at_least_one("max_queue_bytes", config.max_queue_bytes)?;
        let max_batch_bytes = config.max_batch_bytes;
        // The smallest useful batch holds the envelope and one tiny op.
        if !(64..=ops::MAX_BATCH_BYTES).contains(&max_batch_bytes) {
            return Err(CoreError::config(format!(
                "max_batch_bytes: {max_batch_bytes} is outside 64..={}",
                ops::MAX_BATCH_BYTES
            )));
        }
        let on_full = OnFull::parse(config.on_full)?;
        let events = EventDedup::parse(config.dedup_events)?;
        let as_config = |e: CoreError| CoreError::config(e.message);
        let block_timeout =
            seconds_arg("block_timeout", config.block_timeout).map_err(as_config)?;
        let ttl = seconds_arg("dedup_ttl", config.dedup_ttl).map_err(as_config)?;
        let ttl_ns = ttl.as_nanos().min(u64::MAX as u128) as u64;
        Ok(Shared {
            lanes: (0..lanes)
                .map(|_| OpQueue::new(max_queue_ops, max_queue_bytes))
                .collect(),
            max_batch_bytes,
            max_queue_bytes,
            on_full,
            block_timeout,
            dedup: DedupSet::new(ttl_ns, config.dedup_max_entries.max(1)),
            dedup_policy: DedupPolicy {
                enabled: ttl_ns > 0,
                events,
            },
            metrics: Metrics::new(config.metrics),
            overflow: Mutex::new(vec![Vec::new(); lanes]),
            generation: fork::generation(),
            id: NEXT_CORE_ID.fetch_add(1, Relaxed),
            sealed: AtomicBool::new(false),
        })
    }

    /// The queue of lane `index`, or an IndexError-kind error naming how many there are.
    #[inline]
    pub fn queue(&self, index: usize) -> Result<&OpQueue, CoreError> {
        self.lanes.get(index).ok_or_else(|| {
            CoreError::new(
                ErrorKind::NoSuchLane,
                format!(
                    "lane {index} does not exist (this core has {})",
                    self.lanes.len()
                ),
            )
        })
    }

    /// From now on every submit answers CLOSED (queued ops stay drainable): called before the
    /// final drain, so nothing can be queued after it where no one would send it.
    pub fn seal(&self) {
        self.sealed.store(true, SeqCst);
    }

    /// True in a child forked since this core was made: nothing may be queued there.
    #[inline]
    pub fn forked(&self) -> bool {
        fork::generation() != self.generation
    }

    /// Counts a call that raised (`invalid`) and passes its result on.
    #[inline]
    pub fn count_invalid<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.metrics.invalid.fetch_add(1, Relaxed);
        }
        result
    }

    /// Dedup check, push under the overflow policy, dedup record, count. `lane` must exist
    /// (checked with `queue()` before encoding, so a bad index costs no encode).
    pub fn submit(
        &self,
        lane: usize,
        bytes: &[u8],
        dedup: Option<DedupEntry>,
        waiter: &impl BlockingWait,
    ) -> i32 {
        self.submit_at(lane, bytes, dedup, clock::now_ns(), waiter)
    }

    /// [`submit`](Self::submit) at `now`, a `clock::now_ns()` reading the caller already took
    /// (the tracking calls read the clock once, for this and for the ULID's wall time).
    pub fn submit_at(
        &self,
        lane: usize,
        bytes: &[u8],
        dedup: Option<DedupEntry>,
        now: u64,
        waiter: &impl BlockingWait,
    ) -> i32 {
        if self.sealed.load(Acquire) {
            return CLOSED;
        }
        let queue = &self.lanes[lane];
        if let Some(entry) = dedup {
            if self.dedup.is_duplicate(entry.key, entry.value, now) {
                return self.deduped(entry);
            }
        }
        let op = Op {
            bytes: Box::from(bytes),
            accepted_ns: now,
        };
        let code = match queue.push(op) {
            Ok(()) => ACCEPTED,
            Err(op) => self.overflow(lane, queue, op, dedup, waiter),
        };
        if code == ACCEPTED {
            if let Some(entry) = dedup {
                self.dedup.record(entry.key, entry.value, now);
            }
            self.metrics.accepted.fetch_add(1, Relaxed);
        }
        code
    }

    /// Counts a call found to repeat `entry`.
    fn deduped(&self, entry: DedupEntry) -> i32 {
        let counter = if entry.identify {
            &self.metrics.deduped_identify
        } else {
            &self.metrics.deduped_event
        };
        counter.fetch_add(1, Relaxed);
        DEDUPED
    }

    /// The lane refused `op`: apply `on_full`. `dedup` is the op's entry, checked before the first
    /// push and checked again after every wait of `block`.
    #[cold]
    fn overflow(
        &self,
        lane: usize,
        queue: &OpQueue,
        mut op: Op,
        dedup: Option<DedupEntry>,
        waiter: &impl BlockingWait,
    ) -> i32 {
        let refuse = || {
            self.metrics.dropped_full.fetch_add(1, Relaxed);
            FULL
        };
        // An op larger than the whole lane can never fit: no policy can help.
        if op.bytes.len() > self.max_queue_bytes {
            return refuse();
        }
        match self.on_full {
            OnFull::DropNewest => refuse(),
            OnFull::Spool => {
                self.overflow.lock()[lane].push(op.bytes);
                self.metrics.incr("overflowed", 1);
                ACCEPTED
            }
            OnFull::DropOldest => loop {
                let Some(evicted) = queue.evict_oldest() else {
                    // Other threads emptied the lane yet the push fails: give up rather than spin.
                    return match queue.push(op) {
                        Ok(()) => ACCEPTED,
                        Err(_) => refuse(),
                    };
                };
                // Never sent: sending it again must not be taken for a duplicate.
                for key in self.dedup_policy.keys_of_lost(&evicted.bytes) {
                    self.dedup.forget(key);
                }
                self.metrics.dropped_oldest.fetch_add(1, Relaxed);
                match queue.push(op) {
                    Ok(()) => return ACCEPTED,
                    Err(back) => op = back,
                }
            },
            OnFull::Block => {
                let deadline = clock::now_ns().saturating_add(self.block_timeout.as_nanos() as u64);
                loop {
                    let now = clock::now_ns();
                    if now >= deadline || queue.is_closed() {
                        return refuse();
                    }
                    let wait = Duration::from_nanos(deadline - now);
                    let len = op.bytes.len();
                    waiter.block(&|| {
                        queue.wait_space(len, wait);
                    });
                    // The wait released the GIL: another thread may have queued the same operation
                    // meanwhile (and recorded it). Back under the GIL, this check, the push and the
                    // record are one step again.
                    if let Some(entry) = dedup {
                        if self
                            .dedup
                            .is_duplicate(entry.key, entry.value, clock::now_ns())
                        {
                            return self.deduped(entry);
                        }
                    }
                    match queue.push(op) {
                        Ok(()) => return ACCEPTED,
                        Err(back) => op = back,
                    }
                }
            }
        }
    }

    /// The next batch of lane `index` (FIFO, at most `max_bytes` and `max_ops`), marked as this
    /// core's so `ack` can tell it from a batch of another core or of `Batch::from_encoded`.
    pub fn next_batch(
        &self,
        index: usize,
        max_bytes: Option<usize>,
        max_ops: Option<usize>,
    ) -> Result<Option<Batch>, CoreError> {
        let queue = self.queue(index)?;
        let max_ops = max_ops.unwrap_or(usize::MAX);
        if max_ops == 0 {
            return Err(CoreError::argument("max_ops: must be at least 1"));
        }
        let max_bytes = max_bytes.unwrap_or(self.max_batch_bytes);
        Ok(queue.next_batch(max_bytes, max_ops).map(|mut batch| {
            batch.origin = Some(Origin {
                core: self.id,
                lane: index,
            });
            batch
        }))
    }

    /// Operations refused under `on_full="spool"`: one lane's, or every lane's (lane 0's first).
    pub fn take_overflow(&self, lane: Option<usize>) -> Result<Vec<Box<[u8]>>, CoreError> {
        Ok(match lane {
            Some(index) => {
                self.queue(index)?;
                std::mem::take(&mut self.overflow.lock()[index])
            }
            None => {
                let mut lists = self.overflow.lock();
                lists.iter_mut().flat_map(std::mem::take).collect()
            }
        })
    }

    /// How many refused operations wait to be taken (the gauge `overflow_ops`).
    pub fn overflow_len(&self) -> usize {
        self.overflow.lock().iter().map(Vec::len).sum()
    }

    /// Pushes already-encoded ops back (spool replay), stopping at the first that does not fit:
    /// pushing later, smaller ops would break FIFO order. Returns how many fitted; 0 when forked.
    pub fn requeue<'a>(
        &self,
        lane: usize,
        ops: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize, CoreError> {
        let queue = self.queue(lane)?;
        if self.forked() {
            return Ok(0);
        }
        let mut fitted = 0;
        for bytes in ops {
            let op = Op {
                bytes: Box::from(bytes),
                accepted_ns: clock::now_ns(),
            };
            if queue.push(op).is_err() {
                break;
            }
            fitted += 1;
        }
        Ok(fitted)
    }

    /// Refuses a batch that is not from one of this core's lanes: its ops were never counted as
    /// accepted here, so acking it would count deliveries this core never took in.
    pub fn check_ack(&self, batch: &Batch) -> Result<(), CoreError> {
        match batch.origin {
            Some(origin) if origin.core == self.id => Ok(()),
            Some(_) => Err(CoreError::argument(
                "ack: this batch was taken from a lane of another Core",
            )),
            None => Err(CoreError::argument(
                "ack: this batch was built by Batch.from_ops and belongs to no lane; \
                 only a batch taken with Lane.next_batch (or split from one) can be acked",
            )),
        }
    }

    /// The batch is finished: record end-to-end latency for each delivered op, count
    /// `delivered`. Indices in `failed` out of range are ignored. Returns how many were delivered.
    pub fn ack(&self, batch: &Batch, failed: &[usize]) -> Result<u64, CoreError> {
        self.check_ack(batch)?;
        let count = batch.count();
        let mut is_failed = vec![false; count];
        for &i in failed {
            if i < count {
                is_failed[i] = true;
            }
        }
        let now = clock::now_ns();
        // One lookup per batch, not per op.
        let latency = self
            .metrics
            .enabled()
            .then(|| self.metrics.histogram("delivery_latency_seconds"));
        let delivered_ns = batch
            .accepted_ns
            .iter()
            .zip(&is_failed)
            .filter(|&(_, &failed)| !failed)
            .map(|(&accepted, _)| accepted);
        let delivered = delivered_ns.clone().count() as u64;
        if let Some(latency) = &latency {
            latency.record_many(
                delivered_ns.map(|accepted| now.saturating_sub(accepted) as f64 / 1e9),
            );
        }
        self.metrics.incr("delivered", delivered);
        Ok(delivered)
    }
}

thread_local! {
    /// Reused output buffer: an operation is encoded here, then copied once into an exact-size box.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with the thread's scratch buffer. Re-entrant calls (Python code run by the encoder
/// calling back into the core) get a fresh buffer instead of a double borrow.
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.with(|cell| cell.take());
    buf.clear();
    if buf.capacity() == 0 {
        buf.reserve(1024);
    }
    let result = f(&mut buf);
    // Keep a typical buffer; let an unusually large one go rather than pin its memory.
    if buf.capacity() <= 4 * ops::MAX_OP_BYTES {
        SCRATCH.with(|cell| cell.set(buf));
    }
    result
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
