//! Thin `PyO3` shims: convert types, call `jid`, convert back.

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::jid::{self, KeyFields};

#[pyfunction]
#[pyo3(signature = (jid))]
fn normalize_jid(jid: Option<&str>) -> Option<String> {
    jid.and_then(jid::normalize_jid)
}

/// The batch form: one call for a list. A JID that is canonical already comes back as the
/// same Python string object (no copy).
#[pyfunction]
fn normalize_jids<'py>(py: Python<'py>, jids: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
    let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(jids.len());
    for item in jids.iter() {
        if item.is_none() {
            out.push(item);
            continue;
        }
        let text = item.cast::<PyString>()?.to_str()?;
        let normalized = match jid::normalize(text) {
            None => py.None().into_bound(py),
            Some(Cow::Borrowed(same)) if same.len() == text.len() => item.clone(),
            Some(other) => PyString::new(py, &other).into_any(),
        };
        out.push(normalized);
    }
    PyList::new(py, out)
}

#[pyfunction]
#[pyo3(signature = (jid))]
fn jid_kind(jid: Option<&str>) -> &'static str {
    jid.map_or(jid::Kind::Unknown, jid::jid_kind).as_str()
}

#[pyfunction]
#[pyo3(signature = (jid))]
fn phone_digits(jid: Option<&str>) -> Option<String> {
    jid.and_then(jid::phone_digits)
}

#[pyfunction]
fn phone_key(digits: &str) -> String {
    jid::phone_key(digits)
}

#[pyfunction]
#[pyo3(signature = (jid))]
fn phone_variant(jid: Option<&str>) -> Option<String> {
    jid.and_then(jid::phone_variant)
}

type Resolved = (
    Option<String>,
    &'static str,
    Option<String>,
    Option<String>,
    Vec<(String, String)>,
);

#[pyfunction]
#[pyo3(signature = (
    remote_jid, remote_jid_alt=None, sender_pn=None, sender_lid=None, previous_remote_jid=None,
    participant=None, participant_alt=None, participant_pn=None, participant_lid=None,
    from_me=false, owner_jid=None
))]
#[allow(clippy::too_many_arguments)]
fn resolve_addresses(
    remote_jid: Option<&str>,
    remote_jid_alt: Option<&str>,
    sender_pn: Option<&str>,
    sender_lid: Option<&str>,
    previous_remote_jid: Option<&str>,
    participant: Option<&str>,
    participant_alt: Option<&str>,
    participant_pn: Option<&str>,
    participant_lid: Option<&str>,
    from_me: bool,
    owner_jid: Option<&str>,
) -> Resolved {
    let a = jid::resolve_addresses(&KeyFields {
        remote_jid,
        remote_jid_alt,
        sender_pn,
        sender_lid,
        previous_remote_jid,
        participant,
        participant_alt,
        participant_pn,
        participant_lid,
        from_me,
        owner_jid,
    });
    (
        a.chat_jid,
        a.chat_type.as_str(),
        a.sender_jid,
        a.sender_phone,
        a.lid_pairs,
    )
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(normalize_jid, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_jids, m)?)?;
    m.add_function(wrap_pyfunction!(jid_kind, m)?)?;
    m.add_function(wrap_pyfunction!(phone_digits, m)?)?;
    m.add_function(wrap_pyfunction!(phone_key, m)?)?;
    m.add_function(wrap_pyfunction!(phone_variant, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_addresses, m)?)?;
    Ok(())
}
