//! Building one operation from the Python arguments of a `Core` call: argument checks, the
//! layout from ops.rs around the dicts written by encode.rs, and the dedup key of the result.
//! Nothing here touches a queue; py_core.rs submits what these functions build.

use std::cell::Cell;
use std::ops::Range;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDateTime, PyDict, PyMapping};

use crate::clock;
use crate::dedup;
use crate::encode::{self, str_arg};
use crate::json::py_repr;
use crate::ops::{self, ErrorKind, OpError, Subject};
use crate::py_errors::to_pyerr;
use crate::ulid;

/// How events are deduplicated (`Core(dedup_events=...)`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventDedup {
    Id,
    Composite,
    Off,
}

/// The dedup settings the builders need; `enabled` is false when `dedup_ttl` is 0.
#[derive(Clone, Copy, Debug)]
pub struct DedupPolicy {
    pub enabled: bool,
    pub events: EventDedup,
}

/// The key/value to check and record for one operation, and which counter a hit goes to.
#[derive(Clone, Copy)]
pub struct DedupEntry {
    pub key: u64,
    pub value: u64,
    pub identify: bool,
}

thread_local! {
    /// Reused output buffer: an operation is encoded here, then copied once into an exact-size box.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with the thread's scratch buffer. Re-entrant calls (Python code run by the encoder
/// calling back into the core) get a fresh buffer instead of a double borrow.
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.with(|cell| cell.take());
    buf.clear();
    if buf.capacity() == 0 {
        buf.reserve(1024);
    }
    let result = f(&mut buf);
    // Keep a typical buffer; let an unusually large one go rather than pin its memory.
    if buf.capacity() <= 4 * ops::MAX_OP_BYTES {
        SCRATCH.with(|cell| cell.set(buf));
    }
    result
}

/// The text of a customer id: a str as is, an int (not a bool) in decimal via `digits`.
pub fn customer_id_text<'a>(
    obj: &'a Bound<'_, PyAny>,
    digits: &'a mut itoa::Buffer,
) -> Result<&'a str, OpError> {
    let ptr = obj.as_ptr();
    // SAFETY: type checks on a live object.
    let (is_int, is_bool) = unsafe { (ffi::PyLong_Check(ptr) != 0, ffi::PyBool_Check(ptr) != 0) };
    if is_bool {
        return Err(OpError::new(
            ErrorKind::Serialization,
            "customer_id: must be a str or int, not 'bool'",
        ));
    }
    if is_int {
        if let Ok(v) = obj.extract::<i64>() {
            return Ok(digits.format(v));
        }
        if let Ok(v) = obj.extract::<u64>() {
            return Ok(digits.format(v));
        }
        return Err(OpError::invalid("customer_id: int does not fit in 64 bits"));
    }
    str_arg(obj, "customer_id")
}

/// Unix seconds from `int | float | datetime | None`; None means `now_ms` (wall clock, read once
/// per call by the caller).
fn timestamp_arg(
    py: Python<'_>,
    obj: Option<&Bound<'_, PyAny>>,
    now_ms: impl FnOnce() -> u64,
) -> PyResult<i64> {
    let Some(obj) = obj else {
        return Ok((now_ms() / 1000) as i64);
    };
    let ptr = obj.as_ptr();
    // SAFETY: type checks on a live object.
    let (is_int, is_bool, is_float) = unsafe {
        (
            ffi::PyLong_Check(ptr) != 0,
            ffi::PyBool_Check(ptr) != 0,
            ffi::PyFloat_Check(ptr) != 0,
        )
    };
    let result = if is_int && !is_bool {
        obj.extract::<i64>()
            .map_err(|_| OpError::invalid("timestamp: int does not fit in 64 bits"))
    } else if is_float {
        ops::timestamp_from_f64("timestamp", obj.extract::<f64>()?)
    } else if let Ok(dt) = obj.cast::<PyDateTime>() {
        return encode::datetime_unix_seconds(dt).map_err(|e| e.into_pyerr(py, "timestamp"));
    } else {
        let name = obj.get_type().name()?;
        Err(OpError::new(
            ErrorKind::Serialization,
            format!("timestamp: must be int, float or datetime, not '{name}'"),
        ))
    };
    result.map_err(|e| to_pyerr(py, e))
}

