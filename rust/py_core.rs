//! `Core`: the per-tracker native state and the hot path of every tracking call.
//!
//! Per call: fork check -> encode into a per-thread scratch buffer -> dedup check -> push under
//! the overflow policy -> dedup record -> count. A call that raises has queued nothing and
//! counted only `invalid`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::sync::Mutex;
use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::clock;
use crate::dedup::DedupSet;
use crate::fork;
use crate::json::py_repr;
use crate::metrics::Metrics;
use crate::ops;
use crate::py_build::{self, with_scratch, DedupEntry, DedupPolicy, EventDedup};
use crate::py_errors::{config_error, to_pyerr};
use crate::py_types::{Lane, PyBatch};
use crate::queue::{Op, OpQueue};
use crate::{seconds_arg, ACCEPTED, DEDUPED, FORKED, FULL};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OnFull {
    DropNewest,
    DropOldest,
    Block,
    Spool,
}

/// Everything a `Core`, its `Lane`s and its `Batch`es share; no Python objects inside, so it can
/// be used with the GIL released.
pub struct Shared {
    pub lanes: Vec<OpQueue>,
    pub max_batch_bytes: usize,
    max_queue_bytes: usize,
    on_full: OnFull,
    block_timeout: Duration,
    dedup: DedupSet,
    dedup_policy: DedupPolicy,
    pub metrics: Metrics,
    /// Ops refused under `on_full="spool"`, one list per lane (the caller spools each lane's ops
    /// under that lane's region, so the lane must survive the hand-over).
    overflow: Mutex<Vec<Vec<Box<[u8]>>>>,
    /// The fork generation this core was made in; any other means we are in a forked child.
    generation: u64,
}

#[pyclass(frozen, module = "ciotrack._core")]
pub struct Core {
    shared: Arc<Shared>,
}

impl Core {
    #[inline]
    fn queue(&self, lane: usize) -> PyResult<&OpQueue> {
        self.shared.lanes.get(lane).ok_or_else(|| {
            PyIndexError::new_err(format!(
                "lane {lane} does not exist (this core has {})",
                self.shared.lanes.len()
            ))
        })
    }

    #[inline]
    fn forked(&self) -> bool {
        fork::generation() != self.shared.generation
    }

    /// Counts a failed call as `invalid` and passes the error on.
    fn invalid<T>(&self, result: PyResult<T>) -> PyResult<T> {
        if result.is_err() {
            self.shared.metrics.invalid.fetch_add(1, Relaxed);
        }
        result
    }

    /// Dedup check, push under the overflow policy, dedup record, count.
    fn submit(
        &self,
        py: Python<'_>,
        lane: usize,
        queue: &OpQueue,
        bytes: &[u8],
        dedup: Option<DedupEntry>,
    ) -> i32 {
        let shared = &*self.shared;
        let now = clock::now_ns();
        if let Some(entry) = dedup {
            if shared.dedup.is_duplicate(entry.key, entry.value, now) {
                let counter = if entry.identify {
                    &shared.metrics.deduped_identify
                } else {
                    &shared.metrics.deduped_event
                };
                counter.fetch_add(1, Relaxed);
                return DEDUPED;
            }
        }
        let op = Op {
            bytes: Box::from(bytes),
            accepted_ns: now,
        };
        let code = match queue.push(op) {
            Ok(()) => ACCEPTED,
            Err(op) => self.overflow(py, lane, queue, op),
        };
        if code == ACCEPTED {
            if let Some(entry) = dedup {
                shared.dedup.record(entry.key, entry.value, now);
            }
            shared.metrics.accepted.fetch_add(1, Relaxed);
        }
        code
    }

