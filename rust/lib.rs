//! PyO3 glue for ciotrack's native core (`ciotrack._core`, contract in python/ciotrack/_core.pyi).
//! Logic lives in the pyo3-free modules; the py_* modules and encode.rs only translate.
pub mod batch;
pub mod bucket;
pub mod clock;
pub mod dedup;
pub mod encode;
pub mod fork;
pub mod json;
pub mod metrics;
pub mod ops;
pub mod queue;
pub mod sync;
pub mod ulid;

mod py_build;
mod py_core;
mod py_errors;
mod py_types;

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// `push` results, shared with Python as module constants.
pub const ACCEPTED: i32 = 0;
pub const DEDUPED: i32 = 1;
pub const FULL: i32 = 2;
pub const FORKED: i32 = 3;

/// Waits longer than this (about 31 years) are clamped, so deadline arithmetic cannot overflow.
const MAX_WAIT_SECONDS: f64 = 1e9;

/// A seconds argument as a Duration: negative means zero, NaN is an error, huge is clamped.
pub(crate) fn seconds_arg(field: &str, value: f64) -> Result<Duration, String> {
    if value.is_nan() {
        return Err(format!("{field}: NaN is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(value.clamp(0.0, MAX_WAIT_SECONDS)))
}

#[pyfunction(name = "encode")]
#[pyo3(signature = (value, path = "value"))]
fn encode_value<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    path: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(256);
    encode::write_value(py, &mut out, value, 0).map_err(|e| e.into_pyerr(py, path))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction(name = "ulid")]
fn new_ulid(py: Python<'_>) -> Bound<'_, PyString> {
    let id = ulid::generate(clock::unix_millis());
    PyString::new(py, std::str::from_utf8(&id).expect("a ULID is ASCII"))
}

#[pyfunction]
fn is_ulid(value: &Bound<'_, PyString>) -> bool {
    // A str with a lone surrogate has no UTF-8 form; it is not a ULID either.
    value
        .to_str()
        .map(|s| ulid::is_valid(s.as_bytes()))
        .unwrap_or(false)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Once per process; without it FORKED could never be reported (ENOMEM only).
    if !fork::register() {
        return Err(pyo3::exceptions::PyOSError::new_err(
            "pthread_atfork failed: fork detection unavailable",
        ));
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ACCEPTED", ACCEPTED)?;
    m.add("DEDUPED", DEDUPED)?;
    m.add("FULL", FULL)?;
    m.add("FORKED", FORKED)?;
    m.add("MAX_OP_BYTES", ops::MAX_OP_BYTES)?;
    m.add("MAX_BATCH_BYTES", ops::MAX_BATCH_BYTES)?;
    m.add_class::<py_core::Core>()?;
    m.add_class::<py_types::Lane>()?;
    m.add_class::<py_types::PyBatch>()?;
    m.add_class::<py_types::PyBucket>()?;
    m.add_function(wrap_pyfunction!(encode_value, m)?)?;
    m.add_function(wrap_pyfunction!(new_ulid, m)?)?;
    m.add_function(wrap_pyfunction!(is_ulid, m)?)?;
    Ok(())
}
