//! ciotrack's native logic without Python: encoding layout (Track API v2 ops, JSON), the bounded
//! lane queue, batch assembly and splitting, dedup and its policy, the token bucket, metrics,
//! fork detection, ULIDs, and intake (submit under the overflow policy, ack).
//!
//! No pyo3 here, by construction: this crate does not depend on it, so `cargo test -p
//! ciotrack-core` runs without libpython. The binding crate (rust/py) converts Python arguments
//! into calls of this crate and `CoreError`s into Python exceptions.
pub mod batch;
pub mod bucket;
pub mod clock;
pub mod dedup;
pub mod dedup_policy;
pub mod error;
pub mod fork;
pub mod intake;
pub mod json;
pub mod metrics;
pub mod op_scan;
pub mod ops;
pub mod queue;
pub mod sync;
pub mod ulid;

pub use error::{CoreError, ErrorKind};
