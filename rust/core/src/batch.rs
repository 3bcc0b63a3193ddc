//! Batch assembly: FIFO ops from one lane into a `{"batch":[op,op,...]}` body.
//!
//! A batch remembers where each op sits in its body (`spans`), so the sender can hand out single ops
//! (a 207 names them by index) and split a batch in two (a 413) without re-encoding anything.

use crate::error::CoreError;
use crate::ops::MAX_OP_BYTES;
use crate::queue::OpQueue;

pub const ENVELOPE_HEAD: &[u8] = b"{\"batch\":[";
pub const ENVELOPE_TAIL: &[u8] = b"]}";
const ENVELOPE_LEN: usize = ENVELOPE_HEAD.len() + ENVELOPE_TAIL.len();

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The exact bytes to POST.
    pub body: Vec<u8>,
    /// `(offset, len)` of each op inside `body`.
    pub spans: Vec<(u32, u32)>,
    /// When the core accepted each op (`clock::now_ns`), same order as `spans`.
    pub accepted_ns: Vec<u64>,
    /// Take ordinals of this lane: the batch holds ops `[start, end)`.
    pub start: u64,
    pub end: u64,
    /// The core and lane this batch was taken from; None for `Batch::from_encoded` (a batch
    /// rebuilt from ops read back from elsewhere), which no core may ack.
    pub origin: Option<Origin>,
}

/// Where a batch was taken from: a core (by its process-unique id) and one of its lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub core: u64,
    pub lane: usize,
}

/// Appends ops to a body; `finish` closes the envelope. Spans are u32: a body is bounded by
/// Customer.io's 500 kB, and an op by 32 kB.
struct BatchWriter {
    body: Vec<u8>,
    spans: Vec<(u32, u32)>,
    accepted_ns: Vec<u64>,
}

impl BatchWriter {
    fn with_capacity(body_bytes: usize, ops: usize) -> Self {
        let mut body = Vec::with_capacity(body_bytes);
        body.extend_from_slice(ENVELOPE_HEAD);
        BatchWriter {
            body,
            spans: Vec::with_capacity(ops),
            accepted_ns: Vec::with_capacity(ops),
        }
    }

    /// Body length once `op_len` more bytes are appended and the envelope closed.
    fn size_with(&self, op_len: usize) -> usize {
        let comma = usize::from(!self.spans.is_empty());
        self.body.len() + comma + op_len + ENVELOPE_TAIL.len()
    }

    fn push(&mut self, op: &[u8], accepted_ns: u64) {
        if !self.spans.is_empty() {
            self.body.push(b',');
        }
        self.spans.push((self.body.len() as u32, op.len() as u32));
        self.body.extend_from_slice(op);
        self.accepted_ns.push(accepted_ns);
    }

    fn finish(mut self, start: u64) -> Batch {
        self.body.extend_from_slice(ENVELOPE_TAIL);
        let end = start + self.spans.len() as u64;
        Batch {
            body: self.body,
            spans: self.spans,
            accepted_ns: self.accepted_ns,
            start,
            end,
            origin: None,
        }
    }
}

impl Batch {
    pub fn count(&self) -> usize {
        self.spans.len()
    }

    /// The `i`-th op's bytes. Panics when `i >= count()`.
    pub fn op(&self, i: usize) -> &[u8] {
        let (offset, len) = self.spans[i];
        &self.body[offset as usize..(offset + len) as usize]
    }

