//! `FastCalls`: the tracker's common calls as native bound methods, so `tracker.track(...)` goes
//! from the call site straight into Rust (vectorcall of a builtin method) without the Python frame
//! of `Tracker.track` around the core call.
//!
//! `Tracker` binds `track`, `track_anonymous`, `page`, `screen` and `identify` of one `FastCalls`
//! as instance attributes when it is built without `region_for` (so every call goes to lane 0),
//! and activates them once its senders run. What it binds is `FastCalls.entry(name)` (entry.rs): a
//! positional call reaches the method below without pyo3's argument parsing, any other call goes
//! to the pyo3 method itself. Whatever the fast path does not handle goes back to the
//! Python method on the class, unchanged: the first call (it starts the senders), a `region=`
//! argument, `identify` with both a dict and keywords, a retired object (after `close()` or a fork
//! rebuild), and a refusal code from the core other than DEDUPED (handed to `Tracker._refused`,
//! exactly as the Python method does). Validation and its error messages are
//! the core's, shared with `Core.event`/`Core.identify`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use ciotrack_core::intake::{Shared, DEDUPED};

use crate::core::{submit_event, submit_identify, Core};
use crate::errors::Result;

/// The only lane the fast path serves: without `region_for`, every call without `region=` is lane 0.
const LANE: usize = 0;

#[pyclass(frozen, module = "ciotrack._core")]
pub struct FastCalls {
    shared: Arc<Shared>,
    /// `weakref.ref(tracker)`: the tracker holds this object in its `__dict__`; a strong reference
    /// back would make a cycle and delay the collection (and so the final delivery) of a dropped
    /// tracker until the cyclic GC runs.
    tracker: Py<PyAny>,
    /// True between `activate()` (the tracker started its senders) and `retire()` (close, a fork
    /// rebuild); otherwise every call takes the Python method, which starts the tracker, or drops
    /// and counts the call after close.
    live: AtomicBool,
}

impl FastCalls {
    fn tracker<'py>(&self, py: Python<'py>) -> Result<Option<Bound<'py, PyAny>>> {
        let tracker = self.tracker.bind(py).call0()?;
        Ok((!tracker.is_none()).then_some(tracker))
    }

    /// The Python method of the tracker's class, called as the tracker itself would have been.
    fn slow(
        &self,
        py: Python<'_>,
        method: &Bound<'_, PyString>,
        args: Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> Result<()> {
        let Some(tracker) = self.tracker(py)? else {
            return Ok(()); // collected: nothing left to count the call on
        };
        let function = tracker.get_type().getattr(method)?;
        let mut full = vec![tracker];
        full.extend(args.iter());
        function.call(PyTuple::new(py, full)?, kwargs)?;
        Ok(())
    }

    /// A refusal from the core: `Tracker._refused(code, method, *args)`, as the Python method does.
    fn refused(
        &self,
        py: Python<'_>,
        code: i32,
        method: &str,
        args: Bound<'_, PyTuple>,
    ) -> Result<()> {
        if code == DEDUPED {
            return Ok(());
        }
        let Some(tracker) = self.tracker(py)? else {
            return Ok(());
        };
        let mut full: Vec<Bound<'_, PyAny>> = vec![
            code.into_bound_py_any(py)?,
            PyString::new(py, method).into_any(),
        ];
        full.extend(args.iter());
        tracker.call_method1(intern!(py, "_refused"), PyTuple::new(py, full)?)?;
        Ok(())
    }

    fn fast(&self, region: Option<&Bound<'_, PyAny>>) -> bool {
        region.is_none() && self.live.load(Ordering::Acquire)
    }

    #[allow(clippy::too_many_arguments)]
    fn event<'py>(
        &self,
        py: Python<'py>,
        method: &Bound<'py, PyString>,
        action: &Bound<'py, PyString>,
        customer_id: Option<&Bound<'py, PyAny>>,
        anonymous_id: Option<&Bound<'py, PyAny>>,
        name: &Bound<'py, PyAny>,
        data: Option<&Bound<'py, PyAny>>,
        id: Option<&Bound<'py, PyAny>>,
        timestamp: Option<&Bound<'py, PyAny>>,
        region: Option<&Bound<'py, PyAny>>,
    ) -> Result<()> {
        let none = py.None().into_bound(py);
        let or_none = |v: Option<&Bound<'py, PyAny>>| v.cloned().unwrap_or_else(|| none.clone());
        let subject = customer_id.or(anonymous_id).expect("one subject");
        if !self.fast(region) {
            let kwargs = PyDict::new(py);
            kwargs.set_item("id", or_none(id))?;
            kwargs.set_item("timestamp", or_none(timestamp))?;
            kwargs.set_item("region", or_none(region))?;
            let args = PyTuple::new(py, [subject.clone(), name.clone(), or_none(data)])?;
            return self.slow(py, method, args, Some(&kwargs));
        }
        let code = submit_event(
            &self.shared,
            py,
            LANE,
            action.as_any(),
            customer_id,
            anonymous_id,
            name,
            data,
            id,
            timestamp,
        )?;
        if code == 0 {
            return Ok(());
        }
        let args = PyTuple::new(
            py,
            [
                LANE.into_bound_py_any(py)?,
                action.clone().into_any(),
                or_none(customer_id),
                or_none(anonymous_id),
                name.clone(),
                or_none(data),
                or_none(id),
                or_none(timestamp),
            ],
        )?;
        self.refused(py, code, "event", args)
    }
}

