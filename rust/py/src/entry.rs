//! Raw `METH_FASTCALL` entry points for the common call, bound as `tracker.track` & co.
//!
//! pyo3's generated wrapper of a `FastCalls` method parses keywords and defaults on every call
//! (~200 of a `track()` call's ~4,100 instructions under callgrind: argument extraction, the
//! wrapper, the trampoline). The common call passes its arguments by position, with no keywords:
//! `track("user-42", "checkout", {...})`, `identify(42, {...})`. These functions read that shape
//! straight from CPython's argument vector and call the same `FastCalls` methods; any other shape
//! (a keyword, a wrong count) goes to the pyo3 method of the same name with the same arguments,
//! so parsing, defaults and every error message stay pyo3's.
//!
//! Invariant across the boundary: the `self` CPython passes is always a `FastCalls` (these
//! definitions are only ever bound to one, by `FastCalls.entry`), and CPython calls them with the
//! GIL held.

use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::fastcall::FastCalls;

const TRACK: u8 = 0;
const TRACK_ANONYMOUS: u8 = 1;
const PAGE: u8 = 2;
const SCREEN: u8 = 3;
const IDENTIFY: u8 = 4;

/// The `FastCalls` method a call hands other shapes to: one match, so a call's number and its
/// name cannot drift apart (`DEFINITIONS` is searched by name, never indexed by number).
const fn method_name(call: u8) -> &'static str {
    match call {
        TRACK => "track",
        TRACK_ANONYMOUS => "track_anonymous",
        PAGE => "page",
        SCREEN => "screen",
        _ => "identify",
    }
}

/// A method definition CPython reads, never writes, for the life of the process.
struct Definition(UnsafeCell<ffi::PyMethodDef>);

// SAFETY: never written after it is built (CPython only reads a PyMethodDef), so sharing it
// between threads shares immutable data.
unsafe impl Sync for Definition {}

type Entry = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// `doc` starts with the signature in CPython's `__text_signature__` form (`name(...)\n--\n\n`),
/// the pyo3 method's own, so `inspect.signature(tracker.track)` and `mock.create_autospec` see the
/// same parameters as before.
const fn definition(name: &'static CStr, doc: &'static CStr, entry: Entry) -> Definition {
    Definition(UnsafeCell::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: entry,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr(),
    }))
}

static DEFINITIONS: [(&str, Definition); 5] = [
    (
        method_name(TRACK),
        definition(
            c"track",
            c"track($self, customer_id, name, data=None, *, id=None, timestamp=None, region=None)\n--\n\nTracker.track, natively.",
            entry::<TRACK>,
        ),
    ),
    (
        method_name(TRACK_ANONYMOUS),
        definition(
            c"track_anonymous",
            c"track_anonymous($self, anonymous_id, name, data=None, *, id=None, timestamp=None, region=None)\n--\n\nTracker.track_anonymous, natively.",
            entry::<TRACK_ANONYMOUS>,
        ),
    ),
    (
        method_name(PAGE),
        definition(
            c"page",
            c"page($self, customer_id, url, data=None, *, id=None, timestamp=None, region=None)\n--\n\nTracker.page, natively.",
            entry::<PAGE>,
        ),
    ),
    (
        method_name(SCREEN),
        definition(
            c"screen",
            c"screen($self, customer_id, name, data=None, *, id=None, timestamp=None, region=None)\n--\n\nTracker.screen, natively.",
            entry::<SCREEN>,
        ),
    ),
    (
        method_name(IDENTIFY),
        definition(
            c"identify",
            c"identify($self, customer_id, attributes=None, /, *, region=None, **attrs)\n--\n\nTracker.identify, natively.",
            entry::<IDENTIFY>,
        ),
    ),
];

/// The builtin function `name` bound to `fast` (what `FastCalls.entry` returns).
pub(crate) fn bound<'py>(fast: &Bound<'py, FastCalls>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let Some((_, definition)) = DEFINITIONS.iter().find(|(known, _)| *known == name) else {
        let known: Vec<&str> = DEFINITIONS.iter().map(|(known, _)| *known).collect();
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "no fast entry named {} (one of: {})",
            ciotrack_core::json::py_repr(name),
            known.join(", ")
        )));
    };
    // SAFETY: the definition is static and never written; `fast` is a live FastCalls, which the
    // new function object holds a strong reference to (its `__self__`), so every call of it gets
    // a FastCalls as `self`. A null result has an exception set, which `from_owned_ptr_or_err`
    // takes.
    unsafe {
        let function = ffi::PyCFunction_NewEx(definition.0.get(), fast.as_ptr(), null_mut());
        Bound::from_owned_ptr_or_err(fast.py(), function)
    }
}

/// CPython's entry: never lets a panic unwind into C, and turns an error into a raised exception.
unsafe extern "C" fn entry<const CALL: u8>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a METH_FASTCALL function with the GIL held.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: the arguments are CPython's own for this call (see `call`).
    let outcome = catch_unwind(AssertUnwindSafe(|| unsafe {
        call::<CALL>(py, slf, args, nargs, kwnames)
    }));
    match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => {
            err.restore(py);
            null_mut()
        }
        Err(_) => {
            PanicException::new_err("ciotrack: panic in a tracking call").restore(py);
            null_mut()
        }
    }
}

/// The call itself: a new reference to the result, or null with an exception set (the pyo3
/// method's own outcome, on the delegated path).
///
/// # Safety
/// `slf` is the FastCalls the function was bound to; `args` holds `nargs` positional arguments
/// followed by one value per name in `kwnames` (a tuple, or null for none), all borrowed from the
/// caller for the duration of the call; the GIL is held.
unsafe fn call<const CALL: u8>(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: the caller's contract: `slf` is a live FastCalls (only `bound` makes these
    // functions, always with one), borrowed for the call.
    let this = unsafe { Borrowed::from_ptr(py, slf) };
    let positional = nargs as usize;
    let common = kwnames.is_null()
        && match CALL {
            IDENTIFY => (1..=2).contains(&positional),
            _ => (2..=3).contains(&positional),
        };
    if !common {
        let method = this.getattr(PyString::new(py, method_name(CALL)))?;
        // SAFETY: forwards CPython's own argument vector for this call unchanged (no
        // PY_VECTORCALL_ARGUMENTS_OFFSET: the slot before `args` is not ours to borrow).
        return Ok(unsafe {
            ffi::PyObject_Vectorcall(method.as_ptr(), args, nargs as usize, kwnames)
        });
    }
    // SAFETY: `positional` arguments are there (counted above), each a live object borrowed for
    // the call.
    let arg = |i: usize| unsafe { Borrowed::from_ptr(py, *args.add(i)) };
    // An optional positional given as None is the same as leaving it out (pyo3's `Option`).
    let optional = |i: usize| (i < positional).then(|| arg(i)).filter(|a| !a.is_none());
    // SAFETY: checked by the caller's contract (see above); a frozen pyclass is read through `get`.
    let fast = unsafe { this.cast_unchecked::<FastCalls>() }.get();
    let data = optional(2);
    let data = data.as_deref();
    match CALL {
        TRACK => fast.track(py, &arg(0), &arg(1), data, None, None, None)?,
        TRACK_ANONYMOUS => fast.track_anonymous(py, &arg(0), &arg(1), data, None, None, None)?,
        PAGE => fast.page(py, &arg(0), &arg(1), data, None, None, None)?,
        SCREEN => fast.screen(py, &arg(0), &arg(1), data, None, None, None)?,
        _ => fast.identify(py, &arg(0), optional(1).as_deref(), None, None)?,
    }
    Ok(py.None().into_ptr())
}
