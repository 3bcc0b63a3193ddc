//! Building one operation from the Python arguments of a `Core` call: argument checks, the
//! layout from ops.rs around the dicts written by encode.rs, and the dedup key of the result.
//! Nothing here touches a queue; core.rs submits what these functions build. The dedup policy
//! and key rules are ciotrack-core's (`dedup::DedupPolicy`); only the arguments are read here.

use std::ops::Range;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDateTime, PyDict, PyMapping};

use ciotrack_core::dedup_policy::{self, DedupEntry, DedupPolicy};
use ciotrack_core::json::py_repr;
use ciotrack_core::ops::{self, Subject};
use ciotrack_core::{clock, ulid, CoreError, ErrorKind};

use crate::dict::DictEntries;
use crate::encode::{self, str_arg};
use crate::errors::Result;

/// The text of a customer id: a str as is, an int (not a bool) in decimal via `digits`.
pub fn customer_id_text<'a>(
    obj: &'a Bound<'_, PyAny>,
    digits: &'a mut itoa::Buffer,
) -> Result<&'a str> {
    let ptr = obj.as_ptr();
    // SAFETY: type-flag checks on a live object (held by `obj`), GIL held.
    let (is_int, is_bool) = unsafe { (ffi::PyLong_Check(ptr) != 0, ffi::PyBool_Check(ptr) != 0) };
    if is_bool {
        return Err(CoreError::new(
            ErrorKind::Serialization,
            "customer_id: must be a str or int, not 'bool'",
        )
        .into());
    }
    if is_int {
        if let Ok(v) = obj.extract::<i64>() {
            return Ok(digits.format(v));
        }
        if let Ok(v) = obj.extract::<u64>() {
            return Ok(digits.format(v));
        }
        return Err(CoreError::invalid("customer_id: int does not fit in 64 bits").into());
    }
    Ok(str_arg(obj, "customer_id")?)
}

/// Unix seconds from `int | float | datetime | None`; None means `now_ms` (wall clock, read once
/// per call by the caller).
fn timestamp_arg(
    py: Python<'_>,
    obj: Option<&Bound<'_, PyAny>>,
    now_ms: impl FnOnce() -> u64,
) -> Result<i64> {
    let Some(obj) = obj else {
        return Ok((now_ms() / 1000) as i64);
    };
    let ptr = obj.as_ptr();
    // SAFETY: type-flag checks on a live object (held by `obj`), GIL held.
    let (is_int, is_bool, is_float) = unsafe {
        (
            ffi::PyLong_Check(ptr) != 0,
            ffi::PyBool_Check(ptr) != 0,
            ffi::PyFloat_Check(ptr) != 0,
        )
    };
    if is_int && !is_bool {
        return obj
            .extract::<i64>()
            .map_err(|_| CoreError::invalid("timestamp: int does not fit in 64 bits").into());
    }
    if is_float {
        return Ok(ops::timestamp_from_f64("timestamp", obj.extract::<f64>()?)?);
    }
    if let Ok(dt) = obj.cast::<PyDateTime>() {
        return encode::datetime_unix_seconds(dt).map_err(|e| e.into_error(py, "timestamp"));
    }
    let name = obj.get_type().name()?;
    Err(CoreError::new(
        ErrorKind::Serialization,
        format!("timestamp: must be int, float or datetime, not '{name}'"),
    )
    .into())
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
) -> Result<()> {
    let Ok(dict) = obj.cast::<PyDict>() else {
        // Any other Mapping is copied into a dict first: rare, and keeps one iteration path.
        if obj.is_instance(encode::slow_types(py)?.mapping.bind(py))? {
            let copy = PyDict::new(py);
            copy.update(obj.cast::<PyMapping>().map_err(PyErr::from)?)?;
            return write_mapping(py, out, copy.as_any(), root, checks);
        }
        return Err(CoreError::new(
            ErrorKind::Serialization,
            format!("{root}: must be a dict, not '{}'", encode::type_name(obj)),
        )
        .into());
    };
    if checks == TopLevel::Plain {
        return encode::write_dict(py, out, obj, 0).map_err(|e| e.into_error(py, root));
    }
    if checks == TopLevel::Attributes {
        ops::check_attribute_count(root, dict.len())?;
    }
    out.push(b'{');
    for (i, (key, value)) in DictEntries::new(dict).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode::write_key(out, &key).map_err(|e| e.into_error(py, root))?;
        // The limit is on the name itself, not its escaped JSON form: re-read it (cached UTF-8).
        let name = str_arg(&key, root)?;
        match checks {
            TopLevel::Attributes => ops::check_attribute_name(root, name)?,
            TopLevel::PersonFields if ops::PERSON_RESERVED_KEYS.contains(&name) => {
                return Err(CoreError::invalid(format!(
                    "{root}[{}]: this key is set by the operation itself",
                    py_repr(name)
                ))
                .into());
            }
            _ => {}
        }
        let value_start = out.len();
        encode::write_value(py, out, &value, 1).map_err(|e| e.at_key(&key).into_error(py, root))?;
        if checks == TopLevel::Attributes {
            ops::check_attribute_value(root, name, out.len() - value_start)?;
        }
    }
    out.push(b'}');
    Ok(())
}