#[pymethods]
impl FastCalls {
    /// Binds the calls of `tracker` to `core` (the tracker's own, lane 0 only).
    #[new]
    fn new(core: &Bound<'_, Core>, tracker: &Bound<'_, PyAny>) -> PyResult<Self> {
        let weakref = tracker
            .py()
            .import("weakref")?
            .getattr("ref")?
            .call1((tracker,))?;
        Ok(FastCalls {
            shared: core.get().shared().clone(),
            tracker: weakref.unbind(),
            live: AtomicBool::new(false),
        })
    }

    /// The tracker runs: calls take the fast path from now on.
    fn activate(&self) {
        self.live.store(true, Ordering::Release);
    }

    /// From now on every call takes the Python method (`close()`, a fork rebuild).
    fn retire(&self) {
        self.live.store(false, Ordering::Release);
    }

    #[getter]
    fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// `name` (`track`, `track_anonymous`, `page`, `screen`, `identify`) as a builtin function
    /// bound to this object that reads a positional call without pyo3's argument parsing, and
    /// hands any other call to the method of that name (`entry.rs`).
    fn entry<'py>(slf: &Bound<'py, Self>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        crate::entry::bound(slf, name)
    }

    #[pyo3(signature = (customer_id, name, data = None, *, id = None, timestamp = None, region = None))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn track(
        &self,
        py: Python<'_>,
        customer_id: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        data: Option<&Bound<'_, PyAny>>,
        id: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
        region: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let (method, action) = (intern!(py, "track"), intern!(py, "event"));
        let customer_id = Some(customer_id);
        self.event(
            py,
            method,
            action,
            customer_id,
            None,
            name,
            data,
            id,
            timestamp,
            region,
        )
    }

    #[pyo3(signature = (anonymous_id, name, data = None, *, id = None, timestamp = None, region = None))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn track_anonymous(
        &self,
        py: Python<'_>,
        anonymous_id: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        data: Option<&Bound<'_, PyAny>>,
        id: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
        region: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let (method, action) = (intern!(py, "track_anonymous"), intern!(py, "event"));
        let anonymous_id = Some(anonymous_id);
        self.event(
            py,
            method,
            action,
            None,
            anonymous_id,
            name,
            data,
            id,
            timestamp,
            region,
        )
    }

    #[pyo3(signature = (customer_id, url, data = None, *, id = None, timestamp = None, region = None))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn page(
        &self,
        py: Python<'_>,
        customer_id: &Bound<'_, PyAny>,
        url: &Bound<'_, PyAny>,
        data: Option<&Bound<'_, PyAny>>,
        id: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
        region: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let (method, action) = (intern!(py, "page"), intern!(py, "page"));
        let customer_id = Some(customer_id);
        self.event(
            py,
            method,
            action,
            customer_id,
            None,
            url,
            data,
            id,
            timestamp,
            region,
        )
    }

    #[pyo3(signature = (customer_id, name, data = None, *, id = None, timestamp = None, region = None))]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn screen(
        &self,
        py: Python<'_>,
        customer_id: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        data: Option<&Bound<'_, PyAny>>,
        id: Option<&Bound<'_, PyAny>>,
        timestamp: Option<&Bound<'_, PyAny>>,
        region: Option<&Bound<'_, PyAny>>,
    ) -> Result<()> {
        let (method, action) = (intern!(py, "screen"), intern!(py, "screen"));
        let customer_id = Some(customer_id);
        self.event(
            py,
            method,
            action,
            customer_id,
            None,
            name,
            data,
            id,
            timestamp,
            region,
        )
    }

    #[pyo3(signature = (customer_id, attributes = None, /, *, region = None, **attrs))]
    pub(crate) fn identify(
        &self,
        py: Python<'_>,
        customer_id: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
        region: Option<&Bound<'_, PyAny>>,
        attrs: Option<&Bound<'_, PyDict>>,
    ) -> Result<()> {
        // Keywords alone are the attributes (pyo3 built a fresh dict); a dict AND keywords are
        // merged by the Python method (`{**attributes, **attrs}`: its semantics and its errors).
        let attrs = attrs.filter(|attrs| !attrs.is_empty());
        if !self.fast(region) || (attrs.is_some() && attributes.is_some()) {
            let none = py.None().into_bound(py);
            let attributes = attributes.cloned().unwrap_or_else(|| none.clone());
            let kwargs = PyDict::new(py);
            if let Some(attrs) = attrs {
                kwargs.update(attrs.as_mapping())?;
            }
            kwargs.set_item("region", region.cloned().unwrap_or(none))?;
            let args = PyTuple::new(py, [customer_id.clone(), attributes])?;
            return self.slow(py, intern!(py, "identify"), args, Some(&kwargs));
        }
        let attributes = attributes.or(attrs.map(|attrs| attrs.as_any()));
        let code = submit_identify(&self.shared, py, LANE, customer_id, attributes, None)?;
        if code == 0 {
            return Ok(());
        }
        let none = py.None().into_bound(py);
        let args = PyTuple::new(
            py,
            [
                LANE.into_bound_py_any(py)?,
                customer_id.clone(),
                attributes.cloned().unwrap_or(none),
            ],
        )?;
        self.refused(py, code, "identify", args)
    }
}
