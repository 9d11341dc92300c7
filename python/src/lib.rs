//! `gqla._native`: the conformance suite for kernels written in Python. A thin binding: the cases,
//! their inputs, the f64 and naive references, the profile, the judge and the certificates are the
//! Rust ones ([`gqla_conformance`]); the `gqla` Python package (python/gqla) turns the tensors
//! crossing here (name, dtype, shape, little-endian bytes) into arrays.

use gqla_conformance::case::{Case, DType};
use gqla_conformance::certify::{report, run_cases, RunInfo};
use gqla_conformance::inputs::CaseInputs;
use gqla_conformance::kernel::{Kernel, KernelError, KernelIdentity, Outputs, TensorBytes};
use gqla_conformance::pack::input_tensors;
use gqla_conformance::reference::{compute, Precision};
use gqla_conformance::report::SeedOrigin;
use gqla_conformance::selection::fresh_seed;
use gqla_conformance::{Profile, Selection};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyTuple};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

fn dtype_name(d: safetensors::Dtype) -> &'static str {
    match d {
        safetensors::Dtype::BF16 => "bf16",
        safetensors::Dtype::F16 => "f16",
        safetensors::Dtype::F32 => "f32",
        safetensors::Dtype::F64 => "f64",
        safetensors::Dtype::I32 => "i32",
        _ => "other",
    }
}

/// A float dtype a kernel may return, by its name in numpy (and ml_dtypes); None for others.
fn float_dtype(name: &str) -> Option<safetensors::Dtype> {
    Some(match name {
        "float32" | "f32" => safetensors::Dtype::F32,
        "float16" | "f16" => safetensors::Dtype::F16,
        "bfloat16" | "bf16" => safetensors::Dtype::BF16,
        "float64" | "f64" => safetensors::Dtype::F64,
        _ => return None,
    })
}

/// One case of the suite, as a kernel sees it: its parameters, and (on demand) its inputs and
/// references.
#[pyclass(name = "Case", module = "gqla._native", frozen)]
struct PyCase {
    case: Case,
    profile: Arc<Profile>,
    /// The inputs a kernel is handed (held while it runs); drawn from the case id otherwise.
    inputs: Option<Arc<CaseInputs>>,
}

impl PyCase {
    fn drawn_inputs(&self) -> Arc<CaseInputs> {
        self.inputs.clone().unwrap_or_else(|| Arc::new(CaseInputs::generate(&self.case)))
    }
}

