//! Token bucket (requests/s) as GCRA over one `AtomicU64`, so taking a token is one CAS.
//!
//! GCRA keeps a "theoretical arrival time" `tat`: the instant by which every token handed out so far
//! would have been paid for at `rate`. Taking a token moves `tat` to `max(tat, now) + interval`; it
//! is allowed while `tat` runs at most `burst * interval` ahead of `now`. An idle bucket (`tat <= now`)
//! is full, and the tokens ever handed out by time `t` never exceed `burst + rate * (t - t0)`.

use crate::clock::{Clock, MonotonicClock};
use crate::sync::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

pub struct TokenBucket<C: Clock = MonotonicClock> {
    clock: C,
    /// Theoretical arrival time, ns on `clock`. Starts at 0, i.e. in the past: the bucket is full.
    tat: AtomicU64,
    /// ns per token (1/rate, rounded to whole ns); 0 means unlimited.
    interval_ns: u64,
    /// How far `tat` may run ahead of now: `burst * interval`.
    burst_ns: u64,
    burst: f64,
    closed: AtomicBool,
    sleep: Mutex<()>,
    wakeup: Condvar,
    /// Threads asleep in `acquire()` (diagnostics; changed only under `sleep`).
    sleepers: AtomicUsize,
}

/// The longest interval between tokens and the longest burst window, in ns: far below `u64::MAX`,
/// so `tat + interval` and `now + burst` never saturate.
const MAX_INTERVAL_NS: f64 = 1e18;
const MAX_BURST_NS: f64 = 4e18;

