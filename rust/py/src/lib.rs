//! The Python binding of ciotrack-core: the extension module `ciotrack._core` (contract in
//! python/ciotrack/_core.pyi). Only translation lives here: module glue, the Core/Lane/Batch/
//! Bucket classes, reading arguments (args.rs), the encoder that walks Python objects (encode.rs),
//! one dict iterator (dict.rs) and the one error conversion (errors.rs). Logic is in ciotrack-core.

mod args;
mod classes;
mod core;
mod dict;
mod encode;
mod entry;
mod errors;
mod fastcall;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use ciotrack_core::intake::{ACCEPTED, CLOSED, DEDUPED, FORKED, FULL};
use ciotrack_core::{clock, fork, metrics, ops, ulid};

use crate::errors::Result;

#[pyfunction(name = "encode")]
#[pyo3(signature = (value, path = "value"))]
fn encode_value<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
    path: &str,
) -> Result<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(256);
    encode::write_value(py, &mut out, value, 0).map_err(|e| e.into_error(py, path))?;
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

/// The Prometheus `le` bounds that `Core.stats()` reports for the histogram called `name`.
#[pyfunction]
fn histogram_bounds(name: &str) -> Vec<f64> {
    metrics::bounds_for(name).to_vec()
}

// `gil_used = true`: the hot path counts on the GIL (the encoded-key cache is a plain static, dicts are
// walked with borrowed references), so a free-threaded CPython (3.14t; PyO3 0.30 builds for no older
// one) turns its GIL back on when it imports this module, with a RuntimeWarning. PyO3's default: false.
#[pymodule(gil_used = true)]
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
    m.add("CLOSED", CLOSED)?;
    m.add("MAX_OP_BYTES", ops::MAX_OP_BYTES)?;
    m.add("MAX_BATCH_BYTES", ops::MAX_BATCH_BYTES)?;
    m.add_class::<core::Core>()?;
    m.add_class::<classes::Lane>()?;
    m.add_class::<classes::PyBatch>()?;
    m.add_class::<classes::PyBucket>()?;
    m.add_class::<fastcall::FastCalls>()?;
    m.add_function(wrap_pyfunction!(encode_value, m)?)?;
    m.add_function(wrap_pyfunction!(new_ulid, m)?)?;
    m.add_function(wrap_pyfunction!(is_ulid, m)?)?;
    m.add_function(wrap_pyfunction!(histogram_bounds, m)?)?;
    Ok(())
}
