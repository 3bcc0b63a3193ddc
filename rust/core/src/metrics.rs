//! Counters and histograms. The hot path touches atomics only: fixed counters are plain fields,
//! named ones sit behind a read lock that is write-locked only the first time a name is seen.

use crate::sync::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Values up to 2^MIN_EXP (about 1 ns in seconds) share the first bucket; values above 2^MAX_EXP
/// (about 1.1e12) share the last.
const MIN_EXP: i64 = -30;
const MAX_EXP: i64 = 40;
/// Sub-buckets per power of two: each bucket is 1/8 of its octave, 6.7% to 12.5% wide.
const SUB_BITS: u32 = 3;
const SUB: i64 = 1 << SUB_BITS;
const BUCKETS: usize = (2 + (MAX_EXP - MIN_EXP) * SUB) as usize;

const MIN_VALUE: f64 = f64::from_bits(((MIN_EXP + 1023) as u64) << 52);

/// Buckets are closed above, `(lower, upper]`, like Prometheus' `le`: a value equal to an edge
/// counts in the bucket below it, so a cumulative count at an edge is exactly "values <= edge"
/// (integer data such as batch sizes sits on edges all the time).
fn bucket_of(value: f64) -> usize {
    if value.is_nan() || value <= MIN_VALUE {
        return 0;
    }
    // The exponent and top mantissa bits of an f64 are its log-linear bucket; taking them from the
    // next float down (bits - 1, value > 0 here) moves each edge into the bucket it closes.
    let bits = value.to_bits() - 1;
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((bits >> (52 - SUB_BITS)) & (SUB as u64 - 1)) as i64;
    (1 + (exp - MIN_EXP) * SUB + sub) as usize
}

/// Inclusive upper bound of a bucket (infinite for the last).
fn upper_bound(bucket: usize) -> f64 {
    if bucket == 0 {
        return MIN_VALUE;
    }
    if bucket >= BUCKETS - 1 {
        return f64::INFINITY;
    }
    let (octave, sub) = ((bucket as i64 - 1) / SUB, (bucket as i64 - 1) % SUB);
    2f64.powi((MIN_EXP + octave) as i32) * (1.0 + (sub + 1) as f64 / SUB as f64)
}

/// Prometheus `le` bounds for latencies in seconds. Every one is an edge of the internal buckets
/// (an odd integer <= 15 times a power of two), so its cumulative count is exact; decimal bounds
/// such as 0.1 are not edges (the bucket holding 0.1 also holds values up to 0.1016). The fleet
/// worker's histograms use these same bounds, so `sum by (le)` adds trackers and workers.
pub const SECONDS_BOUNDS: [f64; 23] = [
    0.00390625, 0.0078125, 0.015625, 0.03125, 0.046875, 0.0625, 0.09375, 0.125, 0.1875, 0.25,
    0.375, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 240.0, 960.0, 3840.0,
];
/// `le` bounds for counts (operations per batch): all edges, as above.
pub const COUNT_BOUNDS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, 5120.0, 10240.0,
];
/// `le` bounds for sizes in bytes (body bytes per batch, up to Customer.io's 500 KB): all edges.
pub const BYTES_BOUNDS: [f64; 9] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 131072.0, 262144.0, 393216.0, 524288.0,
];

/// The `le` bounds exported for the histogram called `name`, by its unit suffix: `*_seconds`,
/// `*_bytes`, anything else a count.
pub fn bounds_for(name: &str) -> &'static [f64] {
    if name.ends_with("_seconds") {
        &SECONDS_BOUNDS
    } else if name.ends_with("_bytes") {
        &BYTES_BOUNDS
    } else {
        &COUNT_BOUNDS
    }
}