    pub fn ops(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.count()).map(move |i| self.op(i))
    }

    /// Acceptance time of the oldest op (ops are FIFO, so the first), None for an empty batch.
    pub fn oldest_accepted_ns(&self) -> Option<u64> {
        self.accepted_ns.iter().copied().min()
    }

    /// A batch of `ops` taking ordinals `[start, start + ops.len())`. `accepted_ns` must have one
    /// entry per op.
    pub fn from_ops(ops: &[&[u8]], accepted_ns: &[u64], start: u64) -> Batch {
        assert_eq!(
            ops.len(),
            accepted_ns.len(),
            "Batch::from_ops: one accepted_ns per op"
        );
        let body_len = ENVELOPE_LEN + ops.iter().map(|op| op.len() + 1).sum::<usize>();
        let mut writer = BatchWriter::with_capacity(body_len, ops.len());
        for (op, &ns) in ops.iter().zip(accepted_ns) {
            writer.push(op, ns);
        }
        writer.finish(start)
    }

    /// A standalone batch of already-encoded ops (e.g. read back from a stream to be resent or
    /// split on a 413): the same body a lane would have built from them, ordinals `[0, count)`,
    /// accepted at `now_ns`, no origin. Refuses an empty list and an op that is empty or larger
    /// than `MAX_OP_BYTES` (no lane can hold one, so it was not made by a core).
    pub fn from_encoded<'a>(
        ops: impl ExactSizeIterator<Item = &'a [u8]>,
        now_ns: u64,
    ) -> Result<Batch, CoreError> {
        let count = ops.len();
        if count == 0 {
            return Err(CoreError::argument(
                "from_ops: a batch needs at least one operation",
            ));
        }
        let mut writer = BatchWriter::with_capacity(ENVELOPE_LEN + 256 * count, count);
        for (i, op) in ops.enumerate() {
            if op.is_empty() || op.len() > MAX_OP_BYTES {
                return Err(CoreError::limit(format!(
                    "from_ops: ops[{i}] is {} bytes, an operation is 1..={MAX_OP_BYTES}",
                    op.len()
                )));
            }
            // Spans are u32 offsets: a body past 4 GiB cannot be described (nor POSTed).
            if writer.size_with(op.len()) > u32::MAX as usize {
                return Err(CoreError::limit(
                    "from_ops: the operations add up to more than 4 GiB",
                ));
            }
            writer.push(op, now_ns);
        }
        Ok(writer.finish(0))
    }

    /// The first `count/2` ops and the rest, each a valid body with its own ordinals. Made by
    /// copying the contiguous `op,op,...` stretch of the body, so no per-op work but the spans.
    /// With fewer than 2 ops the second half is empty (`{"batch":[]}`, start == end).
    pub fn split(&self) -> (Batch, Batch) {
        let mid = self.count() / 2;
        if mid == 0 {
            return (self.clone(), self.sub_batch(self.count(), self.count()));
        }
        (self.sub_batch(0, mid), self.sub_batch(mid, self.count()))
    }

    /// Ops `[from, to)` of this batch as a batch of their own.
    fn sub_batch(&self, from: usize, to: usize) -> Batch {
        let start = self.start + from as u64;
        if from == to {
            let mut empty = BatchWriter::with_capacity(ENVELOPE_LEN, 0).finish(start);
            empty.origin = self.origin;
            return empty;
        }
        let first = self.spans[from].0 as usize;
        let (last_offset, last_len) = self.spans[to - 1];
        let stretch = &self.body[first..(last_offset + last_len) as usize];
        let mut body = Vec::with_capacity(stretch.len() + ENVELOPE_LEN);
        body.extend_from_slice(ENVELOPE_HEAD);
        body.extend_from_slice(stretch);
        body.extend_from_slice(ENVELOPE_TAIL);
        let shift = first as u32 - ENVELOPE_HEAD.len() as u32;
        let spans = self.spans[from..to]
            .iter()
            .map(|&(offset, len)| (offset - shift, len))
            .collect();
        Batch {
            body,
            spans,
            accepted_ns: self.accepted_ns[from..to].to_vec(),
            start,
            end: start + (to - from) as u64,
            origin: self.origin,
        }
    }
}

