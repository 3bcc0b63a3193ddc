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

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};

    /// ciotrack.errors is pure Python: the source tree's copy serves.
    fn with_ciotrack_importable(f: impl FnOnce(Python<'_>)) {
        Python::initialize();
        Python::attach(|py| {
            let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../../python");
            let path = py.import("sys").unwrap().getattr("path").unwrap();
            path.call_method1("insert", (0, source)).unwrap();
            f(py)
        });
    }

    #[test]
    fn each_kind_becomes_its_exception_class() {
        with_ciotrack_importable(|py| {
            let errors = py.import("ciotrack.errors").unwrap();
            let raised = |kind: ErrorKind| -> PyErr {
                Error::Core(CoreError::new(kind, format!("{kind:?}: message"))).into()
            };
            let cases = [
                (ErrorKind::Serialization, "SerializationError"),
                (ErrorKind::Invalid, "InvalidValueError"),
                (ErrorKind::Limit, "LimitError"),
                (ErrorKind::Config, "ConfigError"),
            ];
            for (kind, class) in cases {
                let err = raised(kind);
                let class = errors.getattr(class).unwrap();
                assert!(
                    err.get_type(py).is(&class),
                    "{kind:?} -> {}",
                    err.get_type(py)
                );
                assert_eq!(err.value(py).to_string(), format!("{kind:?}: message"));
            }
            assert!(raised(ErrorKind::Serialization).is_instance_of::<PyTypeError>(py));
            assert!(raised(ErrorKind::Limit).is_instance_of::<PyValueError>(py));
            let argument = raised(ErrorKind::Argument);
            assert!(argument.get_type(py).is(py.get_type::<PyValueError>()));
            let lane = raised(ErrorKind::NoSuchLane);
            assert!(lane.get_type(py).is(py.get_type::<PyIndexError>()));
        });
    }

    #[test]
    fn a_python_error_passes_through_unchanged() {
        with_ciotrack_importable(|py| {
            let original = PyTypeError::new_err("from Python");
            let passed: PyErr = Error::from(original.clone_ref(py)).into();
            assert!(passed.value(py).is(original.value(py)));
        });
    }
}
