//! Intake without Python: argument checks, dedup, every overflow policy, ack's origin check.

use super::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;

fn core(config: CoreConfig<'_>) -> Shared {
    Shared::new(&config).unwrap()
}

/// A lane of `max_ops` ops under `on_full`.
fn small(max_ops: usize, on_full: &str) -> Shared {
    core(CoreConfig {
        max_queue_ops: max_ops,
        on_full,
        block_timeout: 0.05,
        ..CoreConfig::default()
    })
}

fn counter(shared: &Shared, name: &str) -> u64 {
    shared
        .metrics
        .counters()
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

#[test]
fn config_errors_name_the_argument() {
    let err = |config: CoreConfig<'_>| Shared::new(&config).err().unwrap();
    let e = err(CoreConfig {
        lanes: 0,
        ..CoreConfig::default()
    });
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::Config, "lanes: must be at least 1")
    );
    let e = err(CoreConfig {
        lanes: 257,
        ..CoreConfig::default()
    });
    assert_eq!(e.message, "lanes: 257 is more than 256");
    let e = err(CoreConfig {
        max_batch_bytes: 63,
        ..CoreConfig::default()
    });
    assert!(
        e.message.starts_with("max_batch_bytes: 63 is outside"),
        "{e}"
    );
    let e = err(CoreConfig {
        on_full: "wait",
        ..CoreConfig::default()
    });
    assert!(
        e.message.starts_with("on_full: 'wait' is not one of"),
        "{e}"
    );
    let e = err(CoreConfig {
        block_timeout: f64::NAN,
        ..CoreConfig::default()
    });
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::Config,
            "block_timeout: NaN is not a number of seconds"
        )
    );
    assert!(Shared::new(&CoreConfig::default()).is_ok());
}

#[test]
fn seconds_arg_clamps_and_refuses_nan() {
    assert_eq!(seconds_arg("t", -1.0).unwrap(), Duration::ZERO);
    assert_eq!(seconds_arg("t", 1.5).unwrap(), Duration::from_millis(1500));
    assert!(seconds_arg("t", f64::INFINITY).unwrap() >= Duration::from_secs(1_000_000_000));
    assert_eq!(
        seconds_arg("t", f64::NAN).unwrap_err().kind,
        ErrorKind::Argument
    );
}

#[test]
fn unknown_lane_is_an_index_error() {
    let shared = core(CoreConfig {
        lanes: 2,
        ..CoreConfig::default()
    });
    assert!(shared.queue(1).is_ok());
    let Err(e) = shared.queue(2) else {
        panic!("lane 2 exists")
    };
    assert_eq!(e.kind, ErrorKind::NoSuchLane);
    assert_eq!(e.message, "lane 2 does not exist (this core has 2)");
}

#[test]
fn submit_dedups_only_what_was_accepted() {
    let shared = small(1, "drop_newest");
    let entry = DedupEntry {
        key: 7,
        value: 1,
        identify: true,
    };
    assert_eq!(
        shared.submit(0, b"{\"a\":1}", Some(entry), &InPlace),
        ACCEPTED
    );
    assert_eq!(
        shared.submit(0, b"{\"a\":1}", Some(entry), &InPlace),
        DEDUPED
    );
    let other = DedupEntry { key: 8, ..entry };
    // The lane is full: refused, so not recorded, so the same entry is not a duplicate later.
    assert_eq!(shared.submit(0, b"{\"b\":1}", Some(other), &InPlace), FULL);
    shared.lanes[0].clear();
    assert_eq!(
        shared.submit(0, b"{\"b\":1}", Some(other), &InPlace),
        ACCEPTED
    );
    let m = &shared.metrics;
    assert_eq!(m.accepted.load(Relaxed), 2);
    assert_eq!(m.deduped_identify.load(Relaxed), 1);
    assert_eq!(m.dropped_full.load(Relaxed), 1);
}

#[test]
fn drop_oldest_evicts_and_counts() {
    let shared = small(2, "drop_oldest");
    for op in [&b"{\"i\":1}"[..], b"{\"i\":2}", b"{\"i\":3}"] {
        assert_eq!(shared.submit(0, op, None, &InPlace), ACCEPTED);
    }
    assert_eq!(shared.metrics.dropped_oldest.load(Relaxed), 1);
    let batch = shared.next_batch(0, None, None).unwrap().unwrap();
    assert_eq!(batch.body, b"{\"batch\":[{\"i\":2},{\"i\":3}]}");
}

