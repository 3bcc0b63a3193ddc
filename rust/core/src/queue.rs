//! One lane: a bounded lock-free MPMC queue of encoded operations.
//!
//! Invariants:
//! * `count` and `bytes` are *reservations*: a producer reserves its slot and its bytes with a CAS
//!   before touching the ring and rolls back on failure, so concurrent producers never overshoot
//!   `max_ops` / `max_bytes`. They are released only after an op has left the ring (and the carry),
//!   so `ring.len() <= count <= max_ops`: the bound is enforced by the reservation, not by the ring.
//! * `pushed` is bumped *before* the ring push. Hence when a caller reads `pushed() == T`, every op
//!   whose push had returned by then sits at a ring position `< T`: the ops ahead of it were reserved
//!   and counted earlier still. With all takes serialised under `drain`, an op's take ordinal equals
//!   its push ordinal, which is what flush accounting (sender.py) relies on.
//! * Every take (pop, evict, batch, drain, clear) happens under the `drain` mutex and the one-slot
//!   carry (an op popped for a batch that did not fit) is always taken first, so FIFO holds.
//! * Producers pay for a notification only when a `wait()` is asleep and its byte threshold is met
//!   (`wake_at`), and consumers only when a `wait_space()` is asleep (`space_waiters`).

use crate::sync::{Condvar, Mutex, MutexGuard};
use crossbeam_queue::SegQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// One encoded operation and when the core accepted it (`clock::now_ns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub bytes: Box<[u8]>,
    pub accepted_ns: u64,
}

impl Op {
    pub fn new(bytes: impl Into<Box<[u8]>>, accepted_ns: u64) -> Op {
        Op {
            bytes: bytes.into(),
            accepted_ns,
        }
    }
}

/// State guarded by the drain mutex: the op that did not fit into the previous batch.
pub(crate) struct Drain {
    pub(crate) carry: Option<Op>,
}

pub struct OpQueue {
    ring: SegQueue<Op>,
    max_ops: usize,
    max_bytes: usize,
    count: AtomicUsize,
    bytes: AtomicUsize,
    pushed: AtomicU64,
    taken: AtomicU64,
    closed: AtomicBool,
    drain: Mutex<Drain>,
    /// Guards the condvars; holds the wake() epoch so a waiter can tell it was woken on purpose.
    signal: Mutex<u64>,
    data_ready: Condvar,
    space_free: Condvar,
    /// Smallest threshold of a sleeping `wait()`, `usize::MAX` when none. Reset to MAX by every
    /// notify_all: each woken waiter re-publishes its threshold before sleeping again, so a stale
    /// value (a waiter that left on timeout) costs at most one spurious notification.
    wake_at: AtomicUsize,
    space_waiters: AtomicUsize,
    notifications: AtomicU64,
    /// Threads inside a condvar wait right now (diagnostics; changed only under `signal`).
    sleepers: AtomicUsize,
}

fn reserve(counter: &AtomicUsize, n: usize, max: usize) -> Option<usize> {
    let mut current = counter.load(SeqCst);
    loop {
        match current.checked_add(n) {
            Some(next) if next <= max => {
                match counter.compare_exchange_weak(current, next, SeqCst, SeqCst) {
                    Ok(previous) => return Some(previous),
                    Err(actual) => current = actual,
                }
            }
            _ => return None,
        }
    }
}

impl OpQueue {
    /// `max_ops == 0` or `max_bytes == 0` makes a lane that refuses everything. The ring is an
    /// unbounded lock-free segment queue that grows in blocks as ops arrive: an idle lane costs a
    /// few hundred bytes, not `max_ops` preallocated slots (a prefork server has one per worker).
    pub fn new(max_ops: usize, max_bytes: usize) -> Self {
        OpQueue {
            ring: SegQueue::new(),
            max_ops,
            max_bytes,
            count: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            pushed: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            drain: Mutex::new(Drain { carry: None }),
            signal: Mutex::new(0),
            data_ready: Condvar::new(),
            space_free: Condvar::new(),
            wake_at: AtomicUsize::new(usize::MAX),
            space_waiters: AtomicUsize::new(0),
            notifications: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
        }
    }

