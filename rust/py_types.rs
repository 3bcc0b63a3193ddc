//! The small pyclasses: `Lane` (a view of one queue of a Core), `Batch` (an assembled request
//! body) and `Bucket` (the token bucket). Every wait releases the GIL.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

use crate::batch::Batch;
use crate::bucket::TokenBucket;
use crate::clock::{self, MonotonicClock};
use crate::py_core::Shared;
use crate::queue::OpQueue;
use crate::seconds_arg;

#[pyclass(frozen, module = "ciotrack._core")]
pub struct Lane {
    shared: Arc<Shared>,
    #[pyo3(get)]
    index: usize,
}

impl Lane {
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        Lane { shared, index }
    }

    fn queue(&self) -> &OpQueue {
        &self.shared.lanes[self.index]
    }
}

#[pymethods]
impl Lane {
    fn __len__(&self) -> usize {
        self.queue().len()
    }

    fn queued_bytes(&self) -> usize {
        self.queue().bytes()
    }

    fn pushed(&self) -> u64 {
        self.queue().pushed()
    }

    fn taken(&self) -> u64 {
        self.queue().taken()
    }

    fn wait(&self, py: Python<'_>, min_bytes: usize, timeout: f64) -> PyResult<bool> {
        let timeout = seconds_arg("timeout", timeout).map_err(PyValueError::new_err)?;
        let queue = self.queue();
        Ok(py.detach(|| queue.wait(min_bytes.max(1), timeout)))
    }

    #[pyo3(signature = (max_bytes = None, max_ops = None))]
    fn next_batch(
        &self,
        py: Python<'_>,
        max_bytes: Option<usize>,
        max_ops: Option<usize>,
    ) -> PyResult<Option<PyBatch>> {
        let max_bytes = max_bytes.unwrap_or(self.shared.max_batch_bytes);
        let max_ops = max_ops.unwrap_or(usize::MAX);
        if max_ops == 0 {
            return Err(PyValueError::new_err("max_ops: must be at least 1"));
        }
        let queue = self.queue();
        let batch = py.detach(|| queue.next_batch(max_bytes, max_ops));
        Ok(batch.map(|inner| PyBatch::new(inner, self.index)))
    }

    fn drain_ops<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let ops = self.queue().drain_all();
        PyList::new(py, ops.iter().map(|op| PyBytes::new(py, &op.bytes)))
    }

    fn clear(&self) -> usize {
        self.queue().clear()
    }
}

#[pyclass(frozen, name = "Batch", module = "ciotrack._core")]
pub struct PyBatch {
    pub inner: Batch,
    lane: usize,
    /// `body` as Python bytes, made on first access (a sender may read it on every retry).
    body: PyOnceLock<Py<PyBytes>>,
}

impl PyBatch {
    fn new(inner: Batch, lane: usize) -> Self {
        PyBatch {
            inner,
            lane,
            body: PyOnceLock::new(),
        }
    }
}

#[pymethods]
impl PyBatch {
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.body
            .get_or_init(py, || PyBytes::new(py, &self.inner.body).unbind())
            .bind(py)
            .clone()
    }

    #[getter]
    fn count(&self) -> usize {
        self.inner.count()
    }

    #[getter]
    fn lane(&self) -> usize {
        self.lane
    }

    #[getter]
    fn start(&self) -> u64 {
        self.inner.start
    }

    #[getter]
    fn end(&self) -> u64 {
        self.inner.end
    }

    fn ops<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            (0..self.inner.count()).map(|i| PyBytes::new(py, self.inner.op(i))),
        )
    }

    fn split(&self) -> PyResult<(PyBatch, PyBatch)> {
        if self.inner.count() < 2 {
            return Err(PyValueError::new_err(
                "split: a batch of fewer than 2 operations cannot be split",
            ));
        }
        let (first, second) = self.inner.split();
        Ok((
            PyBatch::new(first, self.lane),
            PyBatch::new(second, self.lane),
        ))
    }

    fn oldest_age(&self) -> f64 {
        let oldest = self
            .inner
            .accepted_ns
            .iter()
            .copied()
            .min()
            .unwrap_or_else(clock::now_ns);
        clock::now_ns().saturating_sub(oldest) as f64 / 1e9
    }

    fn __repr__(&self) -> String {
        // Never the body: it holds customer data.
        format!(
            "<Batch lane={} ops={} bytes={} [{}, {})>",
            self.lane,
            self.inner.count(),
            self.inner.body.len(),
            self.inner.start,
            self.inner.end
        )
    }
}

#[pyclass(frozen, name = "Bucket", module = "ciotrack._core")]
pub struct PyBucket {
    inner: TokenBucket<MonotonicClock>,
}

#[pymethods]
impl PyBucket {
    #[new]
    fn new(rate: f64, burst: f64) -> PyResult<Self> {
        if rate.is_nan() || burst.is_nan() {
            return Err(PyValueError::new_err("rate and burst must be numbers"));
        }
        Ok(PyBucket {
            inner: TokenBucket::new(rate, burst, MonotonicClock),
        })
    }

    fn acquire(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = seconds_arg("timeout", timeout).map_err(PyValueError::new_err)?;
        let bucket = &self.inner;
        Ok(py.detach(|| bucket.acquire(timeout)))
    }

    fn try_acquire(&self) -> f64 {
        match self.inner.try_acquire() {
            Ok(()) => 0.0,
            Err(wait) => wait.as_secs_f64(),
        }
    }

    fn pause(&self, seconds: f64) -> PyResult<()> {
        let pause = seconds_arg("seconds", seconds).map_err(PyValueError::new_err)?;
        self.inner.pause(pause);
        Ok(())
    }

    fn tokens(&self) -> f64 {
        self.inner.tokens()
    }

    fn close(&self) {
        self.inner.close();
    }
}
