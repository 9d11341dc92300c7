//! Vector packs: the out-of-process path for PyTorch, Triton and CUDA C++ kernels.
//!
//! `export` writes `manifest.json`, `definitions.json` (every operation's contract) and one
//! `<n>.inputs.safetensors` per case (readable by the Python `safetensors` package). Inputs are
//! stored in the case dtype (exact: they were drawn in it); `seq_lens`, `block_table` and
//! `num_splits` (when the case requests a split count) as I32; `scale` as an F32 scalar. The
//! author's script writes `<n>.outputs.safetensors` with the case's output tensors (any float
//! dtype) into the pack, and optionally `kernel.json` (name, version, description, environment);
//! `judge` certifies them. Inputs are regenerated from the case ids, so a pack cannot be tampered
//! with to make a case easier.

use crate::case::{Case, Dtype};
use crate::inputs::{CaseInputs, Paging};
use crate::kernel::Outputs;
use crate::lattice::SUITE_VERSION;
use crate::runner::{CaseResult, Prepared};
use crate::verdict::Status;
use gqla_reference::hf::tensors::{decode_floats, write_tensors, RawTensor};
use safetensors::{Dtype as StDtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// One case of a pack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackCase {
    pub id: String,
    pub inputs: String,
    pub outputs: String,
    /// Output tensor names and shapes the kernel must write.
    pub expected_outputs: Vec<(String, Vec<usize>)>,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub suite_version: String,
    /// The file with every operation's definition (axes, tensors, dtype rules, conventions).
    pub definitions: String,
    pub cases: Vec<PackCase>,
}

/// `kernel.json`, optionally written by the author's script: who produced the outputs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Device, driver, library versions: copied into the certificate.
    #[serde(default)]
    pub environment: std::collections::BTreeMap<String, String>,
}

/// Errors about a pack as a whole (a case's own problems become its status).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: malformed manifest: {message}")]
    Manifest { path: String, message: String },
}

fn floats(dtype: Dtype, shape: Vec<usize>, values: &[f32]) -> RawTensor {
    RawTensor::encode(dtype.storage(), shape, values.iter().map(|v| *v as f64))
}

