//! The rarer values, off the hot path: subclasses of the common types, Enum members, datetime and
//! date, Decimal and UUID. Everything here follows an exact-type miss in `write_value`.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{
    PyDate, PyDateAccess, PyDateTime, PyDelta, PyDeltaAccess, PyTimeAccess, PyTzInfoAccess,
};

use ciotrack_core::json;
use ciotrack_core::ErrorKind;

use super::{
    slow_types, too_deep, type_name, utf8, write_dict, write_float, write_int, write_list,
    write_tuple, write_value, EncodeError, MAX_DEPTH,
};

/// Subclasses of the common types and the rarer supported types. Enum comes first: an IntEnum or
/// StrEnum member is also an int/str, and its `value` is what the caller means.
#[cold]
pub(super) fn write_uncommon(
    py: Python<'_>,
    out: &mut Vec<u8>,
    obj: &Bound<'_, PyAny>,
    depth: u32,
) -> Result<(), EncodeError> {
    let types = slow_types(py)?;
    let ptr = obj.as_ptr();
    if obj.is_instance(types.enum_.bind(py))? {
        if depth >= MAX_DEPTH {
            return Err(too_deep());
        }
        let value = obj.getattr("value")?;
        return write_value(py, out, &value, depth + 1);
    }
    // SAFETY: each read follows the matching type check.
    unsafe {
        if ffi::PyUnicode_Check(ptr) != 0 {
            json::write_str(out, std::str::from_utf8_unchecked(utf8(ptr)?));
            return Ok(());
        }
        if ffi::PyLong_Check(ptr) != 0 {
            return write_int(out, ptr);
        }
        if ffi::PyFloat_Check(ptr) != 0 {
            return write_float(out, ffi::PyFloat_AS_DOUBLE(ptr));
        }
        if ffi::PyDict_Check(ptr) != 0 {
            return write_dict(py, out, obj, depth);
        }
        if ffi::PyList_Check(ptr) != 0 {
            return write_list(py, out, obj, depth);
        }
        if ffi::PyTuple_Check(ptr) != 0 {
            return write_tuple(py, out, obj, depth);
        }
    }
    if let Ok(dt) = obj.cast::<PyDateTime>() {
        json::write_i64(out, datetime_unix_seconds(dt)?);
        return Ok(());
    }
    if let Ok(date) = obj.cast::<PyDate>() {
        write_date(out, date);
        return Ok(());
    }
    if obj.is_instance(types.decimal.bind(py))? {
        return write_decimal(out, obj);
    }
    if obj.is_instance(types.uuid.bind(py))? {
        // str(UUID) is the canonical 36-character hyphenated lower-case form.
        json::write_str(out, &text_of(obj, "UUID")?);
        return Ok(());
    }
    Err(EncodeError::new(
        ErrorKind::Serialization,
        format!("unsupported type '{}'", type_name(obj)),
    ))
}

fn write_date(out: &mut Vec<u8>, date: &Bound<'_, PyDate>) {
    let text = format!(
        "\"{:04}-{:02}-{:02}\"",
        date.get_year(),
        date.get_month(),
        date.get_day()
    );
    out.extend_from_slice(text.as_bytes());
}

/// `str(obj)` of a Decimal or UUID. A subclass's own `__str__` may raise or return a non-str:
/// that is the value's fault, reported as a SerializationError at its path like any other bad
/// value (the caller's exception is named in the message, not raised in place of ours).
fn text_of(obj: &Bound<'_, PyAny>, base: &str) -> Result<String, EncodeError> {
    let failed = |err: PyErr| {
        let py = obj.py();
        let exception = err.get_type(py).name().map(|n| n.to_string());
        EncodeError::new(
            ErrorKind::Serialization,
            format!(
                "{base} subclass '{}' could not be converted: str() raised {}: {}",
                type_name(obj),
                exception.unwrap_or_else(|_| "?".into()),
                err.value(py)
                    .str()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| "?".into())
            ),
        )
    };
    let text = obj.str().map_err(failed)?;
    Ok(text.to_cow().map_err(failed)?.into_owned())
}

fn write_decimal(out: &mut Vec<u8>, obj: &Bound<'_, PyAny>) -> Result<(), EncodeError> {
    // str() keeps every digit (no float rounding); its forms (1.50, 1E+3, -0) are JSON numbers,
    // and the non-finite ones (NaN, sNaN, Infinity) are exactly the ones that are not.
    let text = text_of(obj, "Decimal")?;
    if !json::is_json_number(&text) {
        return Err(EncodeError::new(
            ErrorKind::Invalid,
            format!("Decimal('{text}') is not a finite number"),
        ));
    }
    if beyond_double(&text) {
        // Valid JSON, but Customer.io (like every double-based parser) reads it as infinity or
        // refuses it: as unsendable as float('inf'), so refused here, at the call, the same way.
        let shown: String = text.chars().take(40).collect();
        let more = if shown.len() < text.len() { "..." } else { "" };
        return Err(EncodeError::new(
            ErrorKind::Invalid,
            format!(
                "Decimal('{shown}{more}') is not a finite number (beyond the range of a double)"
            ),
        ));
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// A JSON number literal whose magnitude a double cannot hold (it parses to infinity). One below
/// the smallest double is not refused: parsers read it as 0, which is what it nearly is.
fn beyond_double(number: &str) -> bool {
    number.parse::<f64>().is_ok_and(|value| value.is_infinite())
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Whole unix seconds (floored) of a datetime: an aware one through its exact UTC offset
/// (microseconds included), a naive one taken as UTC.
pub fn datetime_unix_seconds(dt: &Bound<'_, PyDateTime>) -> Result<i64, EncodeError> {
    let days = days_from_civil(
        dt.get_year() as i64,
        dt.get_month() as i64,
        dt.get_day() as i64,
    );
    let local_us = ((days * 86_400
        + dt.get_hour() as i64 * 3600
        + dt.get_minute() as i64 * 60
        + dt.get_second() as i64) as i128)
        * 1_000_000
        + dt.get_microsecond() as i128;
    let mut offset_us: i128 = 0;
    if dt.get_tzinfo().is_some() {
        let offset = dt.call_method0("utcoffset")?;
        if !offset.is_none() {
            let delta = offset.cast::<PyDelta>().map_err(|_| {
                EncodeError::Python(PyTypeError::new_err(
                    "utcoffset() did not return a timedelta",
                ))
            })?;
            offset_us = (delta.get_days() as i128 * 86_400 + delta.get_seconds() as i128)
                * 1_000_000
                + delta.get_microseconds() as i128;
        }
    }
    Ok((local_us - offset_us).div_euclid(1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::{beyond_double, days_from_civil};

    #[test]
    fn decimals_beyond_a_double() {
        for huge in [
            "1E+400",
            "-1E+400",
            "1.8E+308",
            "1.7976931348623159E+308",
            "1E+999999999999",
        ] {
            assert!(beyond_double(huge), "{huge}");
        }
        for fine in [
            "0",
            "-0",
            "12.50",
            "1E+308",
            "1.7976931348623157E+308",
            "-1.7976931348623157E+308",
            "1E-400",
        ] {
            assert!(!beyond_double(fine), "{fine}");
        }
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1, 1, 1), -719_162);
        assert_eq!(days_from_civil(9999, 12, 31), 2_932_896);
    }
}
