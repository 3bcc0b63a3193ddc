//! `Core`: the per-tracker native state and the hot path of every tracking call.
//!
//! Per call: fork check -> encode into a per-thread scratch buffer (args.rs, encode.rs) ->
//! `Shared::submit` (ciotrack-core's intake: dedup, push under the overflow policy, count). A call
//! that raises has queued nothing and counted only `invalid`. Errors leave each method as an
//! `errors::Error` and become a Python exception in one `From` (errors.rs).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use ciotrack_core::intake::{with_scratch, BlockingWait, CoreConfig, Shared, FORKED};
use ciotrack_core::{clock, fork, metrics as core_metrics, CoreError};

use crate::args;
use crate::classes::{Lane, PyBatch};
use crate::errors::Result;

/// The `block` policy's wait, run with the GIL released so the senders that make room can run.
struct ReleaseGil<'py>(Python<'py>);

impl BlockingWait for ReleaseGil<'_> {
    fn block(&self, wait: &(dyn Fn() + Sync)) {
        self.0.detach(wait)
    }
}

#[pyclass(frozen, module = "ciotrack._core")]
pub struct Core {
    shared: Arc<Shared>,
}

/// `Core.identify`, shared with `FastCalls.identify` (one code path, one set of messages).
pub(crate) fn submit_identify(
    shared: &Shared,
    py: Python<'_>,
    lane: usize,
    customer_id: &Bound<'_, PyAny>,
    attributes: Option<&Bound<'_, PyAny>>,
    timestamp: Option<&Bound<'_, PyAny>>,
) -> Result<i32> {
    if shared.forked() {
        return Ok(FORKED);
    }
    shared.queue(lane)?;
    let now = clock::now_ns();
    with_scratch(|out| {
        let policy = shared.dedup_policy;
        let built = args::build_identify(py, out, policy, customer_id, attributes, timestamp, now);
        let dedup = shared.count_invalid(built)?;
        Ok(shared.submit_at(lane, out, dedup, now, &ReleaseGil(py)))
    })
}

/// `Core.event`, shared with the `FastCalls` event methods.
#[allow(clippy::too_many_arguments)]
pub(crate) fn submit_event(
    shared: &Shared,
    py: Python<'_>,
    lane: usize,
    action: &Bound<'_, PyAny>,
    customer_id: Option<&Bound<'_, PyAny>>,
    anonymous_id: Option<&Bound<'_, PyAny>>,
    name: &Bound<'_, PyAny>,
    data: Option<&Bound<'_, PyAny>>,
    id: Option<&Bound<'_, PyAny>>,
    timestamp: Option<&Bound<'_, PyAny>>,
) -> Result<i32> {
    if shared.forked() {
        return Ok(FORKED);
    }
    shared.queue(lane)?;
    let mut digits = itoa::Buffer::new();
    let event = args::event_args(action, customer_id, anonymous_id, name, id, &mut digits);
    let event = shared.count_invalid(event)?;
    // One clock read per call: dedup and queue age use it as is, the ULID and the default
    // timestamp as wall time (`clock::unix_millis_at`).
    let now = clock::now_ns();
    with_scratch(|out| {
        let policy = shared.dedup_policy;
        let built = args::build_event(py, out, policy, event, data, timestamp, now);
        let dedup = shared.count_invalid(built)?;
        Ok(shared.submit_at(lane, out, dedup, now, &ReleaseGil(py)))
    })
}

