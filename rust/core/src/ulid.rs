//! ULIDs for event `id`s (Customer.io dedups events by it): 48-bit unix milliseconds followed by
//! 80 random bits, as 26 Crockford base32 characters. No pyo3 here.
//!
//! Randomness comes from a per-thread wyrand generator seeded from the OS (getrandom). It is
//! reseeded whenever the fork generation changed, so a forked child never replays the ids its
//! parent will also produce from the same copied state.

use std::cell::Cell;

use crate::fork;

pub const LEN: usize = 26;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Crockford value of each ASCII byte (either case), or 0xff. I, L, O and U are not part of a
/// ULID, so they are rejected rather than mapped like Crockford's decoder would.
const DECODE: [u8; 128] = {
    let mut table = [0xffu8; 128];
    let mut i = 0;
    while i < 32 {
        let c = ALPHABET[i];
        table[c as usize] = i as u8;
        table[c.to_ascii_lowercase() as usize] = i as u8;
        i += 1;
    }
    table
};

/// Lays out `ms` (low 48 bits) and `random` (low 80 bits) as a ULID.
///
/// Three runs of characters, each from a `u64` (shifts of a `u128` cost twice as many
/// instructions, and this runs once per `track()`): 10 characters of the time (the first carries
/// only its top 3 bits, hence `<= '7'`), then 8 of each 40-bit half of the randomness.
#[inline]
pub fn encode(ms: u64, random: u128) -> [u8; LEN] {
    const HALF: u64 = (1 << 40) - 1;
    let mut out = [0u8; LEN];
    put_base32(&mut out[..10], ms & 0xffff_ffff_ffff);
    put_base32(&mut out[10..18], (random >> 40) as u64 & HALF);
    put_base32(&mut out[18..], random as u64 & HALF);
    out
}

/// `value` as `slots.len()` base32 characters, most significant first.
#[inline(always)]
fn put_base32(slots: &mut [u8], value: u64) {
    let last = slots.len() - 1;
    for (i, slot) in slots.iter_mut().enumerate() {
        *slot = ALPHABET[((value >> (5 * (last - i))) & 0x1f) as usize];
    }
}

/// Whether `s` is a ULID: 26 Crockford base32 characters (either case), the first at most '7'
/// (a larger one would overflow 128 bits).
pub fn is_valid(s: &[u8]) -> bool {
    s.len() == LEN && s[0] <= b'7' && s.iter().all(|&b| b < 128 && DECODE[b as usize] != 0xff)
}

/// A valid ULID in its canonical form, upper case: the form an event id is sent in (a caller
/// may give one in lower case). None when `s` is not a ULID.
pub fn canonical(s: &[u8]) -> Option<[u8; LEN]> {
    if !is_valid(s) {
        return None;
    }
    let mut id = [0u8; LEN];
    id.copy_from_slice(s);
    id.make_ascii_uppercase();
    Some(id)
}

/// The 128-bit value of a valid ULID, for tests and for reading the timestamp back.
pub fn decode(s: &[u8]) -> Option<u128> {
    if !is_valid(s) {
        return None;
    }
    Some(
        s.iter()
            .fold(0u128, |acc, &b| (acc << 5) | DECODE[b as usize] as u128),
    )
}

/// A fresh ULID for the given wall-clock milliseconds.
#[inline]
pub fn generate(ms: u64) -> [u8; LEN] {
    encode(ms, random_80())
}

struct ThreadRng {
    state: u64,
    generation: u64,
    seeded: bool,
}

thread_local! {
    static RNG: Cell<ThreadRng> = const { Cell::new(ThreadRng { state: 0, generation: 0, seeded: false }) };
}

/// wyrand step: a 64-bit state advanced by a Weyl constant, mixed through a 128-bit multiply.
/// Not cryptographic; it only has to make collisions between event ids vanishingly unlikely.
#[inline]
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = (*state as u128).wrapping_mul((*state ^ 0xe703_7ed1_a0b4_28db) as u128);
    ((t >> 64) as u64) ^ (t as u64)
}

