//! PyO3's `Py_3_*` cfgs for this crate's own code: CPython 3.14 took away the inline reads of a str's
//! header that `encode::utf8` uses on older versions (see there).
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