/// What the top level of a dict argument is checked for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TopLevel {
    /// Encoded as is (event data, raw ops).
    Plain,
    /// identify: <= 300 attributes, names <= 150 bytes, each value <= 1000 bytes encoded.
    Attributes,
    /// person(): keys the operation writes itself (`type`, `identifiers`, `action`) are refused.
    PersonFields,
}

/// Encodes a Mapping argument as a JSON object, applying `checks` to its top level. Messages
/// start with `root` (`attributes['bio']: value is 1200 bytes, ...`).
pub fn write_mapping(
    py: Python<'_>,
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    root: &str,
    checks: TopLevel,
) -> PyResult<()> {
    // SAFETY: a type check only.
    let is_dict = unsafe { ffi::PyDict_Check(obj.as_ptr()) } != 0;
    if !is_dict {
        // Any other Mapping is copied into a dict first: rare, and keeps one iteration path.
        if obj.is_instance(encode::slow_types(py)?.mapping.bind(py))? {
            let copy = PyDict::new(py);
            copy.update(obj.cast::<PyMapping>()?)?;
            return write_mapping(py, out, copy.as_any(), root, checks);
        }
        return Err(to_pyerr(
            py,
            OpError::new(
                ErrorKind::Serialization,
                format!("{root}: must be a dict, not '{}'", encode::type_name(obj)),
            ),
        ));
    }
    if checks == TopLevel::Plain {
        return encode::write_dict(py, out, obj, 0).map_err(|e| e.into_pyerr(py, root));
    }
    if checks == TopLevel::Attributes {
        let count = obj.len()?;
        ops::check_attribute_count(root, count).map_err(|e| to_pyerr(py, e))?;
    }
    out.push(b'{');
    let mut pos: ffi::Py_ssize_t = 0;
    let mut key_ptr: *mut ffi::PyObject = std::ptr::null_mut();
    let mut value_ptr: *mut ffi::PyObject = std::ptr::null_mut();
    let mut first = true;
    // SAFETY: as in write_dict.
    while unsafe { ffi::PyDict_Next(obj.as_ptr(), &mut pos, &mut key_ptr, &mut value_ptr) } != 0 {
        let key = unsafe { Bound::from_borrowed_ptr(py, key_ptr) };
        let value = unsafe { Bound::from_borrowed_ptr(py, value_ptr) };
        if !first {
            out.push(b',');
        }
        first = false;
        encode::write_key(out, &key).map_err(|e| e.into_pyerr(py, root))?;
        // The limit is on the name itself, not its escaped JSON form: re-read it (cached UTF-8).
        let name = str_arg(&key, root).map_err(|e| to_pyerr(py, e))?;
        match checks {
            TopLevel::Attributes => {
                ops::check_attribute_name(root, name).map_err(|e| to_pyerr(py, e))?
            }
            TopLevel::PersonFields if ops::PERSON_RESERVED_KEYS.contains(&name) => {
                return Err(to_pyerr(
                    py,
                    OpError::invalid(format!(
                        "{root}[{}]: this key is set by the operation itself",
                        py_repr(name)
                    )),
                ));
            }
            _ => {}
        }
        out.push(b':');
        let value_start = out.len();
        encode::write_value(py, out, &value, 1).map_err(|e| e.at_key(&key).into_pyerr(py, root))?;
        if checks == TopLevel::Attributes {
            ops::check_attribute_value(root, name, out.len() - value_start)
                .map_err(|e| to_pyerr(py, e))?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// The subject's identifier kind and value, hashed into dedup keys (so `7` and `"7"` agree, and
/// an anonymous id never matches a customer id).
fn subject_parts(subject: Subject<'_>) -> [&[u8]; 2] {
    match subject {
        Subject::Id(id) => [b"id", id.as_bytes()],
        Subject::CioId(id) => [b"cio_id", id.as_bytes()],
        Subject::Anonymous(id) => [b"anonymous_id", id.as_bytes()],
    }
}

pub fn build_identify(
    py: Python<'_>,
    out: &mut Vec<u8>,
    dedup_policy: DedupPolicy,
    customer_id: &Bound<'_, PyAny>,
    attributes: Option<&Bound<'_, PyAny>>,
    timestamp: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<DedupEntry>> {
    let mut digits = itoa::Buffer::new();
    let id = customer_id_text(customer_id, &mut digits).map_err(|e| to_pyerr(py, e))?;
    let subject = ops::customer_subject(id).map_err(|e| to_pyerr(py, e))?;
    let timestamp = timestamp_arg(py, timestamp, clock::unix_millis)?;
    ops::identify_head(out, subject);
    let attributes_start = out.len();
    match attributes {
        Some(attributes) => write_mapping(py, out, attributes, "attributes", TopLevel::Attributes)?,
        None => out.extend_from_slice(b"{}"),
    }
    let attributes = attributes_start..out.len();
    ops::identify_tail(out, timestamp);
    ops::check_op_size(out.len(), || format!("identify {}", py_repr(id)))
        .map_err(|e| to_pyerr(py, e))?;
    if !dedup_policy.enabled {
        return Ok(None);
    }
    // Same person (as Customer.io addresses them) + same attributes => nothing new to say.
    Ok(Some(DedupEntry {
        key: identify_dedup_key(subject),
        value: dedup::hash(&out[attributes]),
        identify: true,
    }))
}

/// The validated non-dict arguments of an event call.
pub struct EventArgs<'a> {
    subject: Subject<'a>,
    action: &'a str,
    name: &'a str,
    id: Option<&'a [u8]>,
}

/// Validates the non-dict arguments of `event`.
pub fn event_args<'a>(
    action: &'a Bound<'_, PyAny>,
    customer_id: Option<&'a Bound<'_, PyAny>>,
    anonymous_id: Option<&'a Bound<'_, PyAny>>,
    name: &'a Bound<'_, PyAny>,
    id: Option<&'a Bound<'_, PyAny>>,
    digits: &'a mut itoa::Buffer,
) -> Result<EventArgs<'a>, OpError> {
    let action = str_arg(action, "action")?;
    if !matches!(action, "event" | "page" | "screen") {
        return Err(OpError::invalid(format!(
            "action: {} is not one of 'event', 'page', 'screen'",
            py_repr(action)
        )));
    }
    let subject = match (customer_id, anonymous_id) {
        (Some(customer), None) => ops::customer_subject(customer_id_text(customer, digits)?)?,
        (None, Some(anonymous)) => ops::anonymous_subject(str_arg(anonymous, "anonymous_id")?)?,
        _ => {
            return Err(OpError::invalid(
                "customer_id/anonymous_id: exactly one must be given",
            ))
        }
    };
    let name = ops::event_name(str_arg(name, "name")?)?;
    let id = match id {
        None => None,
        Some(id) => {
            let text = str_arg(id, "id")?;
            if !ulid::is_valid(text.as_bytes()) {
                return Err(OpError::invalid(format!(
                    "id: {} is not a ULID (26 Crockford base32 characters)",
                    py_repr(text)
                )));
            }
            Some(text.as_bytes())
        }
    };
    Ok(EventArgs {
        subject,
        action,
        name,
        id,
    })
}

pub fn build_event(
    py: Python<'_>,
    out: &mut Vec<u8>,
    dedup_policy: DedupPolicy,
    args: EventArgs<'_>,
    data: Option<&Bound<'_, PyAny>>,
    timestamp: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<DedupEntry>> {
    // One wall-clock read serves both the default timestamp and a fresh ULID.
    let mut now_ms = None;
    let mut wall_ms = || *now_ms.get_or_insert_with(clock::unix_millis);
    let timestamp = timestamp_arg(py, timestamp, &mut wall_ms)?;
    let fresh;
    let id = match args.id {
        Some(id) => id,
        None => {
            fresh = ulid::generate(wall_ms());
            &fresh[..]
        }
    };
    ops::event_head(out, args.subject, args.action, args.name, id, timestamp);
    let data_range: Option<Range<usize>> = match data {
        Some(data) => {
            ops::event_attributes_key(out);
            let start = out.len();
            write_mapping(py, out, data, "data", TopLevel::Plain)?;
            Some(start..out.len())
        }
        None => None,
    };
    ops::close(out);
    ops::check_op_size(out.len(), || {
        format!("{} {}", args.action, py_repr(args.name))
    })
    .map_err(|e| to_pyerr(py, e))?;
    if !dedup_policy.enabled {
        return Ok(None);
    }
    let key = match (dedup_policy.events, args.id) {
        // A freshly made id can never repeat: checking or recording it would only crowd the set.
        (EventDedup::Id, Some(_)) => {
            let mut upper = [0u8; ulid::LEN];
            upper.copy_from_slice(id);
            upper.make_ascii_uppercase();
            dedup::hash_parts(&[b"event-id", &upper])
        }
        (EventDedup::Composite, _) => {
            let data_bytes: &[u8] = match data_range {
                Some(range) => &out[range],
                None => b"-",
            };
            let [kind, id] = subject_parts(args.subject);
            dedup::hash_parts(&[
                b"event",
                kind,
                id,
                args.action.as_bytes(),
                args.name.as_bytes(),
                data_bytes,
            ])
        }
        _ => return Ok(None),
    };
    Ok(Some(DedupEntry {
        key,
        value: 0,
        identify: false,
    }))
}

/// The identify dedup key of a person: the same person as Customer.io addresses them.
fn identify_dedup_key(subject: Subject<'_>) -> u64 {
    let [kind, id] = subject_parts(subject);
    dedup::hash_parts(&[b"identify", kind, id])
}

/// Builds a person operation. Returns the identify dedup key to forget when the operation deletes
/// the person: after a delete, an identify equal to the last one must re-create them.
pub fn build_person(
    py: Python<'_>,
    out: &mut Vec<u8>,
    action: &Bound<'_, PyAny>,
    customer_id: &Bound<'_, PyAny>,
    fields: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<u64>> {
    let action = str_arg(action, "action").map_err(|e| to_pyerr(py, e))?;
    if action.is_empty() {
        return Err(to_pyerr(py, OpError::invalid("action: must not be empty")));
    }
    let mut digits = itoa::Buffer::new();
    let id = customer_id_text(customer_id, &mut digits).map_err(|e| to_pyerr(py, e))?;
    let subject = ops::customer_subject(id).map_err(|e| to_pyerr(py, e))?;
    ops::person_head(out, subject, action);
    match fields {
        Some(fields) => {
            let start = out.len();
            write_mapping(py, out, fields, "fields", TopLevel::PersonFields)?;
            ops::splice_fields(out, start);
        }
        None => ops::close(out),
    }
    ops::check_op_size(out.len(), || format!("person {}", py_repr(action)))
        .map_err(|e| to_pyerr(py, e))?;
    Ok((action == "delete").then(|| identify_dedup_key(subject)))
}

pub fn build_raw(py: Python<'_>, out: &mut Vec<u8>, op: &Bound<'_, PyAny>) -> PyResult<()> {
    write_mapping(py, out, op, "op", TopLevel::Plain)?;
    ops::check_op_size(out.len(), || "op".into()).map_err(|e| to_pyerr(py, e))
}
