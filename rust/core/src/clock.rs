//! Time sources. Everything in the core that measures intervals uses `now_ns()` (monotonic, immune
//! to wall-clock jumps); only operation timestamps use the wall clock.
//!
//! A `track()` call needs both clocks (the monotonic one for dedup and queue age, the wall one for
//! the ULID and the default timestamp), and each read is a vDSO call that measured ~40 ns on a
//! KVM guest: [`unix_millis_at`] turns the monotonic reading the call already has into wall-clock
//! time through an offset between the two clocks that is re-read at most once a second.
//!
//! `Clock` exists so that time-dependent logic (the token bucket) can be tested with a
//! `ManualClock` instead of sleeping.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC` at the first `now_ns()` call, plus one, so 0 means "not read yet".
static ORIGIN: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds of `CLOCK_MONOTONIC` (what `Instant` reads on Linux), without `Instant`'s
/// `Duration` arithmetic.
#[inline]
fn monotonic_raw_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, so the
    // call cannot fail (a zeroed `ts` would only make one reading early, never unsound).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Monotonic nanoseconds since a process-wide origin (the first call). `u64` ns lasts 584 years,
/// so callers may subtract and add without overflow worries in practice.
#[inline]
pub fn now_ns() -> u64 {
    let raw = monotonic_raw_ns();
    let mut origin = ORIGIN.load(Ordering::Relaxed);
    if origin == 0 {
        // The first reading wins; a thread that lost the race uses the winner's.
        origin = match ORIGIN.compare_exchange(0, raw + 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => raw + 1,
            Err(current) => current,
        };
    }
    (raw + 1).saturating_sub(origin)
}

fn since_epoch() -> Duration {
    // A clock set before 1970 is a broken host; report 0 rather than panic on the hot path.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Wall clock, milliseconds since the Unix epoch (the ULID time field).
#[inline]
pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// How long an offset between the two clocks is used before it is read again. An NTP slew (at
/// most 500 ppm) moves the wall clock 0.5 ms in that time; a step (an operator setting the
/// clock) shows within this second.
const WALL_OFFSET_TTL_NS: u64 = 1_000_000_000;
/// `now_ns()` when the offset below was read, plus one (0: never).
static WALL_READ_AT: AtomicU64 = AtomicU64::new(0);
/// Unix-epoch nanoseconds minus `now_ns()`, as last read.
static WALL_OFFSET_NS: AtomicI64 = AtomicI64::new(0);

/// Wall-clock milliseconds since the Unix epoch at `mono_ns`, a recent `now_ns()` reading: the
/// same instant as [`unix_millis`] within a millisecond, for one vDSO call less. Threads that race
/// on a refresh each store a correct offset; a reader that pairs a new `WALL_READ_AT` with the
/// old offset is off by what the clock moved in the last second, once.
#[inline]
pub fn unix_millis_at(mono_ns: u64) -> u64 {
    let read_at = WALL_READ_AT.load(Ordering::Relaxed);
    let offset = if read_at == 0 || mono_ns.wrapping_sub(read_at - 1) >= WALL_OFFSET_TTL_NS {
        refresh_wall_offset()
    } else {
        WALL_OFFSET_NS.load(Ordering::Relaxed)
    };
    let wall_ns = (mono_ns as i64).saturating_add(offset);
    (wall_ns.max(0) / 1_000_000) as u64
}

#[cold]
fn refresh_wall_offset() -> i64 {
    // Read the wall clock between two monotonic readings and pair it with their midpoint, so
    // the offset is as exact as the reads are close.
    let before = now_ns();
    let wall = since_epoch().as_nanos() as i64;
    let after = now_ns();
    let offset = wall - (before + (after - before) / 2) as i64;
    WALL_OFFSET_NS.store(offset, Ordering::Relaxed);
    WALL_READ_AT.store(before + 1, Ordering::Relaxed);
    offset
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
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let b = now_ns();
        assert!(b - a >= 5_000_000, "elapsed {} ns", b - a);
        assert!(MonotonicClock.now_ns() >= b);
    }

    #[test]
    fn wall_clock_is_plausible_and_consistent() {
        let ms = unix_millis();
        let s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ms > 1_600_000_000_000, "{ms}");
        assert!((ms / 1000).abs_diff(s) <= 1, "{ms} {s}");
    }

    #[test]
    fn wall_time_from_a_monotonic_reading_matches_the_wall_clock() {
        for _ in 0..3 {
            let before = unix_millis();
            let at = unix_millis_at(now_ns());
            let after = unix_millis();
            assert!(before <= at + 1 && at <= after + 1, "{before} {at} {after}");
            std::thread::sleep(Duration::from_millis(2));
        }
        // A reading a second later than the last refresh reads the offset again, and still agrees.
        let later = now_ns() + 2 * WALL_OFFSET_TTL_NS;
        let expected = unix_millis() + 2_000;
        let got = unix_millis_at(later);
        assert!(got.abs_diff(expected) <= 2, "{got} vs {expected}");
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
