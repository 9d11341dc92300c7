//! The interface a kernel under test implements, and the output buffers it writes.
//!
//! Outputs are destination-passing: the harness allocates every output tensor inside a larger
//! buffer whose margins hold a canary pattern, and fills the tensor itself with NaN. A kernel that
//! writes outside its tensor disturbs the canaries (OUT_OF_BOUNDS_WRITE); one that leaves part of
//! its output unwritten leaves NaN where the reference is finite (NONFINITE_MISMATCH).

use crate::case::{Case, Op};
use crate::definition::TensorName;
use crate::inputs::CaseInputs;
use crate::profile::Profile;
use serde::Serialize;

/// The canary bit pattern (a quiet NaN with a payload no arithmetic produces).
pub const CANARY: u32 = 0x7fc0_ca7e;
/// Canary elements before and after every output tensor.
pub const MARGIN: usize = 64;

/// One output tensor inside its canary-guarded buffer.
#[derive(Clone, Debug)]
pub struct OutputTensor {
    pub name: TensorName,
    pub shape: Vec<usize>,
    buf: Vec<f32>,
}

impl OutputTensor {
    pub fn new(name: TensorName, shape: Vec<usize>) -> Self {
        let n: usize = shape.iter().product();
        let mut buf = vec![f32::from_bits(CANARY); n + 2 * MARGIN];
        buf[MARGIN..MARGIN + n].fill(f32::NAN);
        Self { name, shape, buf }
    }
    pub fn len(&self) -> usize {
        self.buf.len() - 2 * MARGIN
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn region(&self) -> &[f32] {
        &self.buf[MARGIN..self.buf.len() - MARGIN]
    }
    pub fn region_mut(&mut self) -> &mut [f32] {
        let end = self.buf.len() - MARGIN;
        &mut self.buf[MARGIN..end]
    }
    /// The whole buffer and the offset of the tensor in it: for kernels that copy a device buffer
    /// (with margins) back, so that their out-of-bounds writes come back too.
    pub fn with_margins_mut(&mut self) -> (&mut [f32], usize) {
        (&mut self.buf, MARGIN)
    }
    /// Whether every canary is untouched (compared bitwise).
    pub fn canaries_intact(&self) -> bool {
        let n = self.buf.len();
        self.buf[..MARGIN]
            .iter()
            .chain(&self.buf[n - MARGIN..])
            .all(|v| v.to_bits() == CANARY)
    }
}

/// All output tensors of a case.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub tensors: Vec<OutputTensor>,
}

impl Outputs {
    /// The outputs `case` defines under `profile`: `out` [B, s_q, H, d_out], and `lse`
    /// [B, s_q, H] when the profile says the kernel writes one, for decode ops; `k` [tokens, G·d_n]
    /// and `v` [tokens, G·d_v] (sequences in order) for cache.expand.
    pub fn for_case(case: &Case, profile: &Profile) -> Self {
        let (b, sq, h) = (case.batch(), case.sq(), case.h());
        let tensors = match case.op() {
            Op::CacheExpand => {
                let tokens: usize = (0..case.batch()).map(|b| case.seq_len(b)).sum();
                vec![
                    OutputTensor::new(TensorName::K, vec![tokens, case.g() * case.dn()]),
                    OutputTensor::new(TensorName::V, vec![tokens, case.g() * case.dv()]),
                ]
            }
            _ => {
                let mut t = vec![OutputTensor::new(TensorName::Out, vec![b, sq, h, case.out_width()])];
                if profile.lse.written().is_some() {
                    t.push(OutputTensor::new(TensorName::Lse, vec![b, sq, h]));
                }
                t
            }
        };
        Self { tensors }
    }
    /// Whether a tensor called `name` is expected.
    pub fn has(&self, name: TensorName) -> bool {
        self.tensors.iter().any(|t| t.name == name)
    }
    /// Output `name`; an error if the case (under this profile) has none: a kernel that writes
    /// an LSE its profile does not declare gets RUNTIME_ERROR, not a panic.
    pub fn get(&self, name: TensorName) -> Result<&OutputTensor, MissingOutput> {
        self.tensors.iter().find(|t| t.name == name).ok_or(MissingOutput(name))
    }
    pub fn get_mut(&mut self, name: TensorName) -> Result<&mut OutputTensor, MissingOutput> {
        self.tensors.iter_mut().find(|t| t.name == name).ok_or(MissingOutput(name))
    }
}

/// An output tensor the case does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this case has no output `{0}` (an LSE is an output only when the profile declares one)")]
pub struct MissingOutput(pub TensorName);

impl From<MissingOutput> for KernelError {
    fn from(e: MissingOutput) -> Self {
        KernelError::Runtime(e.to_string())
    }
}

/// Who the kernel is, recorded in certificates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelIdentity {
    pub name: String,
    pub version: String,
    pub description: String,
}

/// How a kernel fails a case. Either way the case is RUNTIME_ERROR: what a kernel does not
/// support is declared in its [`Profile`] before anything runs, never discovered at run time.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelError {
    /// The kernel refused a case its profile selects ("unsupported" at run time).
    Declined(String),
    /// The kernel failed at run time.
    Runtime(String),
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::Declined(why) => write!(f, "declined at run time a case its profile selects: {why}"),
            KernelError::Runtime(why) => f.write_str(why),
        }
    }
}

/// A decode kernel under test.
pub trait Kernel: Send + Sync {
    fn identity(&self) -> KernelIdentity;
    /// What the kernel supports and which conventions it follows (see [`crate::profile`]).
    fn profile(&self) -> Profile;
    /// What the certificate should record about where the kernel runs (device, driver, compiler
    /// options), beyond the host facts the harness detects itself.
    fn environment(&self) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::new()
    }
    /// Compute the case's outputs into `outputs`. The inputs are the kernel's own copy, mutable
    /// as a C or CUDA kernel's pointers are; the harness compares them with the originals after
    /// the call, and a kernel that writes to them gets INPUT_MUTATED.
    fn run(&self, inputs: &mut CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError>;
}
