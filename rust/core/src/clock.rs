//! Time sources. Everything in the core that measures intervals uses `now_ns()` (monotonic, immune
//! to wall-clock jumps); only operation timestamps use the wall clock.
//!
//! `Clock` exists so that time-dependent logic (the token bucket) can be tested with a
//! `ManualClock` instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Monotonic nanoseconds since a process-wide origin (the first call). `u64` ns lasts 584 years,
/// so callers may subtract and add without overflow worries in practice.
#[inline]
pub fn now_ns() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    Instant::now().saturating_duration_since(origin).as_nanos() as u64
}

fn since_epoch() -> Duration {
    // A clock set before 1970 is a broken host; report 0 rather than panic on the hot path.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Wall clock, whole seconds since the Unix epoch (Customer.io timestamps are seconds).
#[inline]
pub fn unix_seconds() -> i64 {
    since_epoch().as_secs() as i64
}

/// Wall clock, milliseconds since the Unix epoch (the ULID time field).
#[inline]
pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// A monotonic nanosecond source.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// The real clock: `now_ns()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        now_ns()
    }
}

/// A clock that moves only when told to; shareable between threads (wrap it in an `Arc`).
#[derive(Debug, Default)]
pub struct ManualClock {
    ns: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            ns: AtomicU64::new(start_ns),
        }
    }

    pub fn advance(&self, d: Duration) {
        let step = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update never fails with a closure returning Some.
        let _ = self
            .ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(step))
            });
    }

    pub fn set(&self, ns: u64) {
        self.ns.store(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::SeqCst)
    }
}

// So a test can keep a handle on the clock it gave away.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    #[inline]
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    #[inline]
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let mut last = now_ns();
        for _ in 0..10_000 {
            let t = now_ns();
            assert!(t >= last, "{t} < {last}");
            last = t;
        }
    }

    #[test]
    fn monotonic_tracks_instant() {
        let a = now_ns();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let b = now_ns();
        assert!(b - a >= 5_000_000, "elapsed {} ns", b - a);
        assert!(MonotonicClock.now_ns() >= b);
    }

    #[test]
    fn wall_clock_is_plausible_and_consistent() {
        let s = unix_seconds();
        let ms = unix_millis();
        assert!(s > 1_600_000_000, "{s}");
        assert!((ms / 1000) as i64 - s <= 1 && s - (ms / 1000) as i64 <= 1);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Arc::new(ManualClock::new(100));
        let shared: Arc<dyn Clock> = clock.clone();
        assert_eq!(shared.now_ns(), 100);
        clock.advance(Duration::from_micros(2));
        assert_eq!(shared.now_ns(), 2_100);
        clock.set(7);
        assert_eq!(clock.now_ns(), 7);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ns(), u64::MAX);
    }
}
