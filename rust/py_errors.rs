//! Mapping core errors onto the exception classes of python/ciotrack/errors.py, which is pure
//! Python: it is imported lazily, once, on the first error (never on the hot path).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::ops::{ErrorKind, OpError};

struct ErrorTypes {
    config: Py<PyType>,
    serialization: Py<PyType>,
    invalid: Py<PyType>,
    limit: Py<PyType>,
}

static ERROR_TYPES: PyOnceLock<ErrorTypes> = PyOnceLock::new();

fn error_types(py: Python<'_>) -> PyResult<&ErrorTypes> {
    ERROR_TYPES.get_or_try_init(py, || -> PyResult<ErrorTypes> {
        let module = py.import("ciotrack.errors")?;
        Ok(ErrorTypes {
            config: module
                .getattr("ConfigError")?
                .cast_into::<PyType>()?
                .unbind(),
            serialization: module
                .getattr("SerializationError")?
                .cast_into::<PyType>()?
                .unbind(),
            invalid: module
                .getattr("InvalidValueError")?
                .cast_into::<PyType>()?
                .unbind(),
            limit: module
                .getattr("LimitError")?
                .cast_into::<PyType>()?
                .unbind(),
        })
    })
}

/// A ciotrack.errors.ConfigError (a ValueError) for an unusable constructor argument.
pub fn config_error(py: Python<'_>, message: String) -> PyErr {
    match error_types(py) {
        Ok(types) => PyErr::from_type(types.config.bind(py).clone(), message),
        Err(import_error) => import_error,
    }
}

/// Maps a core error onto ciotrack.errors (imported once, lazily: errors.py is pure Python).
pub fn to_pyerr(py: Python<'_>, err: OpError) -> PyErr {
    match error_types(py) {
        Ok(types) => {
            let ty = match err.kind {
                ErrorKind::Serialization => &types.serialization,
                ErrorKind::Invalid => &types.invalid,
                ErrorKind::Limit => &types.limit,
            };
            PyErr::from_type(ty.bind(py).clone(), err.message)
        }
        Err(import_error) => import_error,
    }
}
