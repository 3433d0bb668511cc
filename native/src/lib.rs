//! Python bindings of the native core. This file only registers; the logic is in `jid`.

mod bindings;
pub mod jid;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    bindings::register(m)
}