#[test]
fn an_evicted_identify_is_forgotten_so_the_same_identify_is_taken_again() {
    let shared = small(1, "drop_oldest");
    let identify =
        br#"{"type":"person","identifiers":{"id":"u1"},"action":"identify","attributes":{}}"#;
    let entry = || {
        shared
            .dedup_policy
            .identify_entry(crate::ops::Subject::Id("u1"), b"{}")
    };
    assert_eq!(shared.submit(0, identify, entry(), &InPlace), ACCEPTED);
    assert_eq!(shared.submit(0, identify, entry(), &InPlace), DEDUPED);
    // Evicted unsent by another op: the next equal identify is no duplicate of anything sent.
    assert_eq!(shared.submit(0, b"{\"other\":1}", None, &InPlace), ACCEPTED);
    assert_eq!(shared.metrics.dropped_oldest.load(Relaxed), 1);
    assert_eq!(shared.submit(0, identify, entry(), &InPlace), ACCEPTED);
}

/// While a `block` call waits (with the GIL released, in the binding), another caller queues the same
/// operation: the waiting call must find it a duplicate when it wakes, not queue a second copy.
struct SameOpDuringWait<'a> {
    shared: &'a Shared,
    entry: DedupEntry,
}

impl BlockingWait for SameOpDuringWait<'_> {
    fn block(&self, wait: &(dyn Fn() + Sync)) {
        self.shared.lanes[0].drain_all(); // a sender makes room
        let other = self
            .shared
            .submit(0, b"{\"op\":\"dup\"}", Some(self.entry), &InPlace);
        assert_eq!(other, ACCEPTED);
        wait();
    }
}

#[test]
fn a_blocked_call_finds_the_same_op_queued_during_its_wait_a_duplicate() {
    let shared = small(2, "block");
    let entry = DedupEntry {
        key: 42,
        value: 0,
        identify: false,
    };
    assert_eq!(shared.submit(0, b"{\"op\":1}", None, &InPlace), ACCEPTED);
    assert_eq!(shared.submit(0, b"{\"op\":2}", None, &InPlace), ACCEPTED); // full
    let waiter = SameOpDuringWait {
        shared: &shared,
        entry,
    };
    assert_eq!(
        shared.submit(0, b"{\"op\":\"dup\"}", Some(entry), &waiter),
        DEDUPED
    );
    assert_eq!(shared.lanes[0].drain_all().len(), 1);
    assert_eq!(shared.metrics.deduped_event.load(Relaxed), 1);
}

#[test]
fn spool_overflow_is_kept_per_lane_until_taken() {
    let shared = core(CoreConfig {
        lanes: 2,
        max_queue_ops: 1,
        on_full: "spool",
        ..CoreConfig::default()
    });
    for lane in [0, 1, 1] {
        shared.submit(lane, b"{}", None, &InPlace);
        shared.submit(lane, format!("{{\"l\":{lane}}}").as_bytes(), None, &InPlace);
    }
    assert_eq!(shared.overflow_len(), 4);
    assert_eq!(counter(&shared, "overflowed"), 4);
    let lane1 = shared.take_overflow(Some(1)).unwrap();
    assert_eq!(lane1.len(), 3);
    let rest = shared.take_overflow(None).unwrap();
    assert_eq!(rest, vec![Box::from(&b"{\"l\":0}"[..])]);
    assert_eq!(
        shared.take_overflow(Some(2)).unwrap_err().kind,
        ErrorKind::NoSuchLane
    );
}

/// Records that the wait ran (the binding releases the GIL here), then waits in place.
struct CountingWait(std::sync::atomic::AtomicUsize);

impl BlockingWait for CountingWait {
    fn block(&self, wait: &(dyn Fn() + Sync)) {
        self.0.fetch_add(1, Relaxed);
        wait()
    }
}

#[test]
fn block_gives_up_at_its_timeout() {
    let shared = small(1, "block");
    let waits = CountingWait(Default::default());
    assert_eq!(shared.submit(0, b"{}", None, &waits), ACCEPTED);
    assert_eq!(waits.0.load(Relaxed), 0, "no wait while there is room");
    // Nobody drains: refused after block_timeout (50 ms), having waited through `waits`.
    assert_eq!(shared.submit(0, b"{}", None, &waits), FULL);
    assert!(waits.0.load(Relaxed) >= 1);
    assert_eq!(shared.metrics.dropped_full.load(Relaxed), 1);
}

