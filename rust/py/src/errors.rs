//! The one place where errors become Python exceptions.
//!
//! Inside the binding every fallible function returns `Result<T>` (`Error`: a core error, or an
//! exception raised by Python code we called); each `#[pymethods]`/`#[pyfunction]` entry point
//! returns it as is, and pyo3 converts it through `From<Error> for PyErr` on the way out. The
//! kind of a `CoreError` alone picks the class: the ciotrack.errors ones (pure Python, imported
//! lazily, once, on the first error; never on the hot path) or a builtin.

use ciotrack_core::{CoreError, ErrorKind};
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// An error on its way to Python.
#[derive(Debug)]
pub enum Error {
    Core(CoreError),
    /// Raised by Python code the binding called (an Enum's `value`, a Mapping's `keys`, ...).
    Python(PyErr),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<CoreError> for Error {
    fn from(err: CoreError) -> Self {
        Error::Core(err)
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Error::Python(err)
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Python(err) => err,
            // Entry points run with the GIL held: attaching is a thread-local check.
            Error::Core(err) => Python::attach(|py| core_to_pyerr(py, err)),
        }
    }
}

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
        let class = |name: &str| -> PyResult<Py<PyType>> {
            Ok(module.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        Ok(ErrorTypes {
            config: class("ConfigError")?,
            serialization: class("SerializationError")?,
            invalid: class("InvalidValueError")?,
            limit: class("LimitError")?,
        })
    })
}

fn core_to_pyerr(py: Python<'_>, err: CoreError) -> PyErr {
    let types = match err.kind {
        ErrorKind::Argument => return PyValueError::new_err(err.message),
        ErrorKind::NoSuchLane => return PyIndexError::new_err(err.message),
        _ => match error_types(py) {
            Ok(types) => types,
            Err(import_error) => return import_error,
        },
    };
    let class = match err.kind {
        ErrorKind::Serialization => &types.serialization,
        ErrorKind::Invalid => &types.invalid,
        ErrorKind::Limit => &types.limit,
        ErrorKind::Config | ErrorKind::Argument | ErrorKind::NoSuchLane => &types.config,
    };
    PyErr::from_type(class.bind(py).clone(), err.message)
}
