//! `gqla._native`: the conformance suite for kernels written in Python. A thin binding: the cases,
//! their inputs, the f64 and naive references, the profile, the judge and the certificates are the
//! Rust ones ([`gqla_conformance`]); the `gqla` Python package (python/gqla) turns the tensors
//! crossing here (name, dtype, shape, little-endian bytes) into arrays.

mod case;
mod kernel;
mod pack;
mod run;

use case::PyCase;
use gqla_conformance::case::DType;
use gqla_conformance::{Profile, Selection};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Arc;

/// A profile from its JSON text (the README's "Profiles"), or a ValueError naming the field.
fn parse_profile(json: &str) -> PyResult<Profile> {
    Profile::from_json(json).map_err(|e| PyValueError::new_err(format!("profile: {e}")))
}

/// The cases of `ops` (operation names, each matched exactly; none: every operation) whose ids
/// start with one of `filters` (none: every case).
fn selection(ops: Vec<String>, filters: Vec<String>) -> PyResult<Selection> {
    let known: Vec<&str> = gqla_conformance::case::Op::ALL.iter().map(|o| o.name()).collect();
    if let Some(bad) = ops.iter().find(|o| !known.contains(&o.as_str())) {
        return Err(PyValueError::new_err(format!(
            "unknown operation `{bad}`: expected one of {}",
            known.join(", ")
        )));
    }
    let prefixes: Vec<String> = ops.iter().map(|o| format!("{o}:")).collect();
    if filters.is_empty() {
        return Ok(Selection::new(prefixes));
    }
    // Filters narrow the operations (a selection is the union of its prefixes): a filter inside
    // an operation stays, one wider than an operation becomes that operation.
    let mut kept: Vec<String> = Vec::new();
    for f in filters {
        let narrowed: Vec<String> = if prefixes.is_empty() {
            vec![f.clone()]
        } else {
            prefixes
                .iter()
                .filter_map(|p| {
                    if f.starts_with(p.as_str()) {
                        Some(f.clone())
                    } else {
                        p.starts_with(f.as_str()).then(|| p.clone())
                    }
                })
                .collect()
        };
        if narrowed.is_empty() {
            return Err(PyValueError::new_err(format!(
                "filter `{f}` selects none of the operations {}",
                ops.join(", ")
            )));
        }
        for n in narrowed {
            if !kept.contains(&n) {
                kept.push(n);
            }
        }
    }
    Ok(Selection::new(kept))
}

/// The cases `profile` selects among `ops` and `filters`, drawn from `seed` as it declares them.
#[pyfunction]
#[pyo3(signature = (profile, ops=Vec::new(), filters=Vec::new(), seed=0))]
fn cases(profile: &str, ops: Vec<String>, filters: Vec<String>, seed: u64) -> PyResult<Vec<PyCase>> {
    let profile = Arc::new(parse_profile(profile)?);
    let selection = selection(ops, filters)?;
    let all = selection.cases(seed).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let drawn = selection.drawn_for(seed, &profile).map_err(|_| {
        PyValueError::new_err(format!(
            "the profile selects none of the {} cases of `{selection}` (each is outside what it declares)",
            all.len()
        ))
    })?;
    Ok(drawn.into_iter().map(|(_, case)| PyCase::new(case, profile.clone())).collect())
}

/// How many kernel calls are under way (a call that timed out runs on in its thread).
#[pyfunction]
fn in_flight() -> usize {
    kernel::IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

/// The storage dtypes the suite draws cases in.
#[pyfunction]
fn dtypes() -> Vec<&'static str> {
    DType::ALL.iter().filter(|d| **d != DType::F64).map(|d| d.name()).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCase>()?;
    m.add_class::<run::PyRun>()?;
    m.add_class::<run::PyStability>()?;
    m.add_function(wrap_pyfunction!(cases, m)?)?;
    m.add_function(wrap_pyfunction!(dtypes, m)?)?;
    m.add_function(wrap_pyfunction!(in_flight, m)?)?;
    m.add_function(wrap_pyfunction!(pack::export_pack, m)?)?;
    m.add_function(wrap_pyfunction!(pack::certify_pack, m)?)?;
    m.add_function(wrap_pyfunction!(pack::write_outputs, m)?)?;
    m.add_function(wrap_pyfunction!(pack::pack_cases, m)?)?;
    m.add("SUITE_VERSION", gqla_conformance::SUITE_VERSION)?;
    Ok(())
}