    pub fn max_ops(&self) -> usize {
        self.max_ops
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Never blocks. `Err(op)` when the count or byte bound would be exceeded, or the op alone is
    /// larger than `max_bytes`.
    pub fn push(&self, op: Op) -> Result<(), Op> {
        let size = op.bytes.len();
        if size > self.max_bytes || reserve(&self.count, 1, self.max_ops).is_none() {
            return Err(op);
        }
        let Some(previous) = reserve(&self.bytes, size, self.max_bytes) else {
            self.count.fetch_sub(1, SeqCst);
            // The slot we held may be the one a blocked producer is waiting for.
            self.notify_space_if_waiting();
            return Err(op);
        };
        self.pushed.fetch_add(1, SeqCst);
        self.ring.push(op);
        if previous + size >= self.wake_at.load(SeqCst) {
            self.notify_data();
        }
        Ok(())
    }

    /// The oldest op (FIFO); counts in `taken()`.
    pub fn pop(&self) -> Option<Op> {
        let mut drain = self.lock_drain();
        let op = self.take_next(&mut drain)?;
        self.commit_taken(1, op.bytes.len());
        Some(op)
    }

    /// Removes the oldest op to make room (the `drop_oldest` policy); counts in `taken()`.
    pub fn evict_oldest(&self) -> Option<Op> {
        self.pop()
    }

    /// Ops queued now, including the carry and pushes in progress.
    pub fn len(&self) -> usize {
        self.count.load(SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encoded bytes queued now, including the carry and pushes in progress.
    pub fn bytes(&self) -> usize {
        self.bytes.load(SeqCst)
    }

    /// Ops ever accepted (monotonic).
    pub fn pushed(&self) -> u64 {
        self.pushed.load(SeqCst)
    }

    /// Ops ever taken out (batched, popped, evicted, drained or cleared); `taken() <= pushed()`.
    pub fn taken(&self) -> u64 {
        self.taken.load(SeqCst)
    }

    /// Blocks until `bytes() >= min_bytes` (true), or the timeout, a `wake()` or `close()` (false,
    /// unless the threshold is met by then). Returns at once after `close()`.
    pub fn wait(&self, min_bytes: usize, timeout: Duration) -> bool {
        if self.bytes() >= min_bytes {
            return true;
        }
        if self.is_closed() {
            return false;
        }
        let deadline = Instant::now().checked_add(timeout);
        let mut epoch = self.signal.lock();
        let entered = *epoch;
        loop {
            if self.bytes() >= min_bytes {
                return true;
            }
            if self.is_closed() || *epoch != entered {
                return false;
            }
            // Publish, then check again (SeqCst on both sides): either this check sees the bytes of
            // a concurrent push, or that push sees our threshold and notifies under `signal`, which
            // we hold until the condvar wait has started.
            self.wake_at.fetch_min(min_bytes, SeqCst);
            if self.bytes() >= min_bytes {
                return true;
            }
            self.sleepers.fetch_add(1, SeqCst);
            let timed_out = match deadline {
                Some(deadline) => self.data_ready.wait_until(&mut epoch, deadline).timed_out(),
                None => {
                    self.data_ready.wait(&mut epoch);
                    false
                }
            };
            self.sleepers.fetch_sub(1, SeqCst);
            if timed_out {
                return self.bytes() >= min_bytes;
            }
        }
    }

    /// For the `block` overflow policy: blocks until an op of `op_bytes` would fit (true), or the
    /// timeout or `close()` (false unless it fits by then). Pops wake it. `wake()` deliberately does
    /// not: flush() calls wake() repeatedly, and a blocked producer must keep waiting for room.
    pub fn wait_space(&self, op_bytes: usize, timeout: Duration) -> bool {
        if op_bytes > self.max_bytes {
            return false;
        }
        let fits = || self.len() < self.max_ops && self.bytes() + op_bytes <= self.max_bytes;
        if fits() {
            return true;
        }
        if self.is_closed() {
            return false;
        }
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = self.signal.lock();
        self.space_waiters.fetch_add(1, SeqCst);
        let fitted = loop {
            if fits() {
                break true;
            }
            if self.is_closed() {
                break false;
            }
            self.sleepers.fetch_add(1, SeqCst);
            let timed_out = match deadline {
                Some(deadline) => self.space_free.wait_until(&mut guard, deadline).timed_out(),
                None => {
                    self.space_free.wait(&mut guard);
                    false
                }
            };
            self.sleepers.fetch_sub(1, SeqCst);
            if timed_out {
                break fits();
            }
        };
        self.space_waiters.fetch_sub(1, SeqCst);
        fitted
    }

    /// Ends the current `wait()`s (not `wait_space()`s) early.
    pub fn wake(&self) {
        let mut epoch = self.signal.lock();
        *epoch += 1;
        self.wake_at.store(usize::MAX, SeqCst);
        self.notifications.fetch_add(1, SeqCst);
        self.data_ready.notify_all();
    }

    /// Every current and future wait returns at once. Queued ops stay drainable; pushes still work.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        let mut epoch = self.signal.lock();
        *epoch += 1;
        self.wake_at.store(usize::MAX, SeqCst);
        self.notifications.fetch_add(1, SeqCst);
        self.data_ready.notify_all();
        self.space_free.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Takes every queued op out, carry first (FIFO); they count in `taken()`.
    pub fn drain_all(&self) -> Vec<Op> {
        let mut drain = self.lock_drain();
        let mut ops = Vec::with_capacity(self.len());
        let mut size = 0;
        while let Some(op) = self.take_next(&mut drain) {
            size += op.bytes.len();
            ops.push(op);
        }
        self.commit_taken(ops.len(), size);
        ops
    }

    /// Drops everything queued (the child after a fork); returns how many ops were dropped.
    pub fn clear(&self) -> usize {
        self.drain_all().len()
    }

    /// How many times a waiter was notified (diagnostics and tests of the no-notify fast path).
    pub fn notifications(&self) -> u64 {
        self.notifications.load(SeqCst)
    }

    // -- for batch.rs: every take goes through these, under the drain mutex -------------------

    pub(crate) fn lock_drain(&self) -> MutexGuard<'_, Drain> {
        self.drain.lock()
    }

    pub(crate) fn take_next(&self, drain: &mut Drain) -> Option<Op> {
        drain.carry.take().or_else(|| self.ring.pop())
    }

    /// `ops` ops of `size` bytes in total have left the queue for good.
    pub(crate) fn commit_taken(&self, ops: usize, size: usize) {
        if ops == 0 {
            return;
        }
        self.taken.fetch_add(ops as u64, SeqCst);
        self.release(ops, size);
    }

    fn release(&self, ops: usize, size: usize) {
        self.bytes.fetch_sub(size, SeqCst);
        self.count.fetch_sub(ops, SeqCst);
        self.notify_space_if_waiting();
    }

    fn notify_space_if_waiting(&self) {
        // Pairs with the SeqCst increment in wait_space(): it either sees our release or we see it.
        if self.space_waiters.load(SeqCst) > 0 {
            let _guard = self.signal.lock();
            self.notifications.fetch_add(1, SeqCst);
            self.space_free.notify_all();
        }
    }

    fn notify_data(&self) {
        let _guard = self.signal.lock();
        self.wake_at.store(usize::MAX, SeqCst);
        self.notifications.fetch_add(1, SeqCst);
        self.data_ready.notify_all();
    }

    /// Threads asleep in `wait()` or `wait_space()` right now.
    pub fn sleepers(&self) -> usize {
        self.sleepers.load(SeqCst)
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