impl Core {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
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
    ) -> Result<Self> {
        let shared = Shared::new(&CoreConfig {
            lanes,
            max_queue_ops,
            max_queue_bytes,
            max_batch_bytes,
            on_full,
            block_timeout,
            dedup_ttl,
            dedup_max_entries,
            dedup_events,
            metrics,
        })?;
        Ok(Core {
            shared: Arc::new(shared),
        })
    }

    fn lane(&self, index: usize) -> Result<Lane> {
        self.shared.queue(index)?;
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
    ) -> Result<i32> {
        submit_identify(&self.shared, py, lane, customer_id, attributes, timestamp)
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
    ) -> Result<i32> {
        let shared = &self.shared;
        submit_event(
            shared,
            py,
            lane,
            action,
            customer_id,
            anonymous_id,
            name,
            data,
            id,
            timestamp,
        )
    }

    #[pyo3(signature = (lane, action, customer_id, fields = None))]
    fn person(
        &self,
        py: Python<'_>,
        lane: usize,
        action: &Bound<'_, PyAny>,
        customer_id: &Bound<'_, PyAny>,
        fields: Option<&Bound<'_, PyAny>>,
    ) -> Result<i32> {
        let shared = &*self.shared;
        if shared.forked() {
            return Ok(FORKED);
        }
        shared.queue(lane)?;
        with_scratch(|out| {
            let built = args::build_person(py, out, action, customer_id, fields);
            if let Some(key) = shared.count_invalid(built)? {
                shared.dedup.forget(key);
            }
            Ok(shared.submit(lane, out, None, &ReleaseGil(py)))
        })
    }

    fn raw(&self, py: Python<'_>, lane: usize, op: &Bound<'_, PyAny>) -> Result<i32> {
        let shared = &*self.shared;
        if shared.forked() {
            return Ok(FORKED);
        }
        shared.queue(lane)?;
        with_scratch(|out| {
            shared.count_invalid(args::build_raw(py, out, op))?;
            // A raw delete, suppress or merge ends its people's identify keys, as `person` does.
            for key in shared.dedup_policy.keys_ended_by_raw(out) {
                shared.dedup.forget(key);
            }
            Ok(shared.submit(lane, out, None, &ReleaseGil(py)))
        })
    }

    /// Forgets the dedup keys intake recorded for `ops`, encoded operations that failed for good
    /// (the loss door calls it): sending one again must not be taken for a duplicate of something
    /// Customer.io never accepted. Items that are not bytes, or not ops, are skipped. Returns the
    /// number of keys forgotten (whether or not they were still remembered).
    fn forget_lost(&self, ops: &Bound<'_, PyAny>) -> Result<usize> {
        let shared = &*self.shared;
        let mut forgotten = 0;
        if !shared.dedup_policy.enabled {
            return Ok(forgotten);
        }
        for item in ops.try_iter()? {
            let item = item?;
            let Ok(op) = item.cast::<PyBytes>() else {
                continue;
            };
            for key in shared.dedup_policy.keys_of_lost(op.as_bytes()) {
                shared.dedup.forget(key);
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    #[pyo3(signature = (lane = None))]
    fn take_overflow<'py>(
        &self,
        py: Python<'py>,
        lane: Option<usize>,
    ) -> Result<Bound<'py, PyList>> {
        let taken = self.shared.take_overflow(lane)?;
        Ok(PyList::new(
            py,
            taken.iter().map(|op| PyBytes::new(py, op)),
        )?)
    }

    fn requeue(&self, lane: usize, ops: &Bound<'_, PyAny>) -> Result<usize> {
        self.shared.queue(lane)?;
        if self.shared.forked() {
            return Ok(0); // as before: a forked child takes nothing, and reads nothing
        }
        // Every item is checked before the first push, so a bad one leaves the lane untouched.
        let items = ops
            .try_iter()?
            .map(|item| Ok(item?.cast_into::<PyBytes>()?))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(self
            .shared
            .requeue(lane, items.iter().map(|bytes| bytes.as_bytes()))?)
    }

    fn wake(&self) {
        self.shared.lanes.iter().for_each(|queue| queue.wake());
    }

    fn close(&self) {
        // Sealed first: a push from now on answers CLOSED instead of landing after the final drain.
        self.shared.seal();
        self.shared.lanes.iter().for_each(|queue| queue.close());
    }

    fn fork_generation(&self) -> u64 {
        fork::generation()
    }

    fn stats<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
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
        gauges.set_item("overflow_ops", self.shared.overflow_len())?;
        let histograms = PyDict::new(py);
        for (name, snap) in metrics.histograms() {
            let h = PyDict::new(py);
            h.set_item("count", snap.count)?;
            h.set_item("sum", snap.sum)?;
            h.set_item("p50", snap.p50)?;
            h.set_item("p95", snap.p95)?;
            h.set_item("p99", snap.p99)?;
            h.set_item("max", snap.max)?;
            // Prometheus `_bucket` counts, computed here from the log buckets (not while recording).
            let bounds = core_metrics::bounds_for(&name);
            let buckets: Vec<(f64, u64)> = bounds
                .iter()
                .copied()
                .zip(snap.cumulative(bounds))
                .collect();
            h.set_item("buckets", buckets)?;
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

    fn observe(&self, histogram: &str, value: f64) -> Result<()> {
        if !(value.is_finite() && value >= 0.0) {
            return Err(CoreError::argument(format!(
                "{histogram}: {value} is not a finite value >= 0"
            ))
            .into());
        }
        self.shared.metrics.observe(histogram, value);
        Ok(())
    }

    #[pyo3(signature = (batch, failed = Vec::new()), text_signature = "(self, batch, failed=())")]
    fn ack(&self, batch: &Bound<'_, PyBatch>, failed: Vec<usize>) -> Result<()> {
        let batch = &batch.get().inner;
        let shared = &*self.shared;
        // With the GIL held: recording a batch's latencies is a few microseconds (one atomic per
        // histogram bucket), less than what handing the GIL over and taking it back costs the app.
        shared.ack(batch, &failed)?;
        Ok(())
    }
}
