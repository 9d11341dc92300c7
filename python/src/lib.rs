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

/// The selection of `ops` (operation names, each matched exactly) and id prefixes `filters`.
fn selection(ops: Vec<String>, filters: Vec<String>) -> PyResult<Selection> {
    let known: Vec<&str> = gqla_conformance::case::Op::ALL.iter().map(|o| o.name()).collect();
    if let Some(bad) = ops.iter().find(|o| !known.contains(&o.as_str())) {
        return Err(PyValueError::new_err(format!(
            "unknown operation `{bad}`: expected one of {}",
            known.join(", ")
        )));
    }
    Ok(Selection::new(ops.into_iter().map(|o| format!("{o}:")).chain(filters)))
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
    Ok(drawn
        .into_iter()
        .map(|(_, case)| PyCase::new(case, profile.clone()))
        .collect())
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
    m.add_function(wrap_pyfunction!(pack::export_pack, m)?)?;
    m.add_function(wrap_pyfunction!(pack::certify_pack, m)?)?;
    m.add_function(wrap_pyfunction!(pack::write_outputs, m)?)?;
    m.add_function(wrap_pyfunction!(pack::pack_cases, m)?)?;
    m.add("SUITE_VERSION", gqla_conformance::SUITE_VERSION)?;
    Ok(())
}
