//! Microbenchmarks of the pure-Rust hot path: queue, batch assembly, dedup, token bucket, histogram.
//! Run: `cargo bench --bench core -- --noplot --warm-up-time 1 --measurement-time 2`.

use ciotrack_core::batch::Batch;
use ciotrack_core::bucket::TokenBucket;
use ciotrack_core::clock::{now_ns, MonotonicClock};
use ciotrack_core::dedup::{hash, DedupSet};
use ciotrack_core::metrics::Histogram;
use ciotrack_core::queue::{Op, OpQueue};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Duration;

/// A realistic ~150-byte event operation (the ULID varies so ops differ).
fn event_op(i: u64) -> Op {
    let body = format!(
        "{{\"type\":\"person\",\"identifiers\":{{\"id\":\"user-{}\"}},\"action\":\"event\",\"name\":\"purchase\",\"id\":\"01J{:023}\",\"timestamp\":1700000000}}",
        i % 1000,
        i
    );
    Op::new(body.into_bytes(), i)
}

fn queue(c: &mut Criterion) {
    let lane = OpQueue::new(1_000_000, 64 << 20);
    lane.push(event_op(0)).unwrap();
    c.bench_function("queue/push+pop", |b| {
        // Pop the op and push it back: one of each, no allocation in the loop.
        b.iter(|| {
            let op = lane.pop().unwrap();
            lane.push(black_box(op)).unwrap();
        })
    });
}

fn batch(c: &mut Criterion) {
    let ops: Vec<Op> = (0..3000).map(event_op).collect();
    let mean = ops.iter().map(|op| op.bytes.len()).sum::<usize>() / ops.len();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(ops.len() as u64));
    group.bench_function(format!("next_batch 3000 ops of ~{mean} B"), |b| {
        b.iter_batched(
            || {
                let lane = OpQueue::new(10_000, 64 << 20);
                for op in &ops {
                    lane.push(op.clone()).unwrap();
                }
                lane
            },
            |lane| {
                let batch = lane.next_batch(500_000, 100_000).unwrap();
                assert_eq!(batch.count(), 3000);
                batch
            },
            BatchSize::LargeInput,
        )
    });
    let refs: Vec<&[u8]> = ops.iter().map(|op| &*op.bytes).collect();
    let stamps: Vec<u64> = ops.iter().map(|op| op.accepted_ns).collect();
    let full = Batch::from_ops(&refs, &stamps, 0);
    group.bench_function("split 3000 ops", |b| b.iter(|| black_box(&full).split()));
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup");
    let set = DedupSet::new(300_000_000_000, 100_000);
    // Twice the cap, so records keep evicting: the steady state of a busy tracker.
    let keys: Vec<u64> = (0..200_000u64).map(|i| hash(&i.to_le_bytes())).collect();
    let mut i = 0;
    group.bench_function("is_duplicate+record (miss, evicting)", |b| {
        b.iter(|| {
            let key = keys[i % keys.len()];
            i += 1;
            let now = now_ns();
            if !set.is_duplicate(key, 1, now) {
                set.record(key, 1, now);
            }
        })
    });
    let hot = DedupSet::new(300_000_000_000, 100_000);
    for &key in &keys[..50_000] {
        hot.record(key, 1, now_ns());
    }
    let mut j = 0;
    group.bench_function("is_duplicate (hit)", |b| {
        b.iter(|| {
            j += 1;
            hot.is_duplicate(keys[j % 50_000], 1, now_ns())
        })
    });
    group.finish();
}

fn bucket(c: &mut Criterion) {
    // A rate no benchmark loop reaches, so every call takes the CAS path and succeeds.
    let bucket = TokenBucket::new(1e9, 1e9, MonotonicClock);
    c.bench_function("bucket/try_acquire", |b| {
        b.iter(|| bucket.try_acquire().is_ok())
    });
}

fn clock(c: &mut Criterion) {
    // For reading the dedup and bucket numbers: both read this clock once per call.
    c.bench_function("clock/now_ns", |b| b.iter(now_ns));
}

fn histogram(c: &mut Criterion) {
    let histogram = Histogram::new();
    let mut v = 0.000_123;
    c.bench_function("histogram/record", |b| {
        b.iter(|| {
            v = if v > 10.0 { 0.000_123 } else { v * 1.01 };
            histogram.record(black_box(v));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
    targets = queue, batch, dedup, bucket, histogram, clock
}
criterion_main!(benches);
