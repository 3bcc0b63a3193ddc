//! The core's one error type. Every fallible core function returns `CoreError`; the binding crate
//! turns it into a Python exception in one place (`rust/py/src/errors.rs`), so the kind decides
//! the exception class and nothing else has to.

use std::fmt;

/// Which Python exception an error becomes (see python/ciotrack/errors.py).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// SerializationError (TypeError): unsupported type, non-str key, nesting too deep.
    Serialization,
    /// InvalidValueError (ValueError): a supported type with an unusable value.
    Invalid,
    /// LimitError (an InvalidValueError): a Customer.io size limit.
    Limit,
    /// ConfigError (a ValueError): an unusable constructor argument.
    Config,
    /// ValueError: an unusable argument of a method (a NaN timeout, a batch acked by the wrong core).
    Argument,
    /// IndexError: a lane index this core does not have.
    NoSuchLane,
}

/// An error whose message already starts with the path of the offending field or argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Limit, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Argument, message)
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CoreError {}
