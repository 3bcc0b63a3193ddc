//! Unit tests of queue.rs (kept apart to keep the module readable).

use super::*;
use std::sync::Arc;
use std::thread;

fn op(text: &str) -> Op {
    Op::new(text.as_bytes(), 0)
}

/// Polls with a deadline until `n` threads are asleep in a wait (no sleep-as-synchronisation).
pub(crate) fn until_sleepers(queue: &OpQueue, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.sleepers() != n {
        assert!(
            Instant::now() < deadline,
            "expected {n} sleeping waiters, have {}",
            queue.sleepers()
        );
        thread::yield_now();
    }
}

fn until_waiting(queue: &OpQueue) {
    until_sleepers(queue, 1);
}

#[test]
fn fifo_and_counters() {
    let queue = OpQueue::new(10, 1000);
    for i in 0..5 {
        queue
            .push(Op::new(format!("op{i}").into_bytes(), i))
            .unwrap();
    }
    assert_eq!(
        (queue.len(), queue.bytes(), queue.pushed(), queue.taken()),
        (5, 15, 5, 0)
    );
    assert_eq!(&*queue.pop().unwrap().bytes, b"op0");
    assert_eq!(queue.evict_oldest().unwrap().accepted_ns, 1);
    let rest: Vec<_> = queue
        .drain_all()
        .into_iter()
        .map(|o| o.accepted_ns)
        .collect();
    assert_eq!(rest, vec![2, 3, 4]);
    assert_eq!(
        (queue.len(), queue.bytes(), queue.pushed(), queue.taken()),
        (0, 0, 5, 5)
    );
    assert!(queue.pop().is_none());
    queue.push(op("x")).unwrap();
    assert_eq!(queue.clear(), 1);
    assert_eq!(queue.taken(), 6);
}

#[test]
fn bounded_by_count_and_bytes() {
    let queue = OpQueue::new(3, 1000);
    for _ in 0..3 {
        queue.push(op("a")).unwrap();
    }
    assert_eq!(queue.push(op("b")).unwrap_err(), op("b"));
    queue.pop().unwrap();
    queue.push(op("b")).unwrap();

    let queue = OpQueue::new(100, 10);
    queue.push(op("12345")).unwrap();
    queue.push(op("1234")).unwrap();
    assert!(queue.push(op("12")).is_err(), "11 bytes > 10");
    queue.push(op("1")).unwrap();
    assert_eq!((queue.len(), queue.bytes()), (3, 10));
    // Larger than the whole bound: refused even when empty.
    let empty = OpQueue::new(100, 10);
    assert!(empty.push(op("12345678901")).is_err());
    assert_eq!((empty.len(), empty.bytes(), empty.pushed()), (0, 0, 0));
    assert!(OpQueue::new(0, 10).push(op("a")).is_err());
}

#[test]
fn four_producers_never_exceed_bounds_and_lose_nothing() {
    const PER_PRODUCER: u64 = 20_000;
    let queue = Arc::new(OpQueue::new(64, 2_000));
    let done = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let queue = queue.clone();
            thread::spawn(move || {
                let mut refused = 0u64;
                for seq in 0..PER_PRODUCER {
                    // Sizes 8..=70 bytes: the byte bound (2000) and the count bound (64) both bite.
                    let mut bytes = vec![b'x'; 8 + (seq % 63) as usize];
                    bytes[..8].copy_from_slice(&(p << 56 | seq).to_le_bytes());
                    if queue.push(Op::new(bytes, seq)).is_err() {
                        refused += 1;
                    }
                    assert!(queue.len() <= 64 && queue.bytes() <= 2_000);
                }
                refused
            })
        })
        .collect();
    let consumer = {
        let (queue, done) = (queue.clone(), done.clone());
        thread::spawn(move || {
            let mut last_seq = [None::<u64>; 4];
            let mut popped = 0u64;
            loop {
                let finished = done.load(SeqCst);
                while let Some(op) = queue.pop() {
                    let tag = u64::from_le_bytes(op.bytes[..8].try_into().unwrap());
                    let (p, seq) = ((tag >> 56) as usize, tag & ((1 << 56) - 1));
                    assert!(
                        last_seq[p].is_none_or(|last| seq > last),
                        "producer {p} out of order"
                    );
                    last_seq[p] = Some(seq);
                    popped += 1;
                }
                if finished {
                    return popped;
                }
                assert!(queue.len() <= 64 && queue.bytes() <= 2_000);
                thread::yield_now();
            }
        })
    };
    let refused: u64 = producers.into_iter().map(|h| h.join().unwrap()).sum();
    done.store(true, SeqCst);
    let popped = consumer.join().unwrap();
    assert_eq!(queue.pushed(), popped);
    assert_eq!(popped + refused, 4 * PER_PRODUCER);
    assert_eq!((queue.taken(), queue.len(), queue.bytes()), (popped, 0, 0));
    assert!(
        refused > 0,
        "the bounds were never reached; the test proves nothing"
    );
}

