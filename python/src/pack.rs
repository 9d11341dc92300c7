//! Vector packs from Python: export one, list its cases for a Python kernel to run (on a machine
//! that has the package but not the command line), write a case's outputs, and certify the
//! outputs written for a pack. Every step is the command line's own ([`gqla_conformance::pack`]).

use crate::case::{float_dtype, PyCase};
use crate::{parse_profile, selection};
use gqla_conformance::inputs::CaseInputs;
use gqla_conformance::pack::{certify_pack as certify, export, inputs_file, read_manifest, sha256_hex, PackRun};
use gqla_conformance::Profile;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

fn refused(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Write the pack of the cases `ops` and `filters` select (as `profile` draws them, when given)
/// from `seed` into `dir` (absent or empty); returns how many cases it holds.
#[pyfunction]
#[pyo3(signature = (dir, profile=None, ops=Vec::new(), filters=Vec::new(), seed=0))]
pub fn export_pack(
    py: Python<'_>,
    dir: PathBuf,
    profile: Option<&str>,
    ops: Vec<String>,
    filters: Vec<String>,
    seed: u64,
) -> PyResult<usize> {
    let profile = profile.map(parse_profile).transpose()?;
    let selection = selection(ops, filters)?;
    let cases = match &profile {
        Some(p) => selection.drawn_for(seed, p),
        None => selection.indexed_cases(seed),
    }
    .map_err(refused)?;
    let prefixes = selection.prefixes().to_vec();
    let manifest = py
        .detach(|| export(&cases, seed, &prefixes, profile.as_ref(), &dir, &mut |_| {}))
        .map_err(refused)?;
    Ok(manifest.cases.len())
}

/// A case of a pack, the name of its outputs file, and why the profile excludes it.
type PackEntry = (PyCase, String, Option<String>);

/// A pack's cases for a kernel with `profile` (the pack's own when it was drawn for one): each
/// case with the name of its outputs file and why the profile excludes it (None: run it).
#[pyfunction]
pub fn pack_cases(pack: PathBuf, profile: &str) -> PyResult<Vec<PackEntry>> {
    let manifest = read_manifest(&pack).map_err(refused)?;
    let kernel = parse_profile(profile)?;
    if manifest.profile.as_ref().is_some_and(|p| *p != kernel) {
        return Err(refused(format!(
            "{}: the pack was drawn for another profile than the kernel's: export one for it (gqla.export_pack(dir, profile=...))",
            pack.display()
        )));
    }
    let profile = Arc::new(kernel);
    manifest
        .cases
        .into_iter()
        .map(|pc| {
            let case: gqla_conformance::Case = pc
                .id
                .parse()
                .map_err(|e| refused(format!("{}: case `{}`: {e}", pack.display(), pc.id)))?;
            if manifest.profile.is_none() && profile.draw(&case) != case {
                return Err(refused(format!(
                    "{}: the kernel's profile draws `{}` otherwise (at the scale it fixes): export a pack for the profile \
                     (gqla.export_pack(dir, profile=...))",
                    pack.display(),
                    pc.id
                )));
            }
            let excluded = profile.excludes(&case).map(|w| w.to_string());
            // The kernel runs on inputs this package draws from the id: they must be the ones the
            // pack holds (a package of another build draws others, and its outputs would be
            // judged against the pack's).
            if excluded.is_none() {
                let drawn = sha256_hex(&inputs_file(&CaseInputs::generate(&case)));
                if drawn != pc.inputs_sha256 {
                    return Err(refused(format!(
                        "{}: case `{}`: this gqla package (suite {}) draws inputs with SHA-256 {drawn}, but the pack \
                         lists {}: the pack was exported by another build; export it again with this one",
                        pack.display(),
                        pc.id,
                        gqla_conformance::lattice::SUITE_VERSION,
                        pc.inputs_sha256
                    )));
                }
            }
            Ok((PyCase::new(case, profile.clone()), pc.outputs, excluded))
        })
        .collect()
}

/// Write a case's outputs, (name, dtype, shape, little-endian bytes) each, as the safetensors
/// file a pack kernel leaves (written to a temporary file, then renamed).
#[pyfunction]
pub fn write_outputs(path: PathBuf, tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>) -> PyResult<()> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            let dtype = float_dtype(dtype).ok_or_else(|| refused(format!("output `{name}` has dtype {dtype}, expected a float dtype")))?;
            let view =
                safetensors::tensor::TensorView::new(dtype, shape.clone(), data).map_err(|e| refused(format!("output `{name}`: {e}")))?;
            Ok((name.as_str(), view))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(refused)?;
    gqla_files::write_file(&path, &bytes).map_err(|e| PyOSError::new_err(e.to_string()))
}

/// Certify the outputs written for a pack (`gqla certify --kernel external:PACK --outputs
/// OUTPUTS`): judged by `profile` when given, else by the outputs' kernel.json; the certificate
/// written to `out` when given. Returns report.json's text and the verdict line.
#[pyfunction]
#[pyo3(signature = (pack, outputs=None, profile=None, filters=Vec::new(), seed=None, out=None))]
pub fn certify_pack(
    py: Python<'_>,
    pack: PathBuf,
    outputs: Option<PathBuf>,
    profile: Option<&str>,
    filters: Vec<String>,
    seed: Option<u64>,
    out: Option<PathBuf>,
) -> PyResult<(String, String)> {
    let outputs = outputs.unwrap_or_else(|| pack.clone());
    let profile: Option<Profile> = profile.map(parse_profile).transpose()?;
    if let Some(dir) = &out {
        gqla_files::write::note_input_dir(&pack);
        gqla_files::write::note_input_dir(&outputs);
        if let Err(e) = gqla_files::write::check_output_dir(dir) {
            gqla_files::write::forget_inputs();
            return Err(refused(e));
        }
    }
    let run = PackRun {
        pack: &pack,
        outputs: &outputs,
        profile,
        filters: &filters,
        seed,
    };
    let done = py
        .detach(|| certify(&run, |_| {}, |_| {}))
        .map_err(refused)
        .and_then(|(report, _)| {
            if let Some(dir) = &out {
                report
                    .write(dir)
                    .map_err(|e| PyOSError::new_err(format!("cannot write the certificate to {}: {e}", dir.display())))?;
            }
            Ok(report)
        });
    // The pack and its outputs were this call's inputs, not the next one's.
    gqla_files::write::forget_inputs();
    let report = done?;
    let text = serde_json::to_string(&report).expect("reports serialize");
    Ok((text, report.verdict_line()))
}
