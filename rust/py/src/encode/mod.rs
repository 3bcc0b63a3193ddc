//! Python values -> compact JSON, on the calling thread, at call time (so later mutation of the
//! caller's dict changes nothing queued).
//!
//! Fast path first: exact-type checks on the type pointer for str/int/float/bool/None/dict/list/
//! tuple, with borrowed pointers and no intermediate allocation. Only values that miss those
//! checks pay for isinstance against the cached Enum/datetime/date/Decimal/UUID types.
//! Errors carry the path to the bad field; it is built while the error unwinds, so a successful
//! encode never formats a path.

use std::os::raw::c_int;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use ciotrack_core::json;
use ciotrack_core::{CoreError, ErrorKind};

use crate::dict::DictEntries;
use crate::errors::Error;

mod key_cache;
mod uncommon;

pub use uncommon::datetime_unix_seconds;
use uncommon::write_uncommon;

/// Deeper than this is taken for a cycle (a dict containing itself) rather than data.
pub const MAX_DEPTH: u32 = 64;
/// An error path longer than this is shown shortened with `...` (a cycle would be 64 deep).
const MAX_PATH_SHOWN: usize = 8;

/// One step from a container to the bad value, innermost first while unwinding.
enum Segment {
    Key(Py<PyAny>),
    Index(usize),
}

pub struct ValueFault {
    kind: ErrorKind,
    detail: String,
    path: Vec<Segment>,
}

/// Why encoding stopped: a value the rules reject, or an exception raised by Python code the
/// encoder called (an Enum's `value`, a tzinfo's `utcoffset`; a Decimal/UUID subclass's failing
/// `__str__` is a Value fault instead, see `text_of`).
pub enum EncodeError {
    Value(Box<ValueFault>),
    Python(PyErr),
}

impl EncodeError {
    fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        EncodeError::Value(Box::new(ValueFault {
            kind,
            detail: detail.into(),
            path: Vec::new(),
        }))
    }

    fn at(mut self, segment: impl FnOnce() -> Segment) -> Self {
        if let EncodeError::Value(fault) = &mut self {
            fault.path.push(segment());
        }
        self
    }

    /// The error for Python, its message starting with `root` and the path: `data['items'][2]: ...`.
    pub fn into_error(self, py: Python<'_>, root: &str) -> Error {
        match self {
            EncodeError::Python(err) => Error::Python(err),
            EncodeError::Value(fault) => {
                let mut message = String::from(root);
                for segment in fault.path.iter().rev().take(MAX_PATH_SHOWN) {
                    match segment {
                        Segment::Index(i) => message.push_str(&format!("[{i}]")),
                        Segment::Key(key) => {
                            let shown = key
                                .bind(py)
                                .repr()
                                .map(|r| r.to_string())
                                .unwrap_or_else(|_| "?".into());
                            message.push('[');
                            message.push_str(&shown);
                            message.push(']');
                        }
                    }
                }
                if fault.path.len() > MAX_PATH_SHOWN {
                    message.push_str("...");
                }
                message.push_str(": ");
                message.push_str(&fault.detail);
                Error::Core(CoreError::new(fault.kind, message))
            }
        }
    }
}

impl EncodeError {
    /// Adds a dict key to the path of an error that unwinds through that key.
    pub(crate) fn at_key(self, key: &Bound<'_, PyAny>) -> Self {
        self.at(|| Segment::Key(key.clone().unbind()))
    }
}

impl From<PyErr> for EncodeError {
    fn from(err: PyErr) -> Self {
        EncodeError::Python(err)
    }
}

/// The rarer types, looked up once per process.
pub(crate) struct SlowTypes {
    enum_: Py<PyAny>,
    decimal: Py<PyAny>,
    uuid: Py<PyAny>,
    pub(crate) mapping: Py<PyAny>,
}

static SLOW_TYPES: PyOnceLock<SlowTypes> = PyOnceLock::new();

