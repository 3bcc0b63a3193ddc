//! Dedup set: "was this key last recorded with this value less than `ttl` ago?"
//!
//! Keys and values are xxh3 hashes computed by the caller (identify: customer id -> attributes;
//! events: id -> 0 or a composite hash). The check sits on the track() hot path, so it is one
//! uncontended lock of one of up to 16 shards and one probe of a hash map keyed by the hash itself.
//!
//! Memory is bounded: each shard holds at most its share of `max_entries`, evicting oldest-recorded
//! first. Insertion order lives in a ring of `(key, seq)` records; overwriting a key leaves its old
//! record behind (lazy deletion: a record whose seq no longer matches the entry is skipped), and the
//! ring is compacted when stale records outnumber live ones, so it stays O(cap) too.
//!
//! What is deduplicated, by which key, is the policy's business (`dedup_policy.rs`).

use crate::sync::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

/// xxh3-64 of `bytes`.
#[inline]
pub fn hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Framed parts up to this many bytes are hashed in one shot from a stack copy.
const ONE_SHOT_BYTES: usize = 256;

/// xxh3-64 over several parts; each part is preceded by its length, so `["ab","c"]` and
/// `["a","bc"]` hash differently.
///
/// Short inputs (an identify's kind and id, an event id) are copied into one stack buffer and
/// hashed in one shot: the streaming hasher cost ~500 instructions for ~40 bytes, a sixth of an
/// `identify()` call under callgrind. xxh3's streaming form equals its one-shot form over the same
/// bytes, so both paths give the same hash.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let framed: usize = parts.iter().map(|part| 8 + part.len()).sum();
    if framed <= ONE_SHOT_BYTES {
        let mut buffer = [0u8; ONE_SHOT_BYTES];
        let mut at = 0;
        for part in parts {
            buffer[at..at + 8].copy_from_slice(&(part.len() as u64).to_le_bytes());
            buffer[at + 8..at + 8 + part.len()].copy_from_slice(part);
            at += 8 + part.len();
        }
        return xxh3_64(&buffer[..at]);
    }
    let mut hasher = Xxh3Default::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.digest()
}

/// The keys already are well-mixed 64-bit hashes: hashing them again would only cost time.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys, which this module never uses.
        self.0 = xxh3_64(bytes);
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[derive(Clone, Copy)]
struct Entry {
    value: u64,
    recorded_ns: u64,
    seq: u64,
}

struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<KeyIsHash>>,
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
    cap: usize,
}

impl Shard {
    fn is_live(&self, key: u64, seq: u64) -> bool {
        self.map.get(&key).is_some_and(|entry| entry.seq == seq)
    }

    fn record(&mut self, key: u64, value: u64, now_ns: u64, ttl_ns: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.map.insert(
            key,
            Entry {
                value,
                recorded_ns: now_ns,
                seq,
            },
        );
        self.order.push_back((key, seq));
        // Drop from the old end: stale records, then live entries while over the cap or expired.
        // Entries behind a fresh one may be expired too; they go when they reach the front.
        while let Some(&(key, seq)) = self.order.front() {
            let evict = match self.map.get(&key) {
                Some(entry) if entry.seq == seq => {
                    self.map.len() > self.cap || now_ns.saturating_sub(entry.recorded_ns) >= ttl_ns
                }
                _ => true,
            };
            if !evict {
                break;
            }
            self.order.pop_front();
            if self.is_live(key, seq) {
                self.map.remove(&key);
            }
        }
        if self.order.len() > 2 * self.cap + 16 {
            let map = &self.map;
            self.order
                .retain(|&(key, seq)| map.get(&key).is_some_and(|entry| entry.seq == seq));
        }
    }
}

#[repr(align(128))]
struct Padded(Mutex<Shard>);

pub struct DedupSet {
    shards: Box<[Padded]>,
    shard_mask: u64,
    ttl_ns: u64,
    max_entries: usize,
}

impl DedupSet {
    /// `ttl_ns == 0` (or `max_entries == 0`) disables it: nothing is a duplicate, nothing is kept.
    pub fn new(ttl_ns: u64, max_entries: usize) -> Self {
        // Sharding only pays with room to spare: a shard's cap must not round down to nothing.
        let shard_count: usize = if max_entries >= 16 * 64 { 16 } else { 1 };
        let shards = (0..shard_count)
            .map(|i| {
                let cap = max_entries / shard_count + usize::from(i < max_entries % shard_count);
                Padded(Mutex::new(Shard {
                    map: HashMap::with_capacity_and_hasher(cap.min(4096), Default::default()),
                    order: VecDeque::with_capacity(cap.min(4096)),
                    next_seq: 0,
                    cap,
                }))
            })
            .collect();
        let ttl_ns = if max_entries == 0 { 0 } else { ttl_ns };
        DedupSet {
            shards,
            shard_mask: shard_count as u64 - 1,
            ttl_ns,
            max_entries,
        }
    }

