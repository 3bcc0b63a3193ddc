//! The entries of a dict, for the encoder and the argument builders (one loop, one SAFETY argument).
//!
//! Not pyo3's `PyDict::iter`: that one panics when the dict changes size during iteration, and
//! the encoder calls Python code (an Enum's `value`, a tzinfo's `utcoffset`, a Decimal subclass's
//! `__str__`) that may mutate the very dict being encoded. A mutation here only makes the output
//! reflect some state of the dict; it cannot crash or read freed memory.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// `(key, value)` pairs of a dict in insertion order, each as a strong reference.
pub struct DictEntries<'a, 'py> {
    dict: &'a Bound<'py, PyDict>,
    pos: ffi::Py_ssize_t,
}

impl<'a, 'py> DictEntries<'a, 'py> {
    pub fn new(dict: &'a Bound<'py, PyDict>) -> Self {
        DictEntries { dict, pos: 0 }
    }
}

impl<'py> Iterator for DictEntries<'_, 'py> {
    type Item = (Bound<'py, PyAny>, Bound<'py, PyAny>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let mut key: *mut ffi::PyObject = std::ptr::null_mut();
        let mut value: *mut ffi::PyObject = std::ptr::null_mut();
        // SAFETY: `self.dict` is a live dict (a `Bound` holds a strong reference and proves the GIL
        // is held, so no other thread runs Python meanwhile). PyDict_Next validates `pos` against
        // the dict's current table on every call, so it stays in bounds even if Python code run
        // between two calls resized or cleared the dict. On success `key` and `value` are
        // borrowed references valid until the dict is next mutated; `from_borrowed_ptr` turns
        // them into strong references at once, before any Python code can run, so they outlive
        // any later mutation. Neither pointer is null when PyDict_Next returns non-zero.
        unsafe {
            if ffi::PyDict_Next(self.dict.as_ptr(), &mut self.pos, &mut key, &mut value) == 0 {
                return None;
            }
            let py = self.dict.py();
            Some((
                Bound::from_borrowed_ptr(py, key),
                Bound::from_borrowed_ptr(py, value),
            ))
        }
    }
}