pub(crate) fn slow_types(py: Python<'_>) -> PyResult<&SlowTypes> {
    SLOW_TYPES.get_or_try_init(py, || {
        Ok(SlowTypes {
            enum_: py.import("enum")?.getattr("Enum")?.unbind(),
            decimal: py.import("decimal")?.getattr("Decimal")?.unbind(),
            uuid: py.import("uuid")?.getattr("UUID")?.unbind(),
            mapping: py.import("collections.abc")?.getattr("Mapping")?.unbind(),
        })
    })
}

pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The UTF-8 of a str object, borrowed from it (CPython caches the UTF-8 form; for ASCII it is the
/// object's own data). A lone surrogate has no UTF-8 form: that is an InvalidValueError.
///
/// # Safety
/// `obj` must be a live str (or subclass) that outlives the returned slice.
#[inline]
unsafe fn utf8<'a>(obj: *mut ffi::PyObject) -> Result<&'a [u8], EncodeError> {
    // Up to 3.13 a compact ASCII str is read in place, without the call below. pyo3 does not read a
    // str's state bitfield from 3.14 on (its layout changed): there the call does it.
    #[cfg(not(Py_3_14))]
    // SAFETY: `obj` is a live str (the caller's contract): reading its state bits is a field read.
    if unsafe { ffi::PyUnicode_IS_COMPACT_ASCII(obj) } != 0 {
        // SAFETY: a compact ASCII str keeps its `length` characters, one byte each, right after
        // its header for its whole life; ASCII is its own UTF-8. This is what
        // PyUnicode_AsUTF8AndSize returns for it, without the call (most keys and values).
        return Ok(unsafe {
            std::slice::from_raw_parts(
                ffi::PyUnicode_DATA(obj) as *const u8,
                ffi::PyUnicode_GET_LENGTH(obj) as usize,
            )
        });
    }
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: `obj` is a live str (the caller's contract), and the GIL is held.
    let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(obj, &mut size) };
    if data.is_null() {
        // SAFETY: the GIL is held; this clears the UnicodeEncodeError just set.
        unsafe { ffi::PyErr_Clear() };
        return Err(EncodeError::new(
            ErrorKind::Invalid,
            "string contains a lone surrogate (not valid UTF-8)",
        ));
    }
    // SAFETY: CPython keeps `size` bytes of UTF-8 at `data` for as long as the str lives (the
    // cached UTF-8 form is never freed or changed before the object), which the caller
    // guarantees covers `'a`.
    Ok(unsafe { std::slice::from_raw_parts(data as *const u8, size as usize) })
}

/// A str argument as &str, or an InvalidValueError/SerializationError naming `field`.
pub fn str_arg<'a>(obj: &'a Bound<'_, PyAny>, field: &str) -> Result<&'a str, CoreError> {
    // SAFETY: type checked first; the slice borrows from `obj`, which outlives it.
    unsafe {
        if ffi::PyUnicode_Check(obj.as_ptr()) == 0 {
            return Err(CoreError::new(
                ErrorKind::Serialization,
                format!("{field}: must be a str, not '{}'", type_name(obj)),
            ));
        }
        match utf8(obj.as_ptr()) {
            // CPython's UTF-8 form is valid UTF-8 by construction.
            Ok(bytes) => Ok(std::str::from_utf8_unchecked(bytes)),
            Err(_) => Err(CoreError::invalid(format!(
                "{field}: string contains a lone surrogate (not valid UTF-8)"
            ))),
        }
    }
}

/// Writes an int that fits i64 or u64; anything larger is an InvalidValueError.
///
/// # Safety
/// `obj` must be a live int (or subclass), with the GIL held.
#[inline]
unsafe fn write_int(out: &mut Vec<u8>, obj: *mut ffi::PyObject) -> Result<(), EncodeError> {
    let mut overflow: c_int = 0;
    // SAFETY: `obj` is a live int (the caller's contract); the GIL is held.
    let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj, &mut overflow) };
    if overflow == 0 {
        // SAFETY: reads this thread's error indicator; the GIL is held.
        if v == -1 && !unsafe { ffi::PyErr_Occurred() }.is_null() {
            // SAFETY: clears the error just read; the GIL is held.
            unsafe { ffi::PyErr_Clear() };
            return Err(EncodeError::new(ErrorKind::Invalid, "int cannot be read"));
        }
        json::write_i64(out, v);
        return Ok(());
    }
    if overflow > 0 {
        // SAFETY: `obj` is a live int (the caller's contract); the GIL is held.
        let u = unsafe { ffi::PyLong_AsUnsignedLongLong(obj) };
        // SAFETY: reads this thread's error indicator; the GIL is held.
        if u != u64::MAX || unsafe { ffi::PyErr_Occurred() }.is_null() {
            json::write_u64(out, u);
            return Ok(());
        }
        // SAFETY: clears the OverflowError just set; the GIL is held.
        unsafe { ffi::PyErr_Clear() };
    }
    Err(EncodeError::new(
        ErrorKind::Invalid,
        "int does not fit in 64 bits",
    ))
}