fn ints(shape: Vec<usize>, values: &[i32]) -> RawTensor {
    RawTensor {
        dtype: StDtype::I32,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> PackError {
    PackError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Write a file via a temp file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PackError> {
    gqla_reference::hf::tensors::write_atomic(path, bytes).map_err(|e| io(path, e))
}

/// The input tensors of a case, as the pack stores them.
fn input_tensors(inp: &CaseInputs) -> Vec<(String, RawTensor)> {
    let c = &inp.case;
    let mut t = Vec::new();
    if !inp.q.is_empty() {
        t.push(("q".to_string(), floats(c.dtype, vec![c.batch(), c.sq, c.h, c.q_width()], &inp.q)));
    }
    for comp in &inp.cache.components {
        let slots = inp.cache.slots();
        let shape = match &inp.cache.paging {
            Paging::Contiguous { capacity } => vec![c.batch(), *capacity, comp.width],
            Paging::Paged { page, num_pages, .. } => vec![*num_pages, *page, comp.width],
        };
        debug_assert_eq!(slots * comp.width, comp.data.len());
        t.push((comp.name.to_string(), floats(c.dtype, shape, &comp.data)));
    }
    let lens: Vec<i32> = inp.cache.seq_lens.iter().map(|&l| l as i32).collect();
    t.push(("seq_lens".to_string(), ints(vec![lens.len()], &lens)));
    if let Paging::Paged {
        max_pages, block_table, ..
    } = &inp.cache.paging
    {
        t.push(("block_table".to_string(), ints(vec![c.batch(), *max_pages], block_table)));
    }
    t.push(("scale".to_string(), floats(Dtype::F32, vec![], &[inp.scale])));
    if let Some(n) = c.splits {
        t.push(("num_splits".to_string(), ints(vec![], &[n as i32])));
    }
    if !inp.w_ukv.is_empty() {
        t.push(("w_ukv".to_string(), floats(c.dtype, vec![c.g * (c.dn + c.dv), c.dc], &inp.w_ukv)));
    }
    t
}

/// Write the pack of `cases` into `dir`.
pub fn export(cases: &[Case], dir: &Path) -> Result<Manifest, PackError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let definitions = serde_json::to_string_pretty(&crate::definition::all()).expect("definitions serialize") + "\n";
    write_atomic(&dir.join(DEFINITIONS), definitions.as_bytes())?;
    let mut manifest = Manifest {
        suite_version: SUITE_VERSION.into(),
        definitions: DEFINITIONS.into(),
        cases: Vec::new(),
    };
    for (n, case) in cases.iter().enumerate() {
        let inp = CaseInputs::generate(case);
        let tensors = input_tensors(&inp);
        let inputs = format!("{n:05}.inputs.safetensors");
        let meta = [("case".to_string(), case.to_string())].into_iter().collect();
        write_tensors(&dir.join(&inputs), tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta)).map_err(|e| io(dir, e))?;
        let expected_outputs = Outputs::for_case(case)
            .tensors
            .iter()
            .map(|t| (t.name.to_string(), t.shape.clone()))
            .collect();
        manifest.cases.push(PackCase {
            id: case.to_string(),
            inputs,
            outputs: format!("{n:05}.outputs.safetensors"),
            expected_outputs,
        });
    }
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n";
    write_atomic(&dir.join("manifest.json"), json.as_bytes())?;
    Ok(manifest)
}

/// The definitions file of a pack.
pub const DEFINITIONS: &str = "definitions.json";
/// The optional file in which the author's script names its kernel.
pub const KERNEL_INFO: &str = "kernel.json";

/// Read the pack's `kernel.json`, if the author's script wrote one.
pub fn read_kernel_info(dir: &Path) -> Result<Option<KernelInfo>, PackError> {
    let path = dir.join(KERNEL_INFO);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path, e)),
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| PackError::Manifest {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Read a pack's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, PackError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| PackError::Manifest {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if m.suite_version != SUITE_VERSION {
        return Err(PackError::Manifest {
            path: path.display().to_string(),
            message: format!("suite version {} (this tool certifies {SUITE_VERSION})", m.suite_version),
        });
    }
    for c in &m.cases {
        c.id.parse::<Case>().map_err(|e| PackError::Manifest {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(m)
}

/// Judge the outputs a kernel wrote into the pack, one case at a time.
pub fn judge(dir: &Path, manifest: &Manifest, mut on_case: impl FnMut(&CaseResult)) -> Vec<CaseResult> {
    manifest
        .cases
        .iter()
        .map(|pc| {
            let start = Instant::now();
            let case: Case = pc.id.parse().expect("validated with the manifest");
            let status = judge_case(dir, pc, &case);
            let r = CaseResult {
                id: pc.id.clone(),
                status,
                seconds: start.elapsed().as_secs_f64(),
            };
            on_case(&r);
            r
        })
        .collect()
}

fn judge_case(dir: &Path, pc: &PackCase, case: &Case) -> Status {
    let path = dir.join(&pc.outputs);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            return Status::RuntimeError {
                message: format!("{}: no outputs ({e})", path.display()),
            }
        }
    };
    let st = match SafeTensors::deserialize(&bytes) {
        Ok(st) => st,
        Err(e) => {
            return Status::RuntimeError {
                message: format!("{}: not a valid safetensors file: {e}", path.display()),
            }
        }
    };
    let mut outputs = Outputs::for_case(case);
    for t in outputs.tensors.iter_mut() {
        let Ok(view) = st.tensor(t.name) else {
            return Status::ShapeOrDtypeMismatch {
                detail: format!("{}: tensor `{}` missing (expected shape {:?})", path.display(), t.name, t.shape),
            };
        };
        if view.shape() != t.shape.as_slice() {
            return Status::ShapeOrDtypeMismatch {
                detail: format!(
                    "{}: tensor `{}` has shape {:?}, expected {:?}",
                    path.display(),
                    t.name,
                    view.shape(),
                    t.shape
                ),
            };
        }
        let Some(values) = decode_floats(view.dtype(), view.data()) else {
            return Status::ShapeOrDtypeMismatch {
                detail: format!(
                    "{}: tensor `{}` has dtype {:?}, expected a float dtype",
                    path.display(),
                    t.name,
                    view.dtype()
                ),
            };
        };
        t.region_mut().iter_mut().zip(&values).for_each(|(d, v)| *d = *v as f32);
    }
    Prepared::new(case).judge(&outputs)
}