pub fn build_identify(
    py: Python<'_>,
    out: &mut Vec<u8>,
    dedup_policy: DedupPolicy,
    customer_id: &Bound<'_, PyAny>,
    attributes: Option<&Bound<'_, PyAny>>,
    timestamp: Option<&Bound<'_, PyAny>>,
    now_ns: u64,
) -> Result<Option<DedupEntry>> {
    let mut digits = itoa::Buffer::new();
    let id = customer_id_text(customer_id, &mut digits)?;
    let subject = ops::customer_subject(id)?;
    let timestamp = timestamp_arg(py, timestamp, || clock::unix_millis_at(now_ns))?;
    ops::identify_head(out, subject);
    let attributes_start = out.len();
    match attributes {
        Some(attributes) => write_mapping(py, out, attributes, "attributes", TopLevel::Attributes)?,
        None => out.extend_from_slice(b"{}"),
    }
    let attributes = attributes_start..out.len();
    ops::identify_tail(out, timestamp);
    ops::check_op_size(out.len(), || format!("identify {}", py_repr(id)))?;
    Ok(dedup_policy.identify_entry(subject, &out[attributes]))
}

/// The validated non-dict arguments of an event call.
pub struct EventArgs<'a> {
    subject: Subject<'a>,
    action: &'a str,
    name: &'a str,
    /// A caller's event id, in its canonical upper case.
    id: Option<[u8; ulid::LEN]>,
}

/// A page's name is its URL, and its errors say so: an error about `name` is relabelled `url` for a
/// page. Here, on the error path, so the call pays nothing for it.
#[cold]
#[inline(never)]
fn labelled_for(action: &str, mut err: CoreError) -> CoreError {
    if action == "page" {
        if let Some(rest) = err.message.strip_prefix("name:") {
            err.message = format!("url:{rest}");
        }
    }
    err
}