fn os_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness (should not happen on Linux): mix time, pid and an address so two
        // processes or threads still diverge.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        let mut s = nanos ^ ((std::process::id() as u64) << 32) ^ (&local as *const u8 as u64);
        wyrand(&mut s)
    })
}

#[inline]
fn random_80() -> u128 {
    RNG.with(|cell| {
        let mut rng = cell.replace(ThreadRng {
            state: 0,
            generation: 0,
            seeded: false,
        });
        let generation = fork::generation();
        if !rng.seeded || rng.generation != generation {
            rng = ThreadRng {
                state: os_seed(),
                generation,
                seeded: true,
            };
        }
        let hi = wyrand(&mut rng.state);
        let lo = wyrand(&mut rng.state) & 0xffff;
        cell.set(rng);
        ((hi as u128) << 16) | lo as u128
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn layout_is_time_then_randomness() {
        assert_eq!(&encode(0, 0), b"00000000000000000000000000");
        assert_eq!(&encode(u64::MAX, u128::MAX), b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        // 1469918176385 ms is the ULID spec's example time: its prefix is 01ARYZ6S41.
        assert!(encode(1_469_918_176_385, 0).starts_with(b"01ARYZ6S41"));
        let id = generate(1_700_000_000_123);
        assert_eq!(decode(&id).unwrap() >> 80, 1_700_000_000_123);
    }

    #[test]
    fn encode_round_trips_every_bit() {
        // Each single bit of the time and of the randomness, and a spread of mixed values, decode
        // back to exactly the 128-bit value laid out (the three runs meet at bits 80 and 40).
        let mut cases: Vec<(u64, u128)> = Vec::new();
        for bit in 0..48 {
            cases.push((1 << bit, 0));
        }
        for bit in 0..80 {
            cases.push((0, 1 << bit));
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push((x >> 16, (x as u128) << 64 | x.rotate_left(29) as u128));
        }
        for (ms, random) in cases {
            let value = ((ms as u128 & 0xffff_ffff_ffff) << 80) | (random & ((1u128 << 80) - 1));
            assert_eq!(decode(&encode(ms, random)), Some(value), "{ms} {random}");
        }
    }

    #[test]
    fn validation() {
        assert_eq!(
            canonical(b"01arz3ndektsv4rrffq69g5fav"),
            Some(*b"01ARZ3NDEKTSV4RRFFQ69G5FAV")
        );
        assert_eq!(
            canonical(b"01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            Some(*b"01ARZ3NDEKTSV4RRFFQ69G5FAV")
        );
        assert_eq!(canonical(b"01ARZ3NDEKTSV4RRFFQ69G5FA"), None);
        assert!(is_valid(b"01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(is_valid(b"01arz3ndektsv4rrffq69g5fav"));
        assert!(is_valid(b"7ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
        assert!(
            !is_valid(b"8ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
            "overflows 128 bits"
        );
        assert!(!is_valid(b"01ARZ3NDEKTSV4RRFFQ69G5FA"), "25 chars");
        assert!(!is_valid(b"01ARZ3NDEKTSV4RRFFQ69G5FAVX"), "27 chars");
        for bad in [b'I', b'L', b'O', b'U', b'-', b' '] {
            let mut s = *b"01ARZ3NDEKTSV4RRFFQ69G5FAV";
            s[5] = bad;
            assert!(!is_valid(&s), "{}", bad as char);
        }
        assert!(!is_valid("01ARZ3NDEKTSV4RRFFQ69G5FAé".as_bytes()));
        assert!(!is_valid(b""));
    }

    #[test]
    fn generated_ids_are_valid_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = generate(1_700_000_000_000);
            assert!(is_valid(&id));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn threads_get_distinct_streams() {
        let ids: Vec<[u8; LEN]> = (0..4)
            .map(|_| std::thread::spawn(|| generate(1)))
            .map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
