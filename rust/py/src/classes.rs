//! The small pyclasses: `Lane` (a view of one queue of a Core), `Batch` (an assembled request
//! body) and `Bucket` (the token bucket). Every wait releases the GIL. They wrap ciotrack-core
//! types only; core.rs builds on them, never the other way round.

use std::os::raw::{c_int, c_void};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

use ciotrack_core::batch::Batch;
use ciotrack_core::bucket::TokenBucket;
use ciotrack_core::clock::{self, MonotonicClock};
use ciotrack_core::intake::{seconds_arg, Shared};
use ciotrack_core::queue::OpQueue;
use ciotrack_core::CoreError;

use crate::errors::Result;

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

    fn wait(&self, py: Python<'_>, min_bytes: usize, timeout: f64) -> Result<bool> {
        let timeout = seconds_arg("timeout", timeout)?;
        let queue = self.queue();
        Ok(py.detach(|| queue.wait(min_bytes.max(1), timeout)))
    }

    #[pyo3(signature = (max_bytes = None, max_ops = None))]
    fn next_batch(
        &self,
        max_bytes: Option<usize>,
        max_ops: Option<usize>,
    ) -> Result<Option<PyBatch>> {
        // With the GIL held: assembling a batch is a copy of at most 500 KB, shorter than the GIL
        // hand-over a detach costs when the application is running Python (it takes the GIL, and
        // the sender waits up to the 5 ms switch interval to get it back).
        let batch = self.shared.next_batch(self.index, max_bytes, max_ops)?;
        Ok(batch.map(PyBatch::new))
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
    /// `body` as Python bytes, made on first access (a sender may read it on every retry).
    body: PyOnceLock<Py<PyBytes>>,
}

impl PyBatch {
    fn new(inner: Batch) -> Self {
        PyBatch {
            inner,
            body: PyOnceLock::new(),
        }
    }
}

#[pymethods]
impl PyBatch {
    /// A standalone batch of already-encoded ops (e.g. read back from a stream): the body a lane
    /// would have built from them. It belongs to no lane: `lane` is None, `start`/`end` are
    /// `0`/`count` (positions in this batch, not lane ordinals), and `Core.ack` refuses it.
    #[staticmethod]
    fn from_ops(ops: &Bound<'_, PyAny>) -> Result<PyBatch> {
        let items = ops
            .try_iter()?
            .map(|item| Ok(item?.cast_into::<PyBytes>()?))
            .collect::<PyResult<Vec<_>>>()?;
        let now = clock::now_ns();
        let batch = Batch::from_encoded(items.iter().map(|op| op.as_bytes()), now)?;
        Ok(PyBatch::new(batch))
    }

    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        // get + set, not get_or_init: that one releases the GIL around its Once (so a racing
        // initialiser cannot deadlock), a GIL hand-over per batch for the sender. A batch is read by
        // the one sender delivering it; should two threads race, both bytes are equal and the
        // first one set wins.
        if let Some(body) = self.body.get(py) {
            return body.bind(py).clone();
        }
        let body = PyBytes::new(py, &self.inner.body);
        match self.body.set(py, body.clone().unbind()) {
            Ok(()) => body,
            Err(_) => self.body.get(py).map_or(body, |set| set.bind(py).clone()),
        }
    }

    /// The body as a read-only buffer (PEP 3118): `memoryview(batch)` is the body without the
    /// copy that `body` makes (the HTTP sender hands it to the socket as is).
    ///
    /// # Safety
    /// Called by CPython with a valid `view` to fill, the GIL held.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let body = &slf.get().inner.body;
        // SAFETY: `view` is CPython's to fill (the caller's contract). The body is never changed
        // or moved after the batch is built (the class is frozen), and PyBuffer_FillInfo takes a
        // reference to `slf` into `view.obj`, so the bytes outlive every export. readonly=1 makes
        // a request for a writable buffer fail with BufferError.
        let filled = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                body.as_ptr() as *mut c_void,
                body.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if filled == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    #[getter]
    fn count(&self) -> usize {
        self.inner.count()
    }

    #[getter]
    fn lane(&self) -> Option<usize> {
        self.inner.origin.map(|origin| origin.lane)
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

    fn split(&self) -> Result<(PyBatch, PyBatch)> {
        if self.inner.count() < 2 {
            return Err(CoreError::argument(
                "split: a batch of fewer than 2 operations cannot be split",
            )
            .into());
        }
        let (first, second) = self.inner.split();
        Ok((PyBatch::new(first), PyBatch::new(second)))
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
        let lane = match self.inner.origin {
            Some(origin) => origin.lane.to_string(),
            None => "None".into(),
        };
        format!(
            "<Batch lane={} ops={} bytes={} [{}, {})>",
            lane,
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
    fn new(rate: f64, burst: f64) -> Result<Self> {
        if rate.is_nan() || burst.is_nan() {
            return Err(CoreError::argument("rate and burst must be numbers").into());
        }
        Ok(PyBucket {
            inner: TokenBucket::new(rate, burst, MonotonicClock),
        })
    }

    fn acquire(&self, py: Python<'_>, timeout: f64) -> Result<bool> {
        let timeout = seconds_arg("timeout", timeout)?;
        let bucket = &self.inner;
        // A token already there is taken without releasing the GIL (a release costs a hand-over).
        if !bucket.is_closed() && bucket.try_acquire().is_ok() {
            return Ok(true);
        }
        Ok(py.detach(|| bucket.acquire(timeout)))
    }

    fn try_acquire(&self) -> f64 {
        match self.inner.try_acquire() {
            Ok(()) => 0.0,
            Err(wait) => wait.as_secs_f64(),
        }
    }

    fn pause(&self, seconds: f64) -> Result<()> {
        let pause = seconds_arg("seconds", seconds)?;
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