impl<C: Clock> TokenBucket<C> {
    /// `rate` tokens per second (`rate <= 0` or not finite: unlimited), at most `burst` at once
    /// (at least 1). Starts full.
    pub fn new(rate: f64, burst: f64, clock: C) -> Self {
        let limited = rate > 0.0 && rate.is_finite();
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        let (interval_ns, burst_ns) = if limited {
            // Capped (a token every ~31 years at most, a burst of ~127 years): a tinier rate would
            // saturate the u64 arithmetic below, and a saturated `next` passes every check.
            let exact = (1e9 / rate).round();
            let interval = exact.clamp(1.0, MAX_INTERVAL_NS);
            let burst_ns = if exact > MAX_INTERVAL_NS {
                burst * interval // the burst in capped intervals, so it stays `burst` tokens
            } else {
                (burst * 1e9 / rate).round()
            };
            (
                interval as u64,
                burst_ns.clamp(interval, MAX_BURST_NS) as u64,
            )
        } else {
            (0, 0)
        };
        TokenBucket {
            clock,
            tat: AtomicU64::new(0),
            interval_ns,
            burst_ns,
            burst,
            closed: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wakeup: Condvar::new(),
            sleepers: AtomicUsize::new(0),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Takes one token now, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        if self.is_unlimited() {
            return Ok(());
        }
        let now = self.clock.now_ns();
        let mut tat = self.tat.load(SeqCst);
        loop {
            let next = tat.max(now).saturating_add(self.interval_ns);
            let ahead = next - now;
            if ahead > self.burst_ns {
                return Err(Duration::from_nanos(ahead - self.burst_ns));
            }
            match self.tat.compare_exchange_weak(tat, next, SeqCst, SeqCst) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Takes one token, sleeping up to `timeout` for it. False on timeout, and at once (taking
    /// nothing) once the bucket is closed, even for an unlimited bucket.
    pub fn acquire(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.is_closed() {
                return false;
            }
            let wait = match self.try_acquire() {
                Ok(()) => return true,
                Err(wait) => wait,
            };
            let nap = match deadline {
                Some(deadline) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return false;
                    }
                    wait.min(remaining)
                }
                None => wait,
            };
            let mut guard = self.sleep.lock();
            // Checked under the lock close() notifies under, so its wake-up cannot slip past us.
            if self.is_closed() {
                return false;
            }
            self.sleepers.fetch_add(1, SeqCst);
            self.wakeup.wait_for(&mut guard, nap);
            self.sleepers.fetch_sub(1, SeqCst);
        }
    }

    /// Threads asleep in `acquire()` right now.
    pub fn sleepers(&self) -> usize {
        self.sleepers.load(SeqCst)
    }

    /// No token is handed out before `now + d` (a 429's Retry-After); the first one after is the
    /// only one, then the bucket refills at `rate`. Extends, never shortens, a pause in force.
    pub fn pause(&self, d: Duration) {
        if self.is_unlimited() {
            return;
        }
        let until = self
            .clock
            .now_ns()
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        // With tat = until + burst - interval, a take at `until` lands exactly `burst` ahead.
        let tat = until.saturating_add(self.burst_ns - self.interval_ns);
        self.tat.fetch_max(tat, SeqCst);
    }

    /// Tokens available now (fractional; `f64::INFINITY` when unlimited, 0 during a pause).
    pub fn tokens(&self) -> f64 {
        if self.is_unlimited() {
            return f64::INFINITY;
        }
        let ahead = self.tat.load(SeqCst).saturating_sub(self.clock.now_ns());
        let free_ns = self.burst_ns.saturating_sub(ahead);
        (free_ns as f64 / self.interval_ns as f64).min(self.burst)
    }

    /// Wakes every `acquire()`; from now on they return false at once.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        let _guard = self.sleep.lock();
        self.wakeup.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;
    use std::thread;

    const MS: Duration = Duration::from_millis(1);

    fn manual(rate: f64, burst: f64) -> (TokenBucket<Arc<ManualClock>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        (TokenBucket::new(rate, burst, clock.clone()), clock)
    }

    fn take_all(bucket: &TokenBucket<Arc<ManualClock>>) -> usize {
        std::iter::from_fn(|| bucket.try_acquire().ok())
            .take(1_000_000)
            .count()
    }

    #[test]
    fn starts_full_then_refills_at_rate() {
        let (bucket, clock) = manual(10.0, 5.0);
        assert_eq!(bucket.tokens(), 5.0);
        assert_eq!(take_all(&bucket), 5);
        assert_eq!(bucket.try_acquire(), Err(100 * MS), "one token per 100 ms");
        clock.advance(40 * MS);
        assert_eq!(bucket.try_acquire(), Err(60 * MS));
        assert!((bucket.tokens() - 0.4).abs() < 1e-9);
        clock.advance(60 * MS);
        assert_eq!(take_all(&bucket), 1);
        clock.advance(Duration::from_millis(350));
        assert_eq!(take_all(&bucket), 3);
        clock.advance(Duration::from_secs(60));
        assert_eq!(bucket.tokens(), 5.0, "never more than burst");
        assert_eq!(take_all(&bucket), 5);
    }

    #[test]
    fn a_tiny_rate_still_limits() {
        for rate in [1e-10, 5e-11, 1e-15, f64::MIN_POSITIVE] {
            let (bucket, clock) = manual(rate, 1.0);
            assert!(!bucket.is_unlimited());
            assert_eq!(take_all(&bucket), 1, "rate {rate}: the burst, then nothing");
            clock.advance(Duration::from_secs(3600 * 24 * 365));
            assert_eq!(take_all(&bucket), 0, "rate {rate}: not a token in a year");
        }
    }

    #[test]
    fn burst_below_one_is_one_and_fractions_refill() {
        let (bucket, _) = manual(2.0, 0.0);
        assert_eq!(take_all(&bucket), 1);
        let (bucket, clock) = manual(1.0, 2.5);
        assert_eq!(take_all(&bucket), 2);
        assert_eq!(bucket.try_acquire(), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(499));
        assert!(bucket.try_acquire().is_err());
    }

    #[test]
    fn unlimited() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let (bucket, _) = manual(rate, 1.0);
            assert_eq!(take_all(&bucket), 1_000_000);
            assert_eq!(bucket.tokens(), f64::INFINITY);
            bucket.pause(Duration::from_secs(10));
            assert!(bucket.acquire(Duration::ZERO));
        }
    }

    #[test]
    fn pause_blocks_until_then_refills_and_never_shortens() {
        let (bucket, clock) = manual(100.0, 10.0);
        bucket.pause(Duration::from_secs(2));
        assert_eq!(bucket.tokens(), 0.0);
        assert_eq!(bucket.try_acquire(), Err(Duration::from_secs(2)));
        bucket.pause(Duration::from_secs(1));
        assert_eq!(
            bucket.try_acquire(),
            Err(Duration::from_secs(2)),
            "a shorter pause changes nothing"
        );
        clock.advance(Duration::from_secs(1));
        bucket.pause(Duration::from_secs(3));
        assert_eq!(
            bucket.try_acquire(),
            Err(Duration::from_secs(3)),
            "a longer one extends"
        );
        clock.advance(Duration::from_secs(3) - Duration::from_nanos(1));
        assert!(bucket.try_acquire().is_err());
        clock.advance(Duration::from_nanos(1));
        assert_eq!(
            take_all(&bucket),
            1,
            "one token at the end of the pause, not a full burst"
        );
        clock.advance(50 * MS);
        assert_eq!(take_all(&bucket), 5);
    }

    #[test]
    fn acquire_waits_for_a_token_and_times_out() {
        let bucket = TokenBucket::new(200.0, 1.0, MonotonicClock);
        assert!(bucket.acquire(Duration::ZERO));
        assert!(
            !bucket.acquire(Duration::ZERO),
            "empty, and no time to wait"
        );
        let started = Instant::now();
        assert!(bucket.acquire(Duration::from_secs(10)));
        assert!(
            started.elapsed() >= Duration::from_millis(4),
            "a token takes 5 ms to refill"
        );
        let slow = TokenBucket::new(0.01, 1.0, MonotonicClock);
        assert!(slow.acquire(Duration::ZERO));
        assert!(!slow.acquire(20 * MS));
    }

    #[test]
    fn close_interrupts_acquire() {
        let bucket = Arc::new(TokenBucket::new(0.001, 1.0, MonotonicClock));
        assert!(bucket.acquire(Duration::ZERO));
        let waiter = {
            let bucket = bucket.clone();
            thread::spawn(move || {
                let started = Instant::now();
                (bucket.acquire(Duration::from_secs(60)), started.elapsed())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bucket.sleepers() == 0 {
            assert!(Instant::now() < deadline, "the waiter never went to sleep");
            thread::yield_now();
        }
        bucket.close();
        let (taken, elapsed) = waiter.join().unwrap();
        assert!(!taken);
        assert!(
            elapsed < Duration::from_secs(30),
            "close() did not cut the wait"
        );
        assert!(
            !bucket.acquire(Duration::from_secs(60)),
            "closed: false at once"
        );
        assert!(!TokenBucket::new(0.0, 1.0, MonotonicClock)
            .tap_close()
            .acquire(Duration::ZERO));
    }

    impl<C: Clock> TokenBucket<C> {
        fn tap_close(self) -> Self {
            self.close();
            self
        }
    }

    #[test]
    fn concurrent_takers_never_exceed_burst_plus_rate_times_elapsed() {
        let (bucket, clock) = manual(1_000.0, 20.0);
        let bucket = Arc::new(bucket);
        let granted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let (bucket, granted, stop) = (bucket.clone(), granted.clone(), stop.clone());
                thread::spawn(move || {
                    while !stop.load(SeqCst) {
                        match bucket.try_acquire() {
                            Ok(()) => granted.fetch_add(1, SeqCst),
                            Err(_) => {
                                thread::yield_now();
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        // 500 steps of 1 ms: at most 20 + 500 tokens. Grants are counted after their CAS, so the
        // count read after a step can only lag the tokens handed out up to the clock's time.
        let deadline = Instant::now() + Duration::from_secs(30);
        for step in 0..=500u64 {
            let limit = 20 + step;
            loop {
                let seen = granted.load(SeqCst);
                assert!(seen <= limit, "step {step}: {seen} tokens > {limit}");
                // Let the takers catch up before moving time on, so the bound is reached, not just respected.
                if seen == limit || Instant::now() > deadline {
                    break;
                }
                thread::yield_now();
            }
            clock.advance(MS);
        }
        stop.store(true, SeqCst);
        for taker in takers {
            taker.join().unwrap();
        }
        let total = granted.load(SeqCst);
        assert!(total <= 20 + 501, "{total}");
        assert!(total >= 20 + 500, "takers were starved: {total}");
    }

    #[test]
    fn concurrent_takers_on_the_real_clock() {
        let bucket = Arc::new(TokenBucket::new(2_000.0, 50.0, MonotonicClock));
        let started = Instant::now();
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let bucket = bucket.clone();
                thread::spawn(move || {
                    let mut got = 0u64;
                    while started.elapsed() < Duration::from_millis(100) {
                        if bucket.try_acquire().is_ok() {
                            got += 1;
                        }
                    }
                    got
                })
            })
            .collect();
        let total: u64 = takers.into_iter().map(|t| t.join().unwrap()).sum();
        let bound = 50.0 + 2_000.0 * started.elapsed().as_secs_f64();
        assert!((total as f64) <= bound + 1.0, "{total} > {bound}");
        assert!(total >= 50, "{total}");
    }
}
