//! Fork-safe locks: thin wrappers over `std::sync` with parking_lot's call shapes (no poisoning,
//! `Condvar::wait(&mut guard)`).
//!
//! Why not parking_lot: it parks every blocked thread in one process-wide hash table, linking the
//! thread's `ThreadData` (in its TLS) into a bucket queue. A `fork()` taken while one of our
//! threads is parked (a sender idle in `Lane::wait`, the normal state) leaves that link in the
//! child's table, pointing into a stack glibc hands to the child's next new thread: the next park
//! that hashes to the bucket writes through it and corrupts that thread's TLS (seen as crashes in
//! `tcache_thread_shutdown` and stuck locks in gunicorn `--preload` workers). `std::sync` on Linux
//! is a futex in the lock itself: a child that never touches the parent's locks never sees them.

use std::ops::{Deref, DerefMut};
use std::sync::{self as std_sync, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Mutex<T>(std_sync::Mutex<T>);

/// Holds the std guard in an Option so `Condvar::wait` can take it by value and put it back.
pub struct MutexGuard<'a, T>(Option<std_sync::MutexGuard<'a, T>>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        Mutex(std_sync::Mutex::new(value))
    }

    /// A panic while holding the lock cannot leave our data half-updated in a way later users
    /// care about (counters, queues of owned values), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard(Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)))
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0
            .as_ref()
            .expect("guard present outside Condvar::wait")
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0
            .as_mut()
            .expect("guard present outside Condvar::wait")
    }
}

pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

#[derive(Debug, Default)]
pub struct Condvar(std_sync::Condvar);

impl Condvar {
    pub const fn new() -> Self {
        Condvar(std_sync::Condvar::new())
    }

    pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        let inner = guard.0.take().expect("guard present");
        guard.0 = Some(self.0.wait(inner).unwrap_or_else(PoisonError::into_inner));
    }

    pub fn wait_for<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        timeout: Duration,
    ) -> WaitTimeoutResult {
        let inner = guard.0.take().expect("guard present");
        let (inner, result) = self
            .0
            .wait_timeout(inner, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        guard.0 = Some(inner);
        WaitTimeoutResult(result.timed_out())
    }

    pub fn wait_until<T>(
        &self,
        guard: &mut MutexGuard<'_, T>,
        deadline: Instant,
    ) -> WaitTimeoutResult {
        let now = Instant::now();
        if now >= deadline {
            return WaitTimeoutResult(true);
        }
        self.wait_for(guard, deadline - now)
    }

    pub fn notify_all(&self) {
        self.0.notify_all();
    }
}

#[derive(Debug, Default)]
pub struct RwLock<T>(std_sync::RwLock<T>);

impl<T> RwLock<T> {
    pub const fn new(value: T) -> Self {
        RwLock(std_sync::RwLock::new(value))
    }

    pub fn read(&self) -> std_sync::RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> std_sync::RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn condvar_wait_until_times_out_and_wakes() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let mut guard = pair.0.lock();
        let started = Instant::now();
        assert!(pair
            .1
            .wait_until(&mut guard, started + Duration::from_millis(20))
            .timed_out());
        assert!(started.elapsed() >= Duration::from_millis(20));
        drop(guard);
        let other = pair.clone();
        let waker = std::thread::spawn(move || {
            *other.0.lock() = true;
            other.1.notify_all();
        });
        let mut guard = pair.0.lock();
        while !*guard {
            pair.1.wait_for(&mut guard, Duration::from_secs(5));
        }
        waker.join().unwrap();
        assert!(*guard);
    }
}