#[test]
fn block_waits_until_a_drain_makes_room() {
    let shared = Arc::new(core(CoreConfig {
        max_queue_ops: 1,
        on_full: "block",
        block_timeout: 60.0,
        ..CoreConfig::default()
    }));
    assert_eq!(shared.submit(0, b"{\"i\":1}", None, &InPlace), ACCEPTED);
    let drainer = {
        let shared = shared.clone();
        thread::spawn(move || {
            // Drain only once the producer is asleep waiting for room.
            while shared.lanes[0].sleepers() == 0 {
                thread::yield_now();
            }
            shared.next_batch(0, None, None).unwrap().unwrap()
        })
    };
    assert_eq!(shared.submit(0, b"{\"i\":2}", None, &InPlace), ACCEPTED);
    assert_eq!(drainer.join().unwrap().body, b"{\"batch\":[{\"i\":1}]}");
    assert_eq!(shared.lanes[0].len(), 1);
}

#[test]
fn ack_counts_delivered_and_refuses_batches_it_did_not_hand_out() {
    let shared = core(CoreConfig::default());
    for i in 0..4 {
        shared.submit(0, format!("{{\"i\":{i}}}").as_bytes(), None, &InPlace);
    }
    let batch = shared.next_batch(0, None, None).unwrap().unwrap();
    assert_eq!(batch.origin.map(|o| o.lane), Some(0));
    let (first, second) = batch.split();
    assert_eq!(shared.ack(&first, &[1, 99]).unwrap(), 1);
    assert_eq!(shared.ack(&second, &[]).unwrap(), 2);
    assert_eq!(counter(&shared, "delivered"), 3);

    let rebuilt = Batch::from_encoded(batch.ops(), clock::now_ns()).unwrap();
    let e = shared.ack(&rebuilt, &[]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Argument);
    assert!(e.message.contains("Batch.from_ops"), "{e}");

    let other = core(CoreConfig::default());
    let e = other.ack(&batch, &[]).unwrap_err();
    assert!(e.message.contains("another Core"), "{e}");
    assert_eq!(
        counter(&shared, "delivered"),
        3,
        "a refused ack counts nothing"
    );
    assert_eq!(counter(&other, "delivered"), 0);
}

#[test]
fn requeue_stops_at_the_first_refusal() {
    let shared = small(2, "drop_newest");
    let ops: [&[u8]; 3] = [b"{\"i\":1}", b"{\"i\":2}", b"{\"i\":3}"];
    assert_eq!(shared.requeue(0, ops).unwrap(), 2);
    assert_eq!(shared.lanes[0].len(), 2);
    assert_eq!(
        shared.requeue(5, ops).unwrap_err().kind,
        ErrorKind::NoSuchLane
    );
}

#[test]
fn next_batch_refuses_zero_max_ops() {
    let shared = core(CoreConfig::default());
    assert_eq!(
        shared.next_batch(0, None, Some(0)).unwrap_err().message,
        "max_ops: must be at least 1"
    );
    assert_eq!(shared.next_batch(0, None, None).unwrap(), None);
}

#[test]
fn scratch_is_reentrant() {
    let outer = with_scratch(|out| {
        out.extend_from_slice(b"outer");
        let inner = with_scratch(|inner| {
            inner.extend_from_slice(b"in");
            inner.len()
        });
        (out.clone(), inner)
    });
    assert_eq!(outer, (b"outer".to_vec(), 2));
}

#[test]
fn a_sealed_core_refuses_every_submit_and_keeps_what_it_holds() {
    let shared = small(4, "drop_newest");
    assert_eq!(shared.submit(0, b"{\"a\":1}", None, &InPlace), ACCEPTED);
    shared.seal();
    assert_eq!(shared.submit(0, b"{\"b\":1}", None, &InPlace), CLOSED);
    let entry = DedupEntry {
        key: 9,
        value: 1,
        identify: true,
    };
    assert_eq!(
        shared.submit(0, b"{\"c\":1}", Some(entry), &InPlace),
        CLOSED
    );
    let drained: Vec<_> = shared.lanes[0]
        .drain_all()
        .into_iter()
        .map(|op| op.bytes)
        .collect();
    assert_eq!(drained, vec![Box::from(&b"{\"a\":1}"[..])]);
    assert!(
        !shared.dedup.is_duplicate(9, 1, clock::now_ns()),
        "a refused op is not recorded"
    );
}
