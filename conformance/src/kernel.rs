//! The interface a kernel under test implements, and the output buffers it writes.
//!
//! Outputs are destination-passing: the harness allocates every output tensor inside a larger
//! buffer whose margins hold a canary pattern, and fills the tensor itself with NaN. A kernel that
//! writes outside its tensor disturbs the canaries (OUT_OF_BOUNDS_WRITE); one that leaves part of
//! its output unwritten leaves NaN where the reference is finite (NONFINITE_MISMATCH).

use crate::case::{Case, Op};
use crate::inputs::CaseInputs;
use serde::Serialize;

/// The canary bit pattern (a quiet NaN with a payload no arithmetic produces).
pub const CANARY: u32 = 0x7fc0_ca7e;
/// Canary elements before and after every output tensor.
pub const MARGIN: usize = 64;

/// One output tensor inside its canary-guarded buffer.
#[derive(Clone, Debug)]
pub struct OutputTensor {
    pub name: &'static str,
    pub shape: Vec<usize>,
    buf: Vec<f32>,
}

impl OutputTensor {
    pub fn new(name: &'static str, shape: Vec<usize>) -> Self {
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
    /// The outputs `case` defines: `out` [B, s_q, H, d_out] and `lse` [B, s_q, H] for decode ops;
    /// `k` [tokens, G·d_n] and `v` [tokens, G·d_v] (sequences in order) for cache.expand.
    pub fn for_case(case: &Case) -> Self {
        let (b, sq, h) = (case.batch(), case.sq, case.h);
        let tensors = match case.op {
            Op::CacheExpand => {
                let tokens: usize = (0..case.batch()).map(|b| case.seq_len(b)).sum();
                vec![
                    OutputTensor::new("k", vec![tokens, case.g * case.dn]),
                    OutputTensor::new("v", vec![tokens, case.g * case.dv]),
                ]
            }
            _ => vec![
                OutputTensor::new("out", vec![b, sq, h, case.out_width()]),
                OutputTensor::new("lse", vec![b, sq, h]),
            ],
        };
        Self { tensors }
    }
    pub fn get(&self, name: &str) -> &OutputTensor {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no output `{name}`"))
    }
    pub fn get_mut(&mut self, name: &str) -> &mut OutputTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no output `{name}`"))
    }
}

/// Who the kernel is, recorded in certificates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelIdentity {
    pub name: String,
    pub version: String,
    pub description: String,
}

/// How a kernel declines or fails a case.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelError {
    /// The kernel declares it does not support this case (NOT_SUPPORTED, not a failure).
    NotSupported(String),
    /// The kernel failed at run time.
    Runtime(String),
}

/// A decode kernel under test.
pub trait Kernel: Send + Sync {
    fn identity(&self) -> KernelIdentity;
    /// What the certificate should record about where the kernel runs (device, driver, compiler
    /// options), beyond the host facts the harness detects itself.
    fn environment(&self) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::new()
    }
    /// Compute the case's outputs into `outputs`.
    fn run(&self, inputs: &CaseInputs, outputs: &mut Outputs) -> Result<(), KernelError>;
}
