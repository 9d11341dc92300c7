//! `gqla._native.Case`: one case of the suite as a kernel sees it.

use gqla_conformance::case::Case;
use gqla_conformance::inputs::CaseInputs;
use gqla_conformance::kernel::Outputs;
use gqla_conformance::pack::input_tensors;
use gqla_conformance::reference::{compute, Precision};
use gqla_conformance::Profile;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyTuple};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn dtype_name(d: safetensors::Dtype) -> &'static str {
    match d {
        safetensors::Dtype::BF16 => "bf16",
        safetensors::Dtype::F16 => "f16",
        safetensors::Dtype::F32 => "f32",
        safetensors::Dtype::F64 => "f64",
        safetensors::Dtype::I32 => "i32",
        safetensors::Dtype::U8 => "u8",
        _ => "other",
    }
}

/// A float dtype a kernel may return, by its name in numpy (and ml_dtypes); None for others.
pub fn float_dtype(name: &str) -> Option<safetensors::Dtype> {
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
pub struct PyCase {
    pub case: Case,
    pub profile: Arc<Profile>,
    /// The inputs a kernel is handed (held while it runs); drawn from the case id otherwise.
    pub inputs: Option<Arc<CaseInputs>>,
}

impl PyCase {
    pub fn new(case: Case, profile: Arc<Profile>) -> Self {
        Self {
            case,
            profile,
            inputs: None,
        }
    }

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
    /// Per sequence and query row, how many keys it sees (the first ones of its sequence): the
    /// bottom-right causal rule; 0 for a padding row.
    fn visible(&self) -> Vec<Vec<usize>> {
        (0..self.case.batch())
            .map(|b| (0..self.case.sq()).map(|j| self.case.visible(b, j)).collect())
            .collect()
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
        // The answers are for debugging a kernel, not for a kernel to return.
        if crate::kernel::IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "case.reference() is refused while a kernel is being certified: the references are for debugging, not for kernels to return",
            ));
        }
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