    /// The lane refused `op`: apply `on_full`.
    #[cold]
    fn overflow(&self, py: Python<'_>, lane: usize, queue: &OpQueue, mut op: Op) -> i32 {
        let shared = &*self.shared;
        let refuse = || {
            shared.metrics.dropped_full.fetch_add(1, Relaxed);
            FULL
        };
        // An op larger than the whole lane can never fit: no policy can help.
        if op.bytes.len() > shared.max_queue_bytes {
            return refuse();
        }
        match shared.on_full {
            OnFull::DropNewest => refuse(),
            OnFull::Spool => {
                shared.overflow.lock()[lane].push(op.bytes);
                shared.metrics.incr("overflowed", 1);
                ACCEPTED
            }
            OnFull::DropOldest => loop {
                if queue.evict_oldest().is_none() {
                    // Other threads emptied the lane yet the push fails: give up rather than spin.
                    return match queue.push(op) {
                        Ok(()) => ACCEPTED,
                        Err(_) => refuse(),
                    };
                }
                shared.metrics.dropped_oldest.fetch_add(1, Relaxed);
                match queue.push(op) {
                    Ok(()) => return ACCEPTED,
                    Err(back) => op = back,
                }
            },
            OnFull::Block => {
                let deadline =
                    clock::now_ns().saturating_add(shared.block_timeout.as_nanos() as u64);
                loop {
                    let now = clock::now_ns();
                    if now >= deadline || queue.is_closed() {
                        return refuse();
                    }
                    let wait = Duration::from_nanos(deadline - now);
                    let len = op.bytes.len();
                    py.detach(|| queue.wait_space(len, wait));
                    match queue.push(op) {
                        Ok(()) => return ACCEPTED,
                        Err(back) => op = back,
                    }
                }
            }
        }
    }
}

fn parse_on_full(py: Python<'_>, value: &str) -> PyResult<OnFull> {
    Ok(match value {
        "drop_newest" => OnFull::DropNewest,
        "drop_oldest" => OnFull::DropOldest,
        "block" => OnFull::Block,
        "spool" => OnFull::Spool,
        other => {
            return Err(config_error(
                py,
                format!(
                    "on_full: {} is not one of 'drop_newest', 'drop_oldest', 'block', 'spool'",
                    py_repr(other)
                ),
            ))
        }
    })
}

fn parse_event_dedup(py: Python<'_>, value: &str) -> PyResult<EventDedup> {
    Ok(match value {
        "id" => EventDedup::Id,
        "composite" => EventDedup::Composite,
        "off" => EventDedup::Off,
        other => {
            return Err(config_error(
                py,
                format!(
                    "dedup_events: {} is not one of 'id', 'composite', 'off'",
                    py_repr(other)
                ),
            ))
        }
    })
}

