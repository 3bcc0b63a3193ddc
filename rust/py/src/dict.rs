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

#[cfg(test)]
mod tests {
    use super::DictEntries;
    use pyo3::prelude::*;
    use pyo3::types::{PyDict, PyList};

    #[test]
    fn entries_come_in_insertion_order() {
        Python::initialize();
        Python::attach(|py| {
            let dict = PyDict::new(py);
            for (key, value) in [("b", 1), ("a", 2), ("c", 3)] {
                dict.set_item(key, value).unwrap();
            }
            let entries: Vec<(String, i64)> = DictEntries::new(&dict)
                .map(|(k, v)| (k.extract().unwrap(), v.extract().unwrap()))
                .collect();
            assert_eq!(entries, [("b".into(), 1), ("a".into(), 2), ("c".into(), 3)]);
        });
    }

    #[test]
    fn a_dict_mutated_mid_iteration_ends_the_walk_safely() {
        Python::initialize();
        Python::attach(|py| {
            let dict = PyDict::new(py);
            for i in 0..100 {
                // Values only this dict holds: freed by clear() unless the iterator owns them.
                dict.set_item(i, PyList::new(py, [i]).unwrap()).unwrap();
            }
            let mut entries = DictEntries::new(&dict);
            let (key, value) = entries.next().unwrap();
            // What Python code run by the encoder (an Enum's `value`, ...) could do mid-walk.
            dict.clear();
            for i in 0..10 {
                dict.set_item(format!("new{i}"), i).unwrap();
            }
            let rest = entries.count();
            assert!(rest <= 10, "the walk sees at most the new table: {rest}");
            // The pair taken before the mutation is still alive (strong references).
            assert_eq!(key.extract::<i64>().unwrap(), 0);
            assert_eq!(value.extract::<Vec<i64>>().unwrap(), [0]);
        });
    }
}
