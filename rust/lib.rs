//! PyO3 glue for ciotrack's native core. Logic lives in the pyo3-free modules below.
pub mod batch;
pub mod bucket;
pub mod clock;
pub mod dedup;
pub mod metrics;
pub mod queue;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
