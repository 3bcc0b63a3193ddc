//! Encoded dict keys, remembered by the identity of the `str` object.
//!
//! An application's event data is mostly built from dict literals, whose keys are the same `str`
//! objects on every call (constants of the code object). Writing such a key (type check, UTF-8
//! form, escape scan, copy) was ~74 instructions under callgrind; a hit here is a pointer compare
//! and one copy of the bytes `"key":` kept from the first time.
//!
//! Invariants:
//! - Every access happens with the GIL held (the callers hold a `Bound`), so no two threads touch
//!   the table at once (the module is not built for free-threaded CPython).
//! - A slot holds a strong reference to its key. While it is cached, the object cannot be freed,
//!   so no other object can appear at its address: equal pointers mean the same object. A `str`
//!   is immutable once shared (CPython resizes or writes one in place only while its refcount is
//!   1), so the same object means the same bytes.
//! - Only exact `str` objects are kept: freeing an evicted one runs no Python code.
//! - A forked child inherits the table and the references it holds, which stay valid there.

use std::cell::UnsafeCell;
use std::ptr::null_mut;

use pyo3::ffi;

const SLOTS: usize = 64;
/// Room for `"key":` (its encoded length is at most 32): longer keys are written each time.
const ROOM: usize = 32;

#[derive(Clone, Copy)]
struct Slot {
    key: *mut ffi::PyObject,
    len: u8,
    bytes: [u8; ROOM],
}

const EMPTY: Slot = Slot {
    key: null_mut(),
    len: 0,
    bytes: [0; ROOM],
};

struct Table(UnsafeCell<[Slot; SLOTS]>);

// SAFETY: only read or written with the GIL held (module invariant above), which serialises
// every access across threads.
unsafe impl Sync for Table {}

static TABLE: Table = Table(UnsafeCell::new([EMPTY; SLOTS]));

#[inline(always)]
fn slot_of(key: *mut ffi::PyObject) -> usize {
    // Fibonacci hashing: the top bits of the address times 2^64/φ, so keys allocated side by side
    // (the constants of one dict literal) spread over the table.
    ((key as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// Appends the cached `"key":` of `key` to `out` and returns true, or returns false (not cached).
///
/// # Safety
/// The GIL is held and `key` is a live object.
#[inline(always)]
pub(super) unsafe fn write_cached(out: &mut Vec<u8>, key: *mut ffi::PyObject) -> bool {
    // SAFETY: the GIL is held (the caller's contract), so nothing else accesses the table.
    let slot = unsafe { &(*TABLE.0.get())[slot_of(key)] };
    if slot.key != key {
        return false;
    }
    let n = slot.len as usize;
    out.reserve(ROOM);
    // SAFETY: `reserve(ROOM)` leaves at least ROOM bytes of spare capacity past `len`, and the
    // whole `bytes` array (ROOM bytes) is copied into it; `set_len` covers only the `n <= ROOM`
    // bytes that are the key (the rest is spare capacity, overwritten later or never read).
    unsafe {
        let len = out.len();
        std::ptr::copy_nonoverlapping(slot.bytes.as_ptr(), out.as_mut_ptr().add(len), ROOM);
        out.set_len(len + n);
    }
    true
}

/// Remembers that `key` (an exact str) is written as `encoded` (`"key":`), when it fits.
///
/// # Safety
/// The GIL is held, `key` is a live exact `str`, and `encoded` is exactly what writing it as a
/// key produces.
pub(super) unsafe fn remember(key: *mut ffi::PyObject, encoded: &[u8]) {
    if encoded.len() > ROOM {
        return;
    }
    // SAFETY: the GIL is held (the caller's contract), so nothing else accesses the table.
    let slot = unsafe { &mut (*TABLE.0.get())[slot_of(key)] };
    let old = slot.key;
    let mut bytes = [0u8; ROOM];
    bytes[..encoded.len()].copy_from_slice(encoded);
    // SAFETY: `key` is live (the caller's contract); the slot keeps the new strong reference.
    unsafe { ffi::Py_INCREF(key) };
    *slot = Slot {
        key,
        len: encoded.len() as u8,
        bytes,
    };
    if !old.is_null() {
        // SAFETY: the reference the slot held; an exact str's deallocation runs no Python code,
        // so nothing can re-enter the table while it is being replaced (the slot is already set).
        unsafe { ffi::Py_DECREF(old) };
    }
}