impl OpQueue {
    /// The next batch in FIFO order, or None when the lane is empty. Safe from several threads:
    /// the drain mutex makes each op go into exactly one batch, with contiguous take ordinals.
    ///
    /// Ops are added until the next one would make the body exceed `max_bytes` (envelope and commas
    /// included) or `max_ops` are in. That next op is parked in the carry and opens the following
    /// batch; it counts as queued, not taken. A single op larger than `max_bytes` goes out alone.
    pub fn next_batch(&self, max_bytes: usize, max_ops: usize) -> Option<Batch> {
        let max_ops = max_ops.max(1);
        let mut drain = self.lock_drain();
        let first = self.take_next(&mut drain)?;
        let start = self.taken();
        let queued = self.bytes() + self.len() + ENVELOPE_LEN;
        let capacity = queued.min(max_bytes).max(first.bytes.len() + ENVELOPE_LEN);
        let mut writer = BatchWriter::with_capacity(capacity, self.len().min(max_ops));
        let mut size = first.bytes.len();
        writer.push(&first.bytes, first.accepted_ns);
        while writer.spans.len() < max_ops {
            let Some(op) = self.take_next(&mut drain) else {
                break;
            };
            if writer.size_with(op.bytes.len()) > max_bytes {
                drain.carry = Some(op);
                break;
            }
            size += op.bytes.len();
            writer.push(&op.bytes, op.accepted_ns);
        }
        self.commit_taken(writer.spans.len(), size);
        Some(writer.finish(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Op;
    use std::sync::Arc;
    use std::thread;

    trait PushAll {
        fn push_all(&self, ops: impl IntoIterator<Item = Op>) -> usize;
    }

    impl PushAll for OpQueue {
        /// Pushes each op; returns how many were accepted.
        fn push_all(&self, ops: impl IntoIterator<Item = Op>) -> usize {
            ops.into_iter()
                .map(|op| self.push(op).is_ok() as usize)
                .sum()
        }
    }

    fn json_op(i: u64, pad: usize) -> Op {
        Op::new(
            format!("{{\"i\":{i},\"p\":\"{}\"}}", "x".repeat(pad)).into_bytes(),
            1000 + i,
        )
    }

    fn op_index(op: &[u8]) -> u64 {
        let text = std::str::from_utf8(op).unwrap();
        text[5..text.find(',').unwrap()].parse().unwrap()
    }

    /// The body is exactly the envelope around the comma-joined spans, and each op is an object.
    fn assert_well_formed(batch: &Batch) {
        let mut expected = ENVELOPE_HEAD.to_vec();
        for (i, op) in batch.ops().enumerate() {
            assert!(
                op.starts_with(b"{") && op.ends_with(b"}"),
                "op {i} is not an object"
            );
            if i > 0 {
                expected.push(b',');
            }
            expected.extend_from_slice(op);
        }
        expected.extend_from_slice(ENVELOPE_TAIL);
        assert_eq!(batch.body, expected);
        assert_eq!((batch.end - batch.start) as usize, batch.count());
        assert_eq!(batch.accepted_ns.len(), batch.count());
    }

    #[test]
    fn empty_lane_has_no_batch() {
        assert!(OpQueue::new(10, 1000).next_batch(1000, 10).is_none());
    }

    #[test]
    fn carry_keeps_fifo_and_bodies_stay_within_max_bytes() {
        let queue = OpQueue::new(10_000, 10_000_000);
        let total = 500u64;
        assert_eq!(
            queue.push_all((0..total).map(|i| json_op(i, (i * 37 % 200) as usize))),
            total as usize
        );
        let mut seen = Vec::new();
        let mut next_start = 0;
        while let Some(batch) = queue.next_batch(1_000, 1_000) {
            assert_well_formed(&batch);
            assert!(batch.body.len() <= 1_000, "{} bytes", batch.body.len());
            assert_eq!(batch.start, next_start, "take ordinals are contiguous");
            assert_eq!(queue.taken(), batch.end, "the carried op is not taken yet");
            next_start = batch.end;
            for (op, &ns) in batch.ops().zip(&batch.accepted_ns) {
                assert_eq!(ns, 1000 + op_index(op));
                seen.push(op_index(op));
            }
            // Filled as far as FIFO allows: the carried op would not have fitted.
            if let Some(next) = queue.lock_drain().carry.as_ref() {
                assert!(batch.body.len() + 1 + next.bytes.len() > 1_000);
            }
        }
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        assert_eq!((queue.len(), queue.bytes(), queue.taken()), (0, 0, total));
    }

    #[test]
    fn max_ops_and_exact_fit() {
        let queue = OpQueue::new(100, 100_000);
        queue.push_all((0..10).map(|i| json_op(i, 0)));
        let batch = queue.next_batch(500_000, 4).unwrap();
        assert_eq!((batch.count(), batch.start, batch.end), (4, 0, 4));
        // Ops 4..=9 are 14 bytes each ({"i":4,"p":""}): 6*14 + 5 commas + 12 envelope = 101 bytes.
        let five = queue.next_batch(100, 100).unwrap();
        assert_eq!(
            (five.count(), five.body.len(), five.start),
            (5, 12 + 5 * 14 + 4, 4)
        );
        let last = queue.next_batch(101, 100).unwrap();
        assert_eq!((last.count(), last.start, last.end), (1, 9, 10));
        assert!(queue.next_batch(101, 100).is_none());
    }

    #[test]
    fn op_larger_than_max_bytes_goes_alone() {
        let queue = OpQueue::new(100, 100_000);
        queue.push_all([json_op(0, 10), json_op(1, 500), json_op(2, 10)]);
        let sizes: Vec<usize> = std::iter::from_fn(|| queue.next_batch(200, 100))
            .map(|b| b.count())
            .collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        let queue = OpQueue::new(100, 100_000);
        queue.push_all([json_op(0, 500)]);
        let batch = queue.next_batch(10, 100).unwrap();
        assert_well_formed(&batch);
        assert_eq!(batch.count(), 1);
    }

    #[test]
    fn carry_counts_as_queued_and_is_drained_first() {
        let queue = OpQueue::new(100, 100_000);
        queue.push_all((0..3).map(|i| json_op(i, 50)));
        let batch = queue.next_batch(100, 100).unwrap();
        assert_eq!(batch.count(), 1);
        assert_eq!(queue.len(), 2, "op 1 sits in the carry, op 2 in the ring");
        assert_eq!(queue.bytes(), 2 * json_op(0, 50).bytes.len());
        let rest: Vec<u64> = queue
            .drain_all()
            .iter()
            .map(|op| op_index(&op.bytes))
            .collect();
        assert_eq!(rest, vec![1, 2]);
        assert_eq!(queue.taken(), 3);

        queue.push_all((3..6).map(|i| json_op(i, 50)));
        queue.next_batch(100, 100).unwrap();
        assert_eq!(
            op_index(&queue.evict_oldest().unwrap().bytes),
            4,
            "the carry is the oldest"
        );
        assert_eq!(queue.clear(), 1);
    }

    #[test]
    fn body_capacity_is_reserved_once_and_bounded() {
        let queue = OpQueue::new(10_000, 10_000_000);
        queue.push_all((0..3000).map(|i| json_op(i, 140)));
        let batch = queue.next_batch(100_000, 10_000).unwrap();
        assert!(
            batch.body.capacity() <= 100_000,
            "capacity {}",
            batch.body.capacity()
        );
        let rest = queue.next_batch(10_000_000, 10_000).unwrap();
        assert!(rest.body.capacity() >= rest.body.len());
        assert!(rest.body.capacity() <= rest.body.len() + rest.count() + ENVELOPE_LEN);
    }

    #[test]
    fn split_halves() {
        let ops: Vec<Vec<u8>> = (0..5)
            .map(|i| json_op(i, i as usize).bytes.into_vec())
            .collect();
        let refs: Vec<&[u8]> = ops.iter().map(Vec::as_slice).collect();
        let batch = Batch::from_ops(&refs, &[10, 11, 12, 13, 14], 40);
        assert_well_formed(&batch);
        assert_eq!(
            (batch.start, batch.end, batch.oldest_accepted_ns()),
            (40, 45, Some(10))
        );
        let (first, second) = batch.split();
        for half in [&first, &second] {
            assert_well_formed(half);
        }
        assert_eq!(
            (first.start, first.end, second.start, second.end),
            (40, 42, 42, 45)
        );
        assert_eq!(first.ops().chain(second.ops()).collect::<Vec<_>>(), refs);
        assert_eq!(second.accepted_ns, vec![12, 13, 14]);
        assert_eq!(first, Batch::from_ops(&refs[..2], &[10, 11], 40));

        let (a, b) = second.split();
        assert_eq!((a.count(), b.count()), (1, 2));
        let (single, empty) = a.split();
        assert_eq!(single, a);
        assert_eq!(
            (empty.body.as_slice(), empty.start, empty.end),
            (&b"{\"batch\":[]}"[..], 43, 43)
        );
        assert_eq!(empty.oldest_accepted_ns(), None);
    }

    #[test]
    fn concurrent_senders_take_each_op_exactly_once_in_order() {
        const TOTAL: u64 = 20_000;
        let queue = Arc::new(OpQueue::new(1_000, 200_000));
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || {
                for i in 0..TOTAL {
                    let mut op = json_op(i, (i % 90) as usize);
                    loop {
                        match queue.push(op) {
                            Ok(()) => break,
                            Err(back) => {
                                op = back;
                                queue.wait_space(
                                    op.bytes.len(),
                                    std::time::Duration::from_millis(50),
                                );
                            }
                        }
                    }
                }
            })
        };
        let senders: Vec<_> = (0..2)
            .map(|_| {
                let queue = queue.clone();
                thread::spawn(move || {
                    let mut batches = Vec::new();
                    while queue.taken() < TOTAL {
                        if let Some(batch) = queue.next_batch(4_000, 64) {
                            assert!(batch.body.len() <= 4_000);
                            assert_well_formed(&batch);
                            batches.push(batch);
                        } else {
                            queue.wait(1, std::time::Duration::from_millis(10));
                        }
                    }
                    batches
                })
            })
            .collect();
        producer.join().unwrap();
        let mut batches: Vec<Batch> = senders
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        batches.sort_by_key(|b| b.start);
        let mut ordinal = 0;
        for batch in &batches {
            assert_eq!(batch.start, ordinal);
            for op in batch.ops() {
                assert_eq!(op_index(op), ordinal, "take ordinal == push ordinal");
                ordinal += 1;
            }
        }
        assert_eq!(ordinal, TOTAL);
        assert_eq!(
            (queue.pushed(), queue.taken(), queue.len()),
            (TOTAL, TOTAL, 0)
        );
    }

    #[test]
    fn from_encoded_matches_a_lane_batch_byte_for_byte() {
        let ops: Vec<Op> = (0..7).map(|i| json_op(i, 40 + 13 * i as usize)).collect();
        let copies: Vec<Vec<u8>> = ops.iter().map(|op| op.bytes.to_vec()).collect();
        let lane = OpQueue::new(100, 1 << 20);
        for op in ops {
            lane.push(op).unwrap();
        }
        let from_lane = lane.next_batch(usize::MAX, usize::MAX).unwrap();
        let rebuilt = Batch::from_encoded(copies.iter().map(Vec::as_slice), 99).unwrap();
        assert_well_formed(&rebuilt);
        assert_eq!(rebuilt.body, from_lane.body);
        assert_eq!(rebuilt.spans, from_lane.spans);
        assert_eq!((rebuilt.start, rebuilt.end, rebuilt.origin), (0, 7, None));
        assert_eq!(rebuilt.accepted_ns, vec![99; 7]);
        assert!(rebuilt.ops().eq(copies.iter().map(Vec::as_slice)));

        let (first, second) = rebuilt.split();
        assert_eq!(
            (first.start, first.end, second.start, second.end),
            (0, 3, 3, 7)
        );
        assert_eq!((first.origin, second.origin), (None, None));
        let halves: Vec<&[u8]> = first.ops().chain(second.ops()).collect();
        assert!(halves.into_iter().eq(copies.iter().map(Vec::as_slice)));
        assert_well_formed(&first);
        assert_well_formed(&second);
    }

    #[test]
    fn from_encoded_refuses_what_no_lane_could_hold() {
        use crate::error::ErrorKind;
        let none: [&[u8]; 0] = [];
        let err = Batch::from_encoded(none.into_iter(), 0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Argument);
        let huge = vec![b'x'; MAX_OP_BYTES + 1];
        let err = Batch::from_encoded([&b"{}"[..], &huge[..]].into_iter(), 0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit);
        assert!(
            err.message.starts_with("from_ops: ops[1] is 32769 bytes"),
            "{err}"
        );
        let err = Batch::from_encoded([&b""[..]].into_iter(), 0).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Limit);
    }
}