#[test]
fn pushes_without_a_waiter_notify_nobody() {
    let queue = OpQueue::new(1000, 100_000);
    for _ in 0..500 {
        queue.push(op("abc")).unwrap();
    }
    assert_eq!(queue.notifications(), 0);
    for _ in 0..500 {
        queue.pop().unwrap();
    }
    assert_eq!(queue.notifications(), 0);
}

#[test]
fn wait_returns_when_threshold_crossed_with_one_notification() {
    let queue = Arc::new(OpQueue::new(1000, 100_000));
    let waiter = {
        let queue = queue.clone();
        thread::spawn(move || {
            let started = Instant::now();
            (queue.wait(10, Duration::from_secs(30)), started.elapsed())
        })
    };
    until_waiting(&queue);
    queue.push(op("12345")).unwrap();
    queue.push(op("1234")).unwrap();
    assert_eq!(queue.notifications(), 0, "9 bytes: below the threshold");
    queue.push(op("1")).unwrap();
    let (reached, elapsed) = waiter.join().unwrap();
    assert!(reached);
    assert!(
        elapsed < Duration::from_secs(15),
        "woken by the timeout, not by the push"
    );
    for _ in 0..100 {
        queue.push(op("more")).unwrap();
    }
    assert_eq!(queue.notifications(), 1);
}

#[test]
fn wait_timeout_wake_and_close() {
    let queue = Arc::new(OpQueue::new(10, 1000));
    assert!(queue.wait(0, Duration::ZERO));
    assert!(!queue.wait(1, Duration::from_millis(20)), "timeout");

    let waiter = {
        let queue = queue.clone();
        thread::spawn(move || queue.wait(1, Duration::from_secs(30)))
    };
    until_waiting(&queue);
    queue.wake();
    assert!(!waiter.join().unwrap());

    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let queue = queue.clone();
            thread::spawn(move || queue.wait(500, Duration::from_secs(30)))
        })
        .collect();
    until_sleepers(&queue, 2);
    queue.close();
    for waiter in waiters {
        assert!(!waiter.join().unwrap());
    }
    let started = Instant::now();
    assert!(
        !queue.wait(1, Duration::from_secs(30)),
        "a wait after close returns at once"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    queue.push(op("ab")).unwrap();
    assert!(
        queue.wait(2, Duration::from_secs(30)),
        "threshold met: true even when closed"
    );
    assert_eq!(
        queue.drain_all().len(),
        1,
        "queued data stays drainable after close"
    );
}

#[test]
fn wait_space_is_woken_by_pops_and_close() {
    let queue = Arc::new(OpQueue::new(2, 1000));
    queue.push(op("a")).unwrap();
    assert!(queue.wait_space(1, Duration::ZERO));
    queue.push(op("b")).unwrap();
    assert!(!queue.wait_space(1, Duration::from_millis(10)));
    assert!(
        !queue.wait_space(1001, Duration::from_secs(30)),
        "can never fit"
    );

    let blocked = {
        let queue = queue.clone();
        thread::spawn(move || {
            let fits = queue.wait_space(1, Duration::from_secs(30));
            (fits, queue.push(op("c")).is_ok())
        })
    };
    until_waiting(&queue);
    queue.wake();
    assert_eq!(
        queue.sleepers(),
        1,
        "wake() leaves producers blocked for space"
    );
    assert_eq!(&*queue.pop().unwrap().bytes, b"a");
    assert_eq!(blocked.join().unwrap(), (true, true));

    let blocked = {
        let queue = queue.clone();
        thread::spawn(move || queue.wait_space(1, Duration::from_secs(30)))
    };
    until_waiting(&queue);
    queue.close();
    assert!(!blocked.join().unwrap());
}

#[test]
fn waiters_with_different_thresholds_each_get_theirs() {
    let queue = Arc::new(OpQueue::new(1000, 100_000));
    let spawn = |min: usize| {
        let queue = queue.clone();
        thread::spawn(move || {
            queue
                .wait(min, Duration::from_secs(30))
                .then(|| queue.bytes())
        })
    };
    let (low, high) = (spawn(10), spawn(100));
    until_sleepers(&queue, 2);
    queue.push(Op::new(vec![b'x'; 50], 0)).unwrap();
    assert!(low.join().unwrap().unwrap() >= 10);
    // The high waiter was woken too, found 50 < 100 and went back to sleep with its threshold
    // (the low one left without re-publishing its own).
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.wake_at.load(SeqCst) != 100 {
        assert!(
            Instant::now() < deadline,
            "the high waiter never re-registered"
        );
        thread::yield_now();
    }
    assert_eq!(queue.notifications(), 1);
    queue.push(Op::new(vec![b'x'; 49], 0)).unwrap();
    assert_eq!(queue.notifications(), 1, "99 bytes must not wake it");
    queue.push(op("x")).unwrap();
    assert_eq!(queue.notifications(), 2);
    assert!(high.join().unwrap().unwrap() >= 100);
}