/// Log-linear histogram of non-negative values (seconds or counts), lock-free.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
    max_bits: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0),
            max_bits: AtomicU64::new(0),
        }
    }

    /// Negative values count as 0; NaN and infinities are ignored (they would poison the sum).
    #[inline]
    pub fn record(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let value = value.max(0.0);
        self.counts[bucket_of(value)].fetch_add(1, Relaxed);
        // Non-negative f64s order like their bit patterns, so max is one integer fetch_max.
        self.max_bits.fetch_max(value.to_bits(), Relaxed);
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }

    /// `record` of each value, with one atomic update per bucket touched rather than three per
    /// value: a delivered batch records a few thousand latencies at once, on the sender's thread.
    pub fn record_many(&self, values: impl IntoIterator<Item = f64>) {
        let mut counts = [0u64; BUCKETS];
        let (mut sum, mut max, mut any) = (0.0f64, 0.0f64, false);
        for value in values {
            if !value.is_finite() {
                continue;
            }
            let value = value.max(0.0);
            counts[bucket_of(value)] += 1;
            sum += value;
            max = max.max(value);
            any = true;
        }
        if !any {
            return;
        }
        for (bucket, &n) in counts.iter().enumerate() {
            if n > 0 {
                self.counts[bucket].fetch_add(n, Relaxed);
            }
        }
        self.max_bits.fetch_max(max.to_bits(), Relaxed);
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + sum).to_bits())
        });
    }

    /// A consistent-enough copy: concurrent records may land in the counts but not yet the sum.
    pub fn snapshot(&self) -> HistSnapshot {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        HistSnapshot::from_counts(
            counts,
            f64::from_bits(self.sum_bits.load(Relaxed)),
            f64::from_bits(self.max_bits.load(Relaxed)),
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistSnapshot {
    pub count: u64,
    pub sum: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    counts: Vec<u64>,
}

impl HistSnapshot {
    fn from_counts(counts: Vec<u64>, sum: f64, max: f64) -> Self {
        let mut snapshot = HistSnapshot {
            count: counts.iter().sum(),
            sum,
            max,
            p50: 0.0,
            p95: 0.0,
            p99: 0.0,
            counts,
        };
        snapshot.p50 = snapshot.quantile(0.50);
        snapshot.p95 = snapshot.quantile(0.95);
        snapshot.p99 = snapshot.quantile(0.99);
        snapshot
    }

    /// The `q` quantile (0..=1), reported as the upper bound of the bucket holding it, or `max`
    /// when that is smaller: an overestimate by less than one bucket (<= 12.5%). 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_bound(bucket).min(self.max);
            }
        }
        self.max
    }

    /// Cumulative counts at ascending `bounds` (Prometheus `_bucket{le}`; `+Inf` is `count`): for
    /// each bound, the values in buckets whose upper edge is <= it. Exact "values <= le" when `le`
    /// is a bucket edge (as every bound of [`bounds_for`] is); otherwise the count stops at the
    /// largest edge below `le`, so it never includes a value above `le`. Computed here, at
    /// snapshot time: recording stays one bucket increment.
    pub fn cumulative(&self, bounds: &[f64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds.len());
        let (mut bucket, mut seen) = (0, 0u64);
        for &le in bounds {
            while bucket < self.counts.len() && upper_bound(bucket) <= le {
                seen += self.counts[bucket];
                bucket += 1;
            }
            out.push(seen);
        }
        out
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// The per-core metrics: fixed counters for the producer hot path, named ones for the sender.
pub struct Metrics {
    pub accepted: AtomicU64,
    pub invalid: AtomicU64,
    pub deduped_identify: AtomicU64,
    pub deduped_event: AtomicU64,
    pub dropped_full: AtomicU64,
    pub dropped_oldest: AtomicU64,
    enabled: bool,
    counters: RwLock<HashMap<String, Arc<AtomicU64>>>,
    histograms: RwLock<HashMap<String, Arc<Histogram>>>,
}

impl Metrics {
    pub fn new(enabled: bool) -> Self {
        Metrics {
            accepted: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            deduped_identify: AtomicU64::new(0),
            deduped_event: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_oldest: AtomicU64::new(0),
            enabled,
            counters: RwLock::new(HashMap::new()),
            histograms: RwLock::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn fixed(&self) -> [(&'static str, &AtomicU64); 6] {
        [
            ("accepted", &self.accepted),
            ("invalid", &self.invalid),
            ("deduped_identify", &self.deduped_identify),
            ("deduped_event", &self.deduped_event),
            ("dropped_full", &self.dropped_full),
            ("dropped_oldest", &self.dropped_oldest),
        ]
    }

    /// The named counter called `name`, made on first use (never one of the fixed fields). Callers
    /// that count often may keep the handle and skip the lookup.
    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        if let Some(counter) = self.counters.read().get(name) {
            return counter.clone();
        }
        self.counters
            .write()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Adds `n` to a named counter; counts whether or not metrics are enabled (flush-independent
    /// bookkeeping such as `delivered` stays available).
    pub fn incr(&self, name: &str, n: u64) {
        if let Some((_, counter)) = self.fixed().into_iter().find(|(fixed, _)| *fixed == name) {
            counter.fetch_add(n, Relaxed);
            return;
        }
        if let Some(counter) = self.counters.read().get(name) {
            counter.fetch_add(n, Relaxed);
            return;
        }
        self.counters
            .write()
            .entry(name.to_owned())
            .or_default()
            .fetch_add(n, Relaxed);
    }

    /// The histogram called `name`, made on first use.
    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        if let Some(histogram) = self.histograms.read().get(name) {
            return histogram.clone();
        }
        self.histograms
            .write()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Records into a named histogram; a no-op when metrics are disabled.
    pub fn observe(&self, name: &str, value: f64) {
        if !self.enabled {
            return;
        }
        if let Some(histogram) = self.histograms.read().get(name) {
            histogram.record(value);
            return;
        }
        self.histogram(name).record(value);
    }

    /// Fixed counters in declaration order, then named ones by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut named: Vec<(String, u64)> = self
            .counters
            .read()
            .iter()
            .map(|(name, counter)| (name.clone(), counter.load(Relaxed)))
            .collect();
        named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.fixed()
            .into_iter()
            .map(|(name, counter)| (name.to_owned(), counter.load(Relaxed)))
            .chain(named)
            .collect()
    }

    /// Every histogram by name.
    pub fn histograms(&self) -> Vec<(String, HistSnapshot)> {
        let handles: Vec<(String, Arc<Histogram>)> = self
            .histograms
            .read()
            .iter()
            .map(|(name, h)| (name.clone(), h.clone()))
            .collect();
        let mut snapshots: Vec<_> = handles
            .into_iter()
            .map(|(name, h)| (name, h.snapshot()))
            .collect();
        snapshots.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        snapshots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// The reported quantile is the exact one rounded up to its bucket's bound: never below, and
    /// at most one bucket (12.5%) above.
    fn assert_within_one_bucket(mut values: Vec<f64>) {
        let histogram = Histogram::new();
        for &v in &values {
            histogram.record(v);
        }
        values.sort_by(f64::total_cmp);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, values.len() as u64);
        assert_eq!(snapshot.max, *values.last().unwrap());
        let exact_sum: f64 = values.iter().sum();
        assert!((snapshot.sum - exact_sum).abs() <= exact_sum * 1e-9);
        for q in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
            let reported = snapshot.quantile(q);
            assert!(
                reported >= exact && reported <= exact * 1.125 + 1e-12,
                "q{q}: exact {exact}, reported {reported}"
            );
            assert!(bucket_of(reported).saturating_sub(bucket_of(exact)) <= 1);
        }
        assert_eq!(
            (snapshot.p50, snapshot.p95, snapshot.p99),
            (
                snapshot.quantile(0.5),
                snapshot.quantile(0.95),
                snapshot.quantile(0.99)
            )
        );
    }

    #[test]
    fn record_many_equals_one_record_per_value() {
        let (one_by_one, at_once) = (Histogram::new(), Histogram::new());
        let values: Vec<f64> = (0..3000)
            .map(|i| (i % 97) as f64 * 0.013)
            .chain([f64::NAN, f64::INFINITY, -1.0])
            .collect();
        for &value in &values {
            one_by_one.record(value);
        }
        at_once.record_many(values.iter().copied());
        at_once.record_many(std::iter::empty());
        let (a, b) = (one_by_one.snapshot(), at_once.snapshot());
        assert_eq!(
            (a.count, a.max, a.p50, a.p99),
            (b.count, b.max, b.p50, b.p99)
        );
        assert_eq!(a.counts, b.counts);
        assert!((a.sum - b.sum).abs() < 1e-9 * a.sum);
    }

    #[test]
    fn quantiles_of_counts() {
        assert_within_one_bucket((1..=10_000).map(f64::from).collect());
    }

    #[test]
    fn quantiles_of_latencies_spanning_decades() {
        // Deterministic log-uniform latencies from 10 µs to 10 s.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let values = (0..50_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                10f64.powf(-5.0 + 6.0 * (state >> 11) as f64 / (1u64 << 53) as f64)
            })
            .collect();
        assert_within_one_bucket(values);
    }

    fn next_up(value: f64) -> f64 {
        f64::from_bits(value.to_bits() + 1)
    }

    fn next_down(value: f64) -> f64 {
        f64::from_bits(value.to_bits() - 1)
    }

    #[test]
    fn buckets_tile_the_line_closed_above() {
        for bucket in 1..BUCKETS - 1 {
            let bound = upper_bound(bucket);
            assert_eq!(bucket_of(bound), bucket, "the bound of {bucket} is in it");
            assert_eq!(
                bucket_of(next_up(bound)),
                bucket + 1,
                "the next float opens the next"
            );
            assert_eq!(bucket_of(next_up(upper_bound(bucket - 1))), bucket);
            assert!(bound / upper_bound(bucket - 1) <= 1.126 || bucket == 1);
        }
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(MIN_VALUE), 0);
        assert_eq!(bucket_of(next_up(MIN_VALUE)), 1);
        assert_eq!(bucket_of(2f64.powi(MAX_EXP as i32)), BUCKETS - 2);
        assert_eq!(bucket_of(1e300), BUCKETS - 1);
    }

    #[test]
    fn prometheus_bounds_ascend_and_are_bucket_edges() {
        for bounds in [&SECONDS_BOUNDS[..], &COUNT_BOUNDS[..], &BYTES_BOUNDS[..]] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]));
            for &le in bounds {
                assert_eq!(upper_bound(bucket_of(le)), le, "{le} is not an edge");
            }
        }
        assert_eq!(bounds_for("request_latency_seconds"), &SECONDS_BOUNDS);
        assert_eq!(bounds_for("delivery_latency_seconds"), &SECONDS_BOUNDS);
        assert_eq!(bounds_for("batch_bytes"), &BYTES_BOUNDS);
        assert_eq!(bounds_for("batch_ops"), &COUNT_BOUNDS);
        // Decimal bounds are not edges: 0.1 sits inside (0.09375, 0.1015625].
        assert_ne!(upper_bound(bucket_of(0.1)), 0.1);
    }

    /// Brute force: how many of `values` are <= `le`.
    fn at_most(values: &[f64], le: f64) -> u64 {
        values.iter().filter(|&&v| v.max(0.0) <= le).count() as u64
    }

    #[test]
    fn cumulative_counts_are_exact_at_every_bound() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for bounds in [&SECONDS_BOUNDS[..], &COUNT_BOUNDS[..], &BYTES_BOUNDS[..]] {
            // Each bound itself, its neighbour floats on both sides, a few below the first and
            // above the last bound, and log-uniform values across the whole range.
            let mut values = vec![0.0, -1.0, bounds[0] / 3.0, bounds[bounds.len() - 1] * 7.0];
            for &le in bounds {
                values.extend([le, next_down(le), next_up(le), le, le * 0.97, le * 1.03]);
            }
            let (low, high) = (bounds[0].ln() - 1.0, bounds[bounds.len() - 1].ln() + 1.0);
            for _ in 0..20_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
                let value = (low + (high - low) * unit).exp();
                // Counts are integers: round half of them, so many land exactly on an edge.
                values.push(if state & 1 == 0 { value.round() } else { value });
            }
            let histogram = Histogram::new();
            values.iter().for_each(|&v| histogram.record(v));
            let snapshot = histogram.snapshot();
            let cumulative = snapshot.cumulative(bounds);
            assert_eq!(cumulative.len(), bounds.len());
            for (&le, &n) in bounds.iter().zip(&cumulative) {
                assert_eq!(n, at_most(&values, le), "le={le}");
            }
            assert!(cumulative.windows(2).all(|w| w[0] <= w[1]));
            assert!(*cumulative.last().unwrap() < snapshot.count);
        }
    }

    #[test]
    fn cumulative_at_other_bounds_never_counts_a_value_above_le() {
        let histogram = Histogram::new();
        let values: Vec<f64> = (1..=2000).map(|i| i as f64 * 0.0001).collect();
        values.iter().for_each(|&v| histogram.record(v));
        let snapshot = histogram.snapshot();
        let decimals = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15];
        for (&le, &n) in decimals.iter().zip(&snapshot.cumulative(&decimals)) {
            let exact = at_most(&values, le);
            // At most one bucket (12.5% of le) short, never over.
            assert!(
                n <= exact && n >= at_most(&values, le / 1.125),
                "le={le}: {n} vs {exact}"
            );
        }
        assert_eq!(
            Histogram::new().snapshot().cumulative(&SECONDS_BOUNDS),
            vec![0; 23]
        );
        assert_eq!(snapshot.cumulative(&[]), Vec::<u64>::new());
    }

    /// The quantiles and the cumulative counts come from the same buckets: the rank of each
    /// reported quantile is reached at its bucket's edge and not at the edge below (a quantile
    /// clamped to `max` sits inside its bucket).
    #[test]
    fn quantiles_agree_with_cumulative_counts() {
        let histogram = Histogram::new();
        (1..=5000).for_each(|i| histogram.record((i as f64).sqrt() * 0.003));
        let snapshot = histogram.snapshot();
        for q in [0.5, 0.95, 0.99] {
            let reported = snapshot.quantile(q);
            let rank = (q * snapshot.count as f64).ceil() as u64;
            let bucket = bucket_of(reported);
            let at = snapshot.cumulative(&[upper_bound(bucket - 1), upper_bound(bucket)]);
            assert!(
                at[0] < rank && at[1] >= rank,
                "q{q}: {at:?} around rank {rank}"
            );
        }
    }

    #[test]
    fn odd_values_and_empty() {
        let histogram = Histogram::new();
        assert_eq!(histogram.snapshot().quantile(0.5), 0.0);
        assert_eq!(histogram.snapshot().mean(), 0.0);
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            histogram.record(v);
        }
        assert_eq!(histogram.snapshot().count, 0);
        histogram.record(-3.0);
        histogram.record(0.0);
        histogram.record(5e15);
        let snapshot = histogram.snapshot();
        assert_eq!(
            (snapshot.count, snapshot.max, snapshot.sum),
            (3, 5e15, 5e15)
        );
        assert_eq!(snapshot.quantile(0.5), 2f64.powi(MIN_EXP as i32));
        assert_eq!(
            snapshot.quantile(1.0),
            5e15,
            "the overflow bucket reports max"
        );
    }

    #[test]
    fn counters_fixed_and_named() {
        let metrics = Metrics::new(true);
        metrics.accepted.fetch_add(3, Relaxed);
        metrics.incr("accepted", 2);
        metrics.incr("delivered", 5);
        metrics.incr("bytes_sent", 100);
        metrics.incr("delivered", 1);
        let counters = metrics.counters();
        let names: Vec<&str> = counters.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "accepted",
                "invalid",
                "deduped_identify",
                "deduped_event",
                "dropped_full",
                "dropped_oldest",
                "bytes_sent",
                "delivered"
            ]
        );
        assert_eq!(counters[0].1, 5);
        assert_eq!(counters[6].1, 100);
        assert_eq!(counters[7].1, 6);
        metrics.counter("delivered").fetch_add(4, Relaxed);
        assert_eq!(metrics.counters()[7].1, 10);
    }

    #[test]
    fn histograms_named_and_disabled() {
        let metrics = Metrics::new(true);
        metrics.observe("request_latency_seconds", 0.25);
        metrics.observe("batch_ops", 3000.0);
        metrics.observe("batch_ops", 10.0);
        let histograms = metrics.histograms();
        assert_eq!(
            histograms
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["batch_ops", "request_latency_seconds"]
        );
        assert_eq!((histograms[0].1.count, histograms[0].1.max), (2, 3000.0));

        let off = Metrics::new(false);
        off.observe("request_latency_seconds", 0.25);
        off.incr("delivered", 1);
        off.dropped_full.fetch_add(1, Relaxed);
        assert!(off.histograms().is_empty());
        assert!(!off.enabled());
        assert!(off.counters().contains(&("delivered".to_owned(), 1)));
        assert!(off.counters().contains(&("dropped_full".to_owned(), 1)));
    }

    #[test]
    fn concurrent_updates_are_exact() {
        let metrics = Arc::new(Metrics::new(true));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let metrics = metrics.clone();
                thread::spawn(move || {
                    for i in 0..10_000u64 {
                        metrics.incr(&format!("c{}", i % 7), 1);
                        metrics.incr("shared", 2);
                        metrics.observe(
                            if i % 2 == 0 { "even" } else { "odd" },
                            (t * 10_000 + i) as f64,
                        );
                        metrics.accepted.fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let counters: HashMap<String, u64> = metrics.counters().into_iter().collect();
        assert_eq!(counters["accepted"], 40_000);
        assert_eq!(counters["shared"], 80_000);
        assert_eq!(
            (0..7).map(|k| counters[&format!("c{k}")]).sum::<u64>(),
            40_000
        );
        let histograms: HashMap<String, HistSnapshot> = metrics.histograms().into_iter().collect();
        assert_eq!(histograms["even"].count + histograms["odd"].count, 40_000);
        assert_eq!(histograms["odd"].max, 39_999.0);
        assert_eq!(
            histograms["even"].sum + histograms["odd"].sum,
            (0..40_000).sum::<u64>() as f64
        );
    }
}
