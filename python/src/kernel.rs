//! A Python callable as a [`Kernel`]: the suite hands it a case and its inputs, and reads back
//! the tensors it returns.

use crate::case::{dtype_name, float_dtype, PyCase};
use gqla_conformance::inputs::CaseInputs;
use gqla_conformance::kernel::{Kernel, KernelError, KernelIdentity, Outputs, TensorBytes};
use gqla_conformance::pack::input_tensors;
use gqla_conformance::Profile;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyList};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Kernel calls under way: one that timed out goes on in its thread, and the interpreter must not
/// finalize under it (the package waits for them at exit).
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A Python callable as a kernel: called with the case, it returns its output tensors as a list
/// of (name, dtype, shape, bytes-like).
pub struct PyKernel {
    pub call: Py<PyAny>,
    pub identity: KernelIdentity,
    pub profile: Arc<Profile>,
    /// Library versions and device, copied into the certificate.
    pub environment: std::collections::BTreeMap<String, String>,
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
    fn environment(&self) -> std::collections::BTreeMap<String, String> {
        self.environment.clone()
    }
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError> {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let r = Python::attach(|py| self.call(py, inputs, outputs));
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        r
    }
}