fn at_least_one(py: Python<'_>, name: &str, value: usize) -> PyResult<usize> {
    if value == 0 {
        return Err(config_error(py, format!("{name}: must be at least 1")));
    }
    Ok(value)
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (
        *, lanes = 1, max_queue_ops = 1_000_000, max_queue_bytes = 67_108_864, max_batch_bytes = 500_000,
        on_full = "drop_newest", block_timeout = 0.0, dedup_ttl = 300.0, dedup_max_entries = 100_000,
        dedup_events = "id", metrics = true
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        lanes: usize,
        max_queue_ops: usize,
        max_queue_bytes: usize,
        max_batch_bytes: usize,
        on_full: &str,
        block_timeout: f64,
        dedup_ttl: f64,
        dedup_max_entries: usize,
        dedup_events: &str,
        metrics: bool,
    ) -> PyResult<Self> {
        let lanes = at_least_one(py, "lanes", lanes)?;
        if lanes > 256 {
            return Err(config_error(py, format!("lanes: {lanes} is more than 256")));
        }
        let max_queue_ops = at_least_one(py, "max_queue_ops", max_queue_ops)?;
        let max_queue_bytes = at_least_one(py, "max_queue_bytes", max_queue_bytes)?;
        // The smallest useful batch holds the envelope and one tiny op.
        if !(64..=ops::MAX_BATCH_BYTES).contains(&max_batch_bytes) {
            return Err(config_error(
                py,
                format!(
                    "max_batch_bytes: {max_batch_bytes} is outside 64..={}",
                    ops::MAX_BATCH_BYTES
                ),
            ));
        }
        let on_full = parse_on_full(py, on_full)?;
        let event_dedup = parse_event_dedup(py, dedup_events)?;
        let block_timeout =
            seconds_arg("block_timeout", block_timeout).map_err(|e| config_error(py, e))?;
        let ttl = seconds_arg("dedup_ttl", dedup_ttl).map_err(|e| config_error(py, e))?;
        let ttl_ns = ttl.as_nanos().min(u64::MAX as u128) as u64;
        let shared = Shared {
            lanes: (0..lanes)
                .map(|_| OpQueue::new(max_queue_ops, max_queue_bytes))
                .collect(),
            max_batch_bytes,
            max_queue_bytes,
            on_full,
            block_timeout,
            dedup: DedupSet::new(ttl_ns, dedup_max_entries.max(1)),
            dedup_policy: DedupPolicy {
                enabled: ttl_ns > 0,
                events: event_dedup,
            },
            metrics: Metrics::new(metrics),
            overflow: Mutex::new(vec![Vec::new(); lanes]),
            generation: fork::generation(),
        };
        Ok(Core {
            shared: Arc::new(shared),
        })
    }

    fn lane(&self, index: usize) -> PyResult<Lane> {
        self.queue(index)?;
        Ok(Lane::new(self.shared.clone(), index))
    }

    #[getter]
    fn lanes(&self) -> usize {
        self.shared.lanes.len()
    }

    #[pyo3(signature = (lane, customer_id, attributes, timestamp = None))]
    fn identify(
        &self,
        py: Python<'_>,
        lane: usize,
        customer_id: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i32> {
        if self.forked() {
            return Ok(FORKED);
        }
        let queue = self.queue(lane)?;
        with_scratch(|out| {
            let built = py_build::build_identify(
                py,
                out,
                self.shared.dedup_policy,
                customer_id,
                attributes,
                timestamp,
            );
            let dedup = self.invalid(built)?;
            Ok(self.submit(py, lane, queue, out, dedup))
        })
    }

    #[pyo3(signature = (lane, action, customer_id, anonymous_id, name, data = None, id = None, timestamp = None))]
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        py: Python<'_>,
        lane: usize,
        action: &Bound<'_, PyAny>,
        customer_id: Option<&Bound<'_, PyAny>>,
        anonymous_id: Option<&Bound<'_, PyAny>>,
        name: &Bound<'_, PyAny>,
        data: Option<&Bound<'_, PyAny>>,
        id: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i32> {
        if self.forked() {
            return Ok(FORKED);
        }
        let queue = self.queue(lane)?;
        let mut digits = itoa::Buffer::new();
        let args = py_build::event_args(action, customer_id, anonymous_id, name, id, &mut digits);
        let args = self.invalid(args.map_err(|e| to_pyerr(py, e)))?;
        with_scratch(|out| {
            let built =
                py_build::build_event(py, out, self.shared.dedup_policy, args, data, timestamp);
            let dedup = self.invalid(built)?;
            Ok(self.submit(py, lane, queue, out, dedup))
        })
    }

    #[pyo3(signature = (lane, action, customer_id, fields = None))]
    fn person(
        &self,
        py: Python<'_>,
        lane: usize,
        action: &Bound<'_, PyAny>,
        customer_id: &Bound<'_, PyAny>,
        fields: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i32> {
        if self.forked() {
            return Ok(FORKED);
        }
        let queue = self.queue(lane)?;
        with_scratch(|out| {
            let built = py_build::build_person(py, out, action, customer_id, fields);
            if let Some(key) = self.invalid(built)? {
                self.shared.dedup.forget(key);
            }
            Ok(self.submit(py, lane, queue, out, None))
        })
    }

    fn raw(&self, py: Python<'_>, lane: usize, op: &Bound<'_, PyAny>) -> PyResult<i32> {
        if self.forked() {
            return Ok(FORKED);
        }
        let queue = self.queue(lane)?;
        with_scratch(|out| {
            let built = py_build::build_raw(py, out, op);
            self.invalid(built)?;
            Ok(self.submit(py, lane, queue, out, None))
        })
    }

    #[pyo3(signature = (lane = None))]
    fn take_overflow<'py>(
        &self,
        py: Python<'py>,
        lane: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let taken: Vec<Box<[u8]>> = match lane {
            Some(index) => {
                self.queue(index)?;
                std::mem::take(&mut self.shared.overflow.lock()[index])
            }
            None => {
                let mut lists = self.shared.overflow.lock();
                lists.iter_mut().flat_map(std::mem::take).collect()
            }
        };
        PyList::new(py, taken.iter().map(|op| PyBytes::new(py, op)))
    }

    fn requeue(&self, lane: usize, ops: &Bound<'_, PyAny>) -> PyResult<usize> {
        let queue = self.queue(lane)?;
        if self.forked() {
            return Ok(0);
        }
        let mut fitted = 0;
        for item in ops.try_iter()? {
            let item = item?;
            let bytes = item.cast::<PyBytes>()?.as_bytes();
            // Stop at the first refusal: pushing later, smaller ops would break FIFO order.
            if queue
                .push(Op {
                    bytes: Box::from(bytes),
                    accepted_ns: clock::now_ns(),
                })
                .is_err()
            {
                break;
            }
            fitted += 1;
        }
        Ok(fitted)
    }

    fn wake(&self) {
        self.shared.lanes.iter().for_each(OpQueue::wake);
    }

    fn close(&self) {
        self.shared.lanes.iter().for_each(OpQueue::close);
    }

    fn fork_generation(&self) -> u64 {
        fork::generation()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let metrics = &self.shared.metrics;
        let counters = PyDict::new(py);
        for (name, value) in metrics.counters() {
            counters.set_item(name, value)?;
        }
        let gauges = PyDict::new(py);
        for (i, queue) in self.shared.lanes.iter().enumerate() {
            gauges.set_item(format!("lane{i}_ops"), queue.len())?;
            gauges.set_item(format!("lane{i}_bytes"), queue.bytes())?;
        }
        let overflow: usize = self.shared.overflow.lock().iter().map(Vec::len).sum();
        gauges.set_item("overflow_ops", overflow)?;
        let histograms = PyDict::new(py);
        for (name, snap) in metrics.histograms() {
            let h = PyDict::new(py);
            h.set_item("count", snap.count)?;
            h.set_item("sum", snap.sum)?;
            h.set_item("p50", snap.p50)?;
            h.set_item("p95", snap.p95)?;
            h.set_item("p99", snap.p99)?;
            h.set_item("max", snap.max)?;
            histograms.set_item(name, h)?;
        }
        let stats = PyDict::new(py);
        stats.set_item("counters", counters)?;
        stats.set_item("gauges", gauges)?;
        stats.set_item("histograms", histograms)?;
        Ok(stats)
    }

    #[pyo3(signature = (counter, n = 1))]
    fn incr(&self, counter: &str, n: u64) {
        self.shared.metrics.incr(counter, n);
    }

    fn observe(&self, histogram: &str, value: f64) -> PyResult<()> {
        if !(value.is_finite() && value >= 0.0) {
            return Err(PyValueError::new_err(format!(
                "{histogram}: {value} is not a finite value >= 0"
            )));
        }
        self.shared.metrics.observe(histogram, value);
        Ok(())
    }

    #[pyo3(signature = (batch, failed = Vec::new()), text_signature = "(self, batch, failed=())")]
    fn ack(&self, py: Python<'_>, batch: &Bound<'_, PyBatch>, failed: Vec<usize>) {
        let batch = batch.get();
        let count = batch.inner.count();
        let mut is_failed = vec![false; count];
        for i in failed {
            if i < count {
                is_failed[i] = true;
            }
        }
        let shared = &*self.shared;
        // Recording a few thousand latencies is pure Rust: let other Python threads run meanwhile.
        py.detach(|| {
            let now = clock::now_ns();
            // One lookup per batch, not per op.
            let latency = shared
                .metrics
                .enabled()
                .then(|| shared.metrics.histogram("delivery_latency_seconds"));
            let mut delivered = 0;
            for (i, &accepted) in batch.inner.accepted_ns.iter().enumerate() {
                if !is_failed[i] {
                    delivered += 1;
                    if let Some(latency) = &latency {
                        latency.record(now.saturating_sub(accepted) as f64 / 1e9);
                    }
                }
            }
            shared.metrics.incr("delivered", delivered);
        });
    }
}