#[pymethods]
impl PyCase {
    /// The case id (`op:param=value;...`), the suite's name for it.
    #[getter]
    fn id(&self) -> String {
        self.case.to_string()
    }
    #[getter]
    fn op(&self) -> &'static str {
        self.case.op().name()
    }
    /// The storage dtype of its floating-point inputs: "f32", "bf16" or "f16".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.case.dtype().name()
    }
    #[getter]
    fn batch(&self) -> usize {
        self.case.batch()
    }
    #[getter]
    fn heads(&self) -> usize {
        self.case.h()
    }
    #[getter]
    fn groups(&self) -> usize {
        self.case.g()
    }
    #[getter]
    fn d_c(&self) -> usize {
        self.case.dc()
    }
    #[getter]
    fn d_n(&self) -> usize {
        self.case.dn()
    }
    #[getter]
    fn d_r(&self) -> usize {
        self.case.dr()
    }
    #[getter]
    fn d_v(&self) -> usize {
        self.case.dv()
    }
    /// Query tokens per sequence (decode operations).
    #[getter]
    fn s_q(&self) -> usize {
        self.case.sq()
    }
    /// Keys per sequence.
    #[getter]
    fn seq_lens(&self) -> Vec<usize> {
        (0..self.case.batch()).map(|b| self.case.seq_len(b)).collect()
    }
    /// Tokens per page; None for a contiguous cache.
    #[getter]
    fn page_size(&self) -> Option<usize> {
        self.case.page()
    }
    /// The softmax scale: an f32, exactly (a Python float holds every f32).
    #[getter]
    fn scale(&self) -> f64 {
        self.case.scale() as f64
    }
    /// The softmax scale's f32 bits.
    #[getter]
    fn scale_bits(&self) -> u32 {
        self.case.scale().to_bits()
    }
    /// The KV splits the case requests; None when the kernel chooses.
    #[getter]
    fn splits(&self) -> Option<usize> {
        self.case.splits()
    }
    /// "nan" or "garbage": what fills memory a correct kernel never reads.
    #[getter]
    fn poison(&self) -> String {
        format!("{:?}", self.case.poison()).to_lowercase()
    }
    #[getter]
    fn seed(&self) -> u64 {
        self.case.seed()
    }
    /// The GQA path's cache layout: "once" (one rope key beside the groups') or "per_group".
    #[getter]
    fn rope_layout(&self) -> String {
        serde_json::to_value(self.case.layout())
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .expect("a layout serializes as its name")
    }
    /// Every parameter as a vector pack's manifest lists it (`params`), as JSON text.
    fn params_json(&self) -> String {
        serde_json::to_string(&gqla_conformance::pack::CaseParams::of(&self.case)).expect("parameters serialize")
    }

    /// The input tensors, as the tensor table (definitions.json) lists them: a list of
    /// (name, dtype, shape, bytearray) with little-endian values.
    fn input_tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let inputs = self.drawn_inputs();
        let items: Vec<Bound<'py, PyTuple>> = input_tensors(&inputs)
            .into_iter()
            .map(|(name, t)| {
                let data = PyByteArray::new(py, &t.bytes);
                PyTuple::new(
                    py,
                    [
                        name.into_pyobject(py)?.into_any(),
                        dtype_name(t.dtype).into_pyobject(py)?.into_any(),
                        t.shape.into_pyobject(py)?.into_any(),
                        data.into_any(),
                    ],
                )
            })
            .collect::<PyResult<_>>()?;
        PyList::new(py, items)
    }

    /// The outputs a kernel returns under its profile: a list of (name, shape).
    fn output_shapes(&self) -> Vec<(String, Vec<usize>)> {
        Outputs::for_case(&self.case, &self.profile)
            .tensors
            .iter()
            .map(|t| (t.name.to_string(), t.shape.clone()))
            .collect()
    }

    /// The references on this case's inputs: {output: (shape, truth, naive)}, each a bytes of
    /// little-endian f64; the truth is exact (f64), naive the same-precision reference the
    /// tolerance compares a kernel's error with.
    fn reference<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inputs = self.drawn_inputs();
        let dtype = self.case.dtype();
        let (truth, naive) = py.detach(|| (compute(&inputs, Precision::Exact), compute(&inputs, Precision::Naive(dtype))));
        let shapes: BTreeMap<String, Vec<usize>> = Outputs::for_case(&self.case, &Profile::everything())
            .tensors
            .iter()
            .map(|t| (t.name.to_string(), t.shape.clone()))
            .collect();
        let out = PyDict::new(py);
        for ((name, t), (_, n)) in truth.iter().zip(&naive) {
            let bytes = |v: &[f64]| PyBytes::new(py, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
            let shape = shapes.get(&name.to_string()).cloned().unwrap_or_else(|| vec![t.len()]);
            out.set_item(name.to_string(), (shape, bytes(t), bytes(n)))?;
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!("<gqla case {}>", self.case)
    }
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
        .map(|(_, case)| PyCase {
            case,
            profile: profile.clone(),
            inputs: None,
        })
        .collect())
}

/// A Python callable as a kernel: called with the case, it returns its output tensors as a list
/// of (name, dtype, shape, bytes-like).
struct PyKernel {
    call: Py<PyAny>,
    identity: KernelIdentity,
    profile: Arc<Profile>,
}

impl PyKernel {
    fn call(&self, py: Python<'_>, inputs: &CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        let case = PyCase {
            case: inputs.case.clone(),
            profile: self.profile.clone(),
            inputs: Some(Arc::new(inputs.clone())),
        };
        // The arrays the kernel is handed, with their bytes, to compare after the call.
        let handed: Vec<Handed<'_>> = input_tensors(inputs)
            .into_iter()
            .map(|(name, t)| Handed {
                array: PyByteArray::new(py, &t.bytes),
                name,
                dtype: dtype_name(t.dtype),
                shape: t.shape,
                original: t.bytes,
            })
            .collect();
        let tensors = PyList::new(
            py,
            handed.iter().map(|h| (h.name.as_str(), h.dtype, h.shape.clone(), h.array.clone())),
        )
        .map_err(runtime)?;
        let returned = self
            .call
            .call1(py, (Bound::new(py, case).map_err(runtime)?, tensors))
            .map_err(|e| raised(py, e))?;
        // SAFETY of reading: the bytearrays are ours and no other thread runs Python here.
        if let Some(h) = handed.iter().find(|h| unsafe { h.array.as_bytes() } != h.original.as_slice()) {
            return Err(KernelError::InputsWritten(format!(
                "the kernel wrote to its input `{}` (its bytes differ from the ones it was handed)",
                h.name
            )));
        }
        // The package's adapter hands back the tensors, or why the kernel's return value is none.
        if let Ok(why) = returned.extract::<String>(py) {
            return Err(KernelError::BadOutputs(why));
        }
        let returned: Vec<(String, String, Vec<usize>, Vec<u8>)> = returned
            .extract(py)
            .map_err(|e| KernelError::BadOutputs(format!("the kernel's outputs are not tensors: {e}")))?;
        if let Some((name, dtype, ..)) = returned.iter().find(|(_, dtype, ..)| float_dtype(dtype).is_none()) {
            return Err(KernelError::BadOutputs(format!(
                "the kernel's outputs: tensor `{name}` has dtype {dtype}, expected a float dtype"
            )));
        }
        outputs
            .fill("the kernel's outputs", |name| {
                let (_, dtype, shape, data) = returned.iter().find(|(n, ..)| n == name)?;
                Some(TensorBytes {
                    shape: shape.clone(),
                    dtype: float_dtype(dtype).unwrap_or(safetensors::Dtype::I64),
                    data,
                })
            })
            .map_err(|status| KernelError::BadOutputs(status.cause()))
    }
}