/// Validates the non-dict arguments of `event`.
pub fn event_args<'a>(
    action: &'a Bound<'_, PyAny>,
    customer_id: Option<&'a Bound<'_, PyAny>>,
    anonymous_id: Option<&'a Bound<'_, PyAny>>,
    name: &'a Bound<'_, PyAny>,
    id: Option<&'a Bound<'_, PyAny>>,
    digits: &'a mut itoa::Buffer,
) -> Result<EventArgs<'a>> {
    let action = str_arg(action, "action")?;
    if !matches!(action, "event" | "page" | "screen") {
        return Err(CoreError::invalid(format!(
            "action: {} is not one of 'event', 'page', 'screen'",
            py_repr(action)
        ))
        .into());
    }
    let subject = match (customer_id, anonymous_id) {
        (Some(customer), None) => ops::customer_subject(customer_id_text(customer, digits)?)?,
        (None, Some(anonymous)) => ops::anonymous_subject(str_arg(anonymous, "anonymous_id")?)?,
        // Only `Tracker.track/page/screen(None, ...)` pass neither (`track_anonymous` checks its own
        // None): the error the native fast path gives for that None, so both paths raise alike.
        (None, None) => {
            return Err(CoreError::new(
                ErrorKind::Serialization,
                "customer_id: must be a str, not 'NoneType'",
            )
            .into())
        }
        (Some(_), Some(_)) => {
            return Err(
                CoreError::invalid("customer_id/anonymous_id: exactly one must be given").into(),
            )
        }
    };
    let name = match str_arg(name, "name").and_then(ops::event_name) {
        Ok(name) => name,
        Err(err) => return Err(labelled_for(action, err).into()),
    };
    let id = match id {
        None => None,
        Some(id) => {
            let text = str_arg(id, "id")?;
            let Some(id) = ulid::canonical(text.as_bytes()) else {
                return Err(CoreError::invalid(format!(
                    "id: {} is not a ULID (26 Crockford base32 characters)",
                    py_repr(text)
                ))
                .into());
            };
            Some(id)
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
    now_ns: u64,
) -> Result<Option<DedupEntry>> {
    // The call's one clock reading serves both the default timestamp and a fresh ULID.
    let mut now_ms = None;
    let mut wall_ms = || *now_ms.get_or_insert_with(|| clock::unix_millis_at(now_ns));
    let timestamp = timestamp_arg(py, timestamp, &mut wall_ms)?;
    let fresh;
    let id: &[u8] = match &args.id {
        Some(id) => id,
        None => {
            fresh = ulid::generate(wall_ms());
            &fresh
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
    if let Err(mut too_big) = ops::check_op_size(out.len(), || {
        format!("{} {}", args.action, py_repr(args.name))
    }) {
        // Which property to shrink is the useful part of this error; found only now (rare path).
        if let Some((key, size)) = data.map(|d| largest_property(py, d)).transpose()?.flatten() {
            too_big.message.push_str(&format!(
                "; largest property in data: {} ({size} bytes encoded)",
                py_repr(&key)
            ));
        }
        return Err(too_big.into());
    }
    let data = data_range.map(|range| &out[range]);
    Ok(dedup_policy.event_entry(
        args.subject,
        args.action,
        args.name,
        args.id.as_ref().map(|id| &id[..]),
        data,
    ))
}

/// The top-level key of `data` whose value encodes largest, and that size (None for an empty
/// dict). `data` encoded once already, so every value encodes again; a non-dict Mapping is copied.
fn largest_property(py: Python<'_>, data: &Bound<'_, PyAny>) -> Result<Option<(String, usize)>> {
    let dict = match data.cast::<PyDict>() {
        Ok(dict) => dict.clone(),
        Err(_) => {
            let copy = PyDict::new(py);
            copy.update(data.cast::<PyMapping>().map_err(PyErr::from)?)?;
            copy
        }
    };
    let mut largest: Option<(String, usize)> = None;
    let mut value_out = Vec::new();
    for (key, value) in DictEntries::new(&dict) {
        value_out.clear();
        encode::write_value(py, &mut value_out, &value, 1).map_err(|e| e.into_error(py, "data"))?;
        if largest
            .as_ref()
            .is_none_or(|(_, size)| value_out.len() > *size)
        {
            largest = Some((str_arg(&key, "data")?.to_owned(), value_out.len()));
        }
    }
    Ok(largest)
}

/// Builds a person operation. Returns the identify dedup key to forget when the action ends it
/// (`dedup_policy::ends_identify`: delete, suppress, unsuppress).
pub fn build_person(
    py: Python<'_>,
    out: &mut Vec<u8>,
    action: &Bound<'_, PyAny>,
    customer_id: &Bound<'_, PyAny>,
    fields: Option<&Bound<'_, PyAny>>,
) -> Result<Option<u64>> {
    let action = str_arg(action, "action")?;
    if action.is_empty() {
        return Err(CoreError::invalid("action: must not be empty").into());
    }
    let mut digits = itoa::Buffer::new();
    let id = customer_id_text(customer_id, &mut digits)?;
    let subject = ops::customer_subject(id)?;
    ops::person_head(out, subject, action);
    match fields {
        Some(fields) => {
            let start = out.len();
            write_mapping(py, out, fields, "fields", TopLevel::PersonFields)?;
            ops::splice_fields(out, start);
        }
        None => ops::close(out),
    }
    ops::check_op_size(out.len(), || format!("person {}", py_repr(action)))?;
    Ok(dedup_policy::ends_identify(action).then(|| dedup_policy::identify_key(subject)))
}

pub fn build_raw(py: Python<'_>, out: &mut Vec<u8>, op: &Bound<'_, PyAny>) -> Result<()> {
    write_mapping(py, out, op, "op", TopLevel::Plain)?;
    Ok(ops::check_op_size(out.len(), || "op".into())?)
}