#[inline]
fn write_float(out: &mut Vec<u8>, v: f64) -> Result<(), EncodeError> {
    if json::write_f64(out, v) {
        Ok(())
    } else {
        Err(EncodeError::new(
            ErrorKind::Invalid,
            format!("float {v} is not allowed (JSON has no NaN or infinity)"),
        ))
    }
}

/// Writes any supported value. `depth` is the number of containers around `obj`.
pub fn write_value(
    py: Python<'_>,
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    depth: u32,
) -> Result<(), EncodeError> {
    let ptr = obj.as_ptr();
    // SAFETY: `ptr` is alive for this call (held by `obj`); every FFI call below gets a valid
    // object of the type just checked.
    unsafe {
        let tp = ffi::Py_TYPE(ptr);
        if tp == &raw mut ffi::PyUnicode_Type {
            json::write_str(out, std::str::from_utf8_unchecked(utf8(ptr)?));
            Ok(())
        } else if tp == &raw mut ffi::PyLong_Type {
            write_int(out, ptr)
        } else if tp == &raw mut ffi::PyFloat_Type {
            write_float(out, ffi::PyFloat_AS_DOUBLE(ptr))
        } else if ptr == ffi::Py_True() {
            out.extend_from_slice(b"true");
            Ok(())
        } else if ptr == ffi::Py_False() {
            out.extend_from_slice(b"false");
            Ok(())
        } else if ptr == ffi::Py_None() {
            out.extend_from_slice(b"null");
            Ok(())
        } else if tp == &raw mut ffi::PyDict_Type {
            write_dict(py, out, obj, depth)
        } else if tp == &raw mut ffi::PyList_Type {
            write_list(py, out, obj, depth)
        } else if tp == &raw mut ffi::PyTuple_Type {
            write_tuple(py, out, obj, depth)
        } else {
            write_uncommon(py, out, obj, depth)
        }
    }
}

fn too_deep() -> EncodeError {
    EncodeError::new(
        ErrorKind::Serialization,
        format!("nesting deeper than {MAX_DEPTH} (cyclic?)"),
    )
}

/// A dict's entries, written without building any intermediate collection.
pub(crate) fn write_dict(
    py: Python<'_>,
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    depth: u32,
) -> Result<(), EncodeError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep());
    }
    let dict = obj.cast::<PyDict>().map_err(PyErr::from)?;
    out.push(b'{');
    for (i, (key, value)) in DictEntries::new(dict).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(out, &key)?;
        write_value(py, out, &value, depth + 1).map_err(|e| e.at(|| Segment::Key(key.unbind())))?;
    }
    out.push(b'}');
    Ok(())
}