/// One input tensor as handed to a Python kernel.
struct Handed<'py> {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    original: Vec<u8>,
    array: Bound<'py, PyByteArray>,
}

fn runtime(e: impl std::fmt::Display) -> KernelError {
    KernelError::Runtime(e.to_string())
}

/// A Python exception, as the last line of its traceback (`ValueError: message`).
fn raised(py: Python<'_>, e: PyErr) -> KernelError {
    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
    let message = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    KernelError::Runtime(if message.is_empty() { kind } else { format!("{kind}: {message}") })
}

impl Kernel for PyKernel {
    fn identity(&self) -> KernelIdentity {
        self.identity.clone()
    }
    fn profile(&self) -> Profile {
        (*self.profile).clone()
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        Python::attach(|py| self.call(py, inputs, outputs))
    }
}

/// Set while a certification runs in this process.
static CERTIFYING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Certify a Python kernel: `kernel(case, tensors)` on every case of the selection, as the
/// profile declares; the certificate (report.json, report.md, junit.xml) written to `out` when
/// given. Returns report.json's text and the verdict line.
#[pyfunction]
#[pyo3(signature = (kernel, profile, name, ops=Vec::new(), filters=Vec::new(), seed=None, out=None, version=String::new(), description=String::new(), timeout=600.0))]
#[allow(clippy::too_many_arguments)]
fn certify(
    py: Python<'_>,
    kernel: Py<PyAny>,
    profile: &str,
    name: String,
    ops: Vec<String>,
    filters: Vec<String>,
    seed: Option<u64>,
    out: Option<PathBuf>,
    version: String,
    description: String,
    timeout: f64,
) -> PyResult<(String, String)> {
    let profile = Arc::new(parse_profile(profile)?);
    let selection = selection(ops, filters)?;
    let chosen = seed.unwrap_or_else(fresh_seed);
    let cases = selection.cases(chosen).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let timeout = Duration::try_from_secs_f64(timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| PyValueError::new_err(format!("timeout {timeout}: expected a positive number of seconds")))?;
    // A kernel that certifies from inside a certification would nest runs on ever more threads.
    if CERTIFYING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(PyRuntimeError::new_err(
            "gqla.certify called while a certification runs (from inside a kernel?)",
        ));
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            CERTIFYING.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _done = Done;
    let kernel: Arc<dyn Kernel> = Arc::new(PyKernel {
        call: kernel,
        identity: KernelIdentity {
            name,
            version,
            description,
        },
        profile,
    });
    let run = RunInfo {
        filter: &selection.to_string(),
        seed: chosen,
        origin: SeedOrigin::of_run(chosen, seed.is_some()),
        timeout,
    };
    let report = py.detach(|| {
        let (mut results, _) = run_cases(std::slice::from_ref(&kernel), &cases, run.timeout, false, |_| {});
        report(&kernel, results.remove(0), &run, |_| {})
    });
    if let Some(dir) = out {
        report
            .write(&dir)
            .map_err(|e| PyRuntimeError::new_err(format!("cannot write the certificate to {}: {e}", dir.display())))?;
    }
    let json = serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok((json, report.verdict_line()))
}

/// The storage dtypes the suite draws cases in.
#[pyfunction]
fn dtypes() -> Vec<&'static str> {
    DType::ALL.iter().filter(|d| **d != DType::F64).map(|d| d.name()).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCase>()?;
    m.add_function(wrap_pyfunction!(cases, m)?)?;
    m.add_function(wrap_pyfunction!(certify, m)?)?;
    m.add_function(wrap_pyfunction!(dtypes, m)?)?;
    m.add("SUITE_VERSION", gqla_conformance::SUITE_VERSION)?;
    Ok(())
}