    #[inline]
    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // Middle bits: hashbrown uses the low bits for the slot and the top 7 for its tag.
        &self.shards[((key >> 40) & self.shard_mask) as usize].0
    }

    pub fn enabled(&self) -> bool {
        self.ttl_ns != 0
    }

    pub fn ttl_ns(&self) -> u64 {
        self.ttl_ns
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// True when `key` was last recorded with `value` less than `ttl` before `now_ns`.
    #[inline]
    pub fn is_duplicate(&self, key: u64, value: u64, now_ns: u64) -> bool {
        if self.ttl_ns == 0 {
            return false;
        }
        let shard = self.shard(key).lock();
        shard.map.get(&key).is_some_and(|entry| {
            entry.value == value && now_ns.saturating_sub(entry.recorded_ns) < self.ttl_ns
        })
    }

    /// Remembers `key -> value` as of `now_ns` (insert or overwrite), evicting the oldest entries
    /// of its shard beyond the cap and expired ones at the old end.
    #[inline]
    pub fn record(&self, key: u64, value: u64, now_ns: u64) {
        if self.ttl_ns == 0 {
            return;
        }
        self.shard(key)
            .lock()
            .record(key, value, now_ns, self.ttl_ns);
    }

    /// Forgets `key`, so the next check for it is never a duplicate (a deleted person must be
    /// re-created by an identify identical to one sent before the delete). Its ring slot goes lazily.
    pub fn forget(&self, key: u64) {
        if self.ttl_ns == 0 {
            return;
        }
        self.shard(key).lock().map.remove(&key);
    }

    /// Entries held now (expired ones still count until evicted); never more than `max_entries`.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.0.lock().map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            shard.map.clear();
            shard.order.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn forget_makes_the_next_check_a_miss() {
        let set = DedupSet::new(1_000, 16);
        set.record(1, 10, 0);
        set.record(2, 20, 0);
        assert!(set.is_duplicate(1, 10, 1));
        set.forget(1);
        assert!(!set.is_duplicate(1, 10, 1));
        assert!(set.is_duplicate(2, 20, 1));
        set.record(1, 10, 2);
        assert!(set.is_duplicate(1, 10, 3));
    }

    #[test]
    fn hashes_are_stable_and_parts_unambiguous() {
        assert_eq!(hash(b"abc"), hash(b"abc"));
        assert_ne!(hash(b"abc"), hash(b"abd"));
        assert_eq!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"ab", b"c"]));
        assert_ne!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"a", b"bc"]));
        assert_ne!(hash_parts(&[b"abc", b""]), hash_parts(&[b"abc"]));
        assert_ne!(hash_parts(&[b"", b"x"]), hash_parts(&[b"x", b""]));
    }

    #[test]
    fn the_one_shot_path_hashes_as_the_streaming_one_on_both_sides_of_its_limit() {
        let streaming = |parts: &[&[u8]]| {
            let mut hasher = Xxh3Default::new();
            for part in parts {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            hasher.digest()
        };
        let data: Vec<u8> = (0..600u32).map(|i| (i * 31 % 251) as u8).collect();
        for first in [0, 1, 7, 100, 200, 231, 232, 233, 240, 300] {
            for second in [0, 1, 8, 16] {
                let parts: [&[u8]; 3] = [b"kind", &data[..first], &data[first..first + second]];
                assert_eq!(hash_parts(&parts), streaming(&parts), "{first} + {second}");
            }
        }
    }

    #[test]
    fn disabled_when_ttl_is_zero() {
        for set in [DedupSet::new(0, 100), DedupSet::new(SEC, 0)] {
            set.record(1, 2, 0);
            assert!(!set.is_duplicate(1, 2, 0));
            assert_eq!(set.len(), 0);
            assert!(!set.enabled());
        }
    }

    #[test]
    fn same_value_within_ttl_only() {
        let set = DedupSet::new(300 * SEC, 1000);
        assert!(!set.is_duplicate(7, 1, 0));
        set.record(7, 1, 10 * SEC);
        assert!(set.is_duplicate(7, 1, 10 * SEC));
        assert!(!set.is_duplicate(7, 2, 10 * SEC), "changed value");
        assert!(!set.is_duplicate(8, 1, 10 * SEC), "other key");
        assert!(set.is_duplicate(7, 1, 310 * SEC - 1));
        assert!(!set.is_duplicate(7, 1, 310 * SEC), "expired at exactly ttl");
        // Recording again restarts the TTL.
        set.record(7, 1, 310 * SEC);
        assert!(set.is_duplicate(7, 1, 609 * SEC));
    }

    #[test]
    fn a_then_b_then_a() {
        let set = DedupSet::new(300 * SEC, 1000);
        set.record(1, 0xA, 0);
        assert!(set.is_duplicate(1, 0xA, 1));
        assert!(!set.is_duplicate(1, 0xB, 2));
        set.record(1, 0xB, 2);
        assert!(
            !set.is_duplicate(1, 0xA, 3),
            "A is not the last value any more"
        );
        set.record(1, 0xA, 3);
        assert!(set.is_duplicate(1, 0xA, 4));
        assert!(!set.is_duplicate(1, 0xB, 4));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn evicts_oldest_at_the_cap() {
        let set = DedupSet::new(300 * SEC, 100);
        for key in 0..150u64 {
            set.record(key, key, key);
            assert!(set.len() <= 100);
        }
        assert_eq!(set.len(), 100);
        assert!((0..50).all(|key| !set.is_duplicate(key, key, 200)));
        assert!((50..150).all(|key| set.is_duplicate(key, key, 200)));
        // Overwriting refreshes a key's age: 50 survives the next eviction, 51 does not.
        set.record(50, 50, 201);
        set.record(1000, 0, 202);
        assert!(set.is_duplicate(50, 50, 203) && !set.is_duplicate(51, 51, 203));
    }

    #[test]
    fn sharded_cap_holds_and_keeps_the_recent() {
        let set = DedupSet::new(300 * SEC, 10_000);
        for i in 0..20_000u64 {
            set.record(hash(&i.to_le_bytes()), i, i);
        }
        let len = set.len();
        assert!((9_000..=10_000).contains(&len), "{len}");
        assert!((19_000..20_000u64).all(|i| set.is_duplicate(hash(&i.to_le_bytes()), i, 20_000)));
    }

    #[test]
    fn overwrites_do_not_grow_memory() {
        let set = DedupSet::new(300 * SEC, 10);
        for i in 0..100_000u64 {
            set.record(i % 3, i, i);
        }
        let shard = set.shards[0].0.lock();
        assert_eq!(shard.map.len(), 3);
        assert!(
            shard.order.len() <= 2 * 10 + 16 + 1,
            "{}",
            shard.order.len()
        );
    }

    #[test]
    fn expired_entries_leave_on_record() {
        let set = DedupSet::new(SEC, 100);
        set.record(1, 1, 0);
        set.record(2, 2, SEC / 2);
        set.record(3, 3, SEC);
        assert_eq!(set.len(), 2, "key 1 expired");
        set.record(4, 4, 3 * SEC);
        assert_eq!(set.len(), 1);
    }

    fn key(thread: u64, i: u64) -> u64 {
        hash_parts(&[&thread.to_le_bytes(), &i.to_le_bytes()])
    }

    #[test]
    fn concurrent_callers_see_each_others_records() {
        let set = Arc::new(DedupSet::new(300 * SEC, 100_000));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let set = set.clone();
                thread::spawn(move || {
                    let (mut private_fresh, mut shared_fresh) = (0, 0);
                    for round in 0..3 {
                        for i in 0..2_000u64 {
                            if !set.is_duplicate(key(t, i), i, round) {
                                set.record(key(t, i), i, round);
                                private_fresh += 1;
                            }
                            let shared = key(99, i % 500);
                            if !set.is_duplicate(shared, 7, round) {
                                set.record(shared, 7, round);
                                shared_fresh += 1;
                            }
                        }
                    }
                    (private_fresh, shared_fresh)
                })
            })
            .collect();
        let mut shared_total = 0;
        for handle in threads {
            let (private_fresh, shared_fresh) = handle.join().unwrap();
            assert_eq!(private_fresh, 2_000, "each private key is new exactly once");
            shared_total += shared_fresh;
        }
        // Check-then-record is not atomic, so two threads may both see a shared key as new.
        assert!((500..=4 * 500).contains(&shared_total), "{shared_total}");
        assert_eq!(set.len(), 4 * 2_000 + 500);
        assert!((0..4).all(|t| (0..2_000).all(|i| set.is_duplicate(key(t, i), i, 5))));
    }

    #[test]
    fn concurrent_records_respect_the_cap() {
        for cap in [1_000, 2_048] {
            let set = Arc::new(DedupSet::new(300 * SEC, cap));
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let set = set.clone();
                    thread::spawn(move || {
                        for i in 0..10_000u64 {
                            set.record(key(t, i), 0, i);
                            if i % 256 == 0 {
                                assert!(set.len() <= cap);
                            }
                        }
                    })
                })
                .collect();
            for handle in threads {
                handle.join().unwrap();
            }
            assert_eq!(set.len(), cap, "every shard filled to its share");
        }
    }
}