/// `"key":`, or an error for a key that is not a str or has no UTF-8 form.
#[inline]
pub(crate) fn write_key(out: &mut Vec<u8>, key: &Bound<'_, PyAny>) -> Result<(), EncodeError> {
    let ptr = key.as_ptr();
    // SAFETY: the GIL is held (`key` is a Bound) and `key` is live; type checked before reading
    // the UTF-8; the slice does not outlive `key`; what is remembered is exactly what was written
    // for an exact str.
    unsafe {
        if key_cache::write_cached(out, ptr) {
            return Ok(());
        }
        if ffi::PyUnicode_Check(ptr) == 0 {
            return Err(non_str_key(key));
        }
        let bytes = utf8(ptr).map_err(|_| {
            EncodeError::new(
                ErrorKind::Invalid,
                format!("key {} contains a lone surrogate", shown(key)),
            )
        })?;
        let start = out.len();
        // CPython's UTF-8 form is valid UTF-8 by construction.
        json::write_key(out, std::str::from_utf8_unchecked(bytes));
        if ffi::PyUnicode_CheckExact(ptr) != 0 {
            key_cache::remember(ptr, &out[start..]);
        }
    }
    Ok(())
}

fn shown(obj: &Bound<'_, PyAny>) -> String {
    let text = obj
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

fn non_str_key(key: &Bound<'_, PyAny>) -> EncodeError {
    EncodeError::new(
        ErrorKind::Serialization,
        format!(
            "dict key {} is not a str ('{}')",
            shown(key),
            type_name(key)
        ),
    )
}

fn write_list(
    py: Python<'_>,
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    depth: u32,
) -> Result<(), EncodeError> {
    // SAFETY: (the call and both accessors) the caller checked `obj` is a list (or subclass), and
    // these are the list accessors, which write_sequence calls on `obj` only, with an index below
    // its current size.
    unsafe {
        write_sequence(
            py,
            out,
            obj,
            depth,
            |list| ffi::PyList_GET_SIZE(list),
            |list, i| ffi::PyList_GET_ITEM(list, i),
        )
    }
}

fn write_tuple(
    py: Python<'_>,
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    depth: u32,
) -> Result<(), EncodeError> {
    // SAFETY: (the call and both accessors) the caller checked `obj` is a tuple (or subclass), and
    // these are the tuple accessors, which write_sequence calls on `obj` only, with an index below
    // its size.
    unsafe {
        write_sequence(
            py,
            out,
            obj,
            depth,
            |tuple| ffi::PyTuple_GET_SIZE(tuple),
            |tuple, i| ffi::PyTuple_GET_ITEM(tuple, i),
        )
    }
}

/// A list's or a tuple's items as a JSON array, by borrowed item access. The length is re-read
/// each step: Python code run by the encoder could shrink a list (a tuple never changes, and
/// re-reading its size is a field read). Generic over the accessors, not fn pointers, so each
/// caller gets a copy with them inlined.
///
/// # Safety
/// `obj` must be a live instance of the type whose size and item accessors `len` and `item` are.
unsafe fn write_sequence(
    py: Python<'_>,
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    depth: u32,
    len: impl Fn(*mut ffi::PyObject) -> ffi::Py_ssize_t,
    item: impl Fn(*mut ffi::PyObject, ffi::Py_ssize_t) -> *mut ffi::PyObject,
) -> Result<(), EncodeError> {
    if depth >= MAX_DEPTH {
        return Err(too_deep());
    }
    out.push(b'[');
    let mut i = 0;
    // `obj` is a live instance of the accessors' type (the caller's contract): reading its size is
    // a field read.
    while i < len(obj.as_ptr()) {
        // SAFETY: `i` was checked against the current size just above, with no Python code run
        // since; the item is taken as a strong reference before any can run.
        let value = unsafe { Bound::from_borrowed_ptr(py, item(obj.as_ptr(), i)) };
        if i > 0 {
            out.push(b',');
        }
        write_value(py, out, &value, depth + 1).map_err(|e| e.at(|| Segment::Index(i as usize)))?;
        i += 1;
    }
    out.push(b']');
    Ok(())
}
