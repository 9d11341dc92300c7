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

/// The f32 canary bit pattern (a quiet NaN with a payload no arithmetic produces).
pub const CANARY: u32 = 0x7fc0_ca7e;
/// Canary elements before and after every output tensor.
pub const MARGIN: usize = 64;

/// An element type an output tensor holds, with its discipline: the margins hold [`CANARY`]s a
/// kernel must leave alone, and the tensor starts [`UNWRITTEN`], a value no correct kernel writes,
/// so an element the kernel skipped is never mistaken for one it wrote.
///
/// [`CANARY`]: Element::CANARY
/// [`UNWRITTEN`]: Element::UNWRITTEN
pub trait Element: Copy + std::fmt::Debug + Send + Sync + 'static {
    /// The name the tensor table gives the type.
    const NAME: &'static str;
    const CANARY: Self;
    const UNWRITTEN: Self;
    /// Bitwise equality (NaN payloads included).
    fn same_bits(self, other: Self) -> bool;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const CANARY: f32 = f32::from_bits(CANARY);
    /// NaN: the judge turns an unwritten element into a NONFINITE_MISMATCH.
    const UNWRITTEN: f32 = f32::NAN;
    fn same_bits(self, other: f32) -> bool {
        self.to_bits() == other.to_bits()
    }
}

/// Index outputs (a sparse indexer's top-k positions): indices are never negative.
impl Element for i32 {
    const NAME: &'static str = "i32";
    const CANARY: i32 = 0x7ca7_ca7e;
    const UNWRITTEN: i32 = i32::MIN + 0x0bad;
    fn same_bits(self, other: i32) -> bool {
        self == other
    }
}

/// Packed byte outputs (an FP8 e4m3 cache writer): 0x7f and 0xff are e4m3's NaNs, which a correct
/// quantizer of finite values never writes.
impl Element for u8 {
    const NAME: &'static str = "u8";
    const CANARY: u8 = 0xff;
    const UNWRITTEN: u8 = 0x7f;
    fn same_bits(self, other: u8) -> bool {
        self == other
    }
}

/// One output tensor of elements `T` inside its canary-guarded buffer.
#[derive(Clone, Debug)]
pub struct OutputTensor<T: Element = f32> {
    pub name: TensorName,
    pub shape: Vec<usize>,
    buf: Vec<T>,
}

impl<T: Element> OutputTensor<T> {
    pub fn new(name: TensorName, shape: Vec<usize>) -> Self {
        let n: usize = shape.iter().product();
        let mut buf = vec![T::CANARY; n + 2 * MARGIN];
        buf[MARGIN..MARGIN + n].fill(T::UNWRITTEN);
        Self { name, shape, buf }
    }
    pub fn len(&self) -> usize {
        self.buf.len() - 2 * MARGIN
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn region(&self) -> &[T] {
        &self.buf[MARGIN..self.buf.len() - MARGIN]
    }
    pub fn region_mut(&mut self) -> &mut [T] {
        let end = self.buf.len() - MARGIN;
        &mut self.buf[MARGIN..end]
    }
    /// The whole buffer and the offset of the tensor in it: for kernels that copy a device buffer
    /// (with margins) back, so that their out-of-bounds writes come back too.
    pub fn with_margins_mut(&mut self) -> (&mut [T], usize) {
        (&mut self.buf, MARGIN)
    }
    /// Whether every canary is untouched (compared bitwise).
    pub fn canaries_intact(&self) -> bool {
        let n = self.buf.len();
        self.buf[..MARGIN]
            .iter()
            .chain(&self.buf[n - MARGIN..])
            .all(|v| v.same_bits(T::CANARY))
    }
    /// Elements still holding [`Element::UNWRITTEN`].
    pub fn unwritten(&self) -> usize {
        self.region().iter().filter(|v| v.same_bits(T::UNWRITTEN)).count()
    }
}

/// All output tensors of a case, by element type (from the tensor table's dtype rules): floats
/// (`out`, `lse`, `k`, `v`; stored in the case dtype or f32), 32-bit indices and bytes. No
/// operation outputs indices or bytes yet; the sparse indexer and the FP8 cache writer will.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub tensors: Vec<OutputTensor<f32>>,
    pub indices: Vec<OutputTensor<i32>>,
    pub bytes: Vec<OutputTensor<u8>>,
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
        Self {
            tensors,
            indices: Vec::new(),
            bytes: Vec::new(),
        }
    }
    /// Whether a tensor called `name` is expected.
    pub fn has(&self, name: TensorName) -> bool {
        self.tensors.iter().any(|t| t.name == name)
            || self.indices.iter().any(|t| t.name == name)
            || self.bytes.iter().any(|t| t.name == name)
    }
    /// The outputs whose canaries a kernel disturbed, whatever their element type.
    pub fn broken_canaries(&self) -> Vec<TensorName> {
        let floats = self.tensors.iter().filter(|t| !t.canaries_intact()).map(|t| t.name);
        let indices = self.indices.iter().filter(|t| !t.canaries_intact()).map(|t| t.name);
        let bytes = self.bytes.iter().filter(|t| !t.canaries_intact()).map(|t| t.name);
        floats.chain(indices).chain(bytes).collect()
    }
    /// Index output `name`.
    pub fn indices_mut(&mut self, name: TensorName) -> Result<&mut OutputTensor<i32>, MissingOutput> {
        self.indices.iter_mut().find(|t| t.name == name).ok_or(MissingOutput(name))
    }
    /// Byte output `name`.
    pub fn bytes_mut(&mut self, name: TensorName) -> Result<&mut OutputTensor<u8>, MissingOutput> {
        self.bytes.iter_mut().find(|t| t.name == name).ok_or(MissingOutput(name))
    }
    /// Output `name`; an error if the case (under this profile) has none: a kernel that writes
    /// an LSE its profile does not declare gets RUNTIME_ERROR, not a panic.
    pub fn get(&self, name: TensorName) -> Result<&OutputTensor, MissingOutput> {
        self.tensors.iter().find(|t| t.name == name).ok_or(MissingOutput(name))
    }
    pub fn get_mut(&mut self, name: TensorName) -> Result<&mut OutputTensor, MissingOutput> {
        self.tensors.iter_mut().find(|t| t.name == name).ok_or(MissingOutput(name))
    }

    /// Fill every output from a kernel's own tensors, looked up by name (from a pack's file or a
    /// Python kernel's arrays; `source` names where in the status): each must be there, with the
    /// output's shape and a float dtype. Anything else is the case's SHAPE_OR_DTYPE_MISMATCH.
    pub fn fill<'a>(
        &mut self,
        source: &str,
        mut tensor: impl FnMut(&str) -> Option<TensorBytes<'a>>,
    ) -> Result<(), crate::verdict::Status> {
        for t in self.tensors.iter_mut() {
            let mismatch = |detail: String| crate::verdict::Status::ShapeOrDtypeMismatch {
                detail: format!("{source}: tensor `{}` {detail}", t.name),
            };
            let Some(given) = tensor(t.name.as_str()) else {
                return Err(mismatch(format!("missing (expected shape {:?})", t.shape)));
            };
            if given.shape != t.shape {
                return Err(mismatch(format!("has shape {:?}, expected {:?}", given.shape, t.shape)));
            }
            let Some(values) = gqla_files::tensors::decode_floats(given.dtype, given.data) else {
                return Err(mismatch(format!("has dtype {:?}, expected a float dtype", given.dtype)));
            };
            if given.data.len() != t.len() * given.dtype.bitsize() / 8 || values.len() != t.len() {
                return Err(mismatch(format!(
                    "holds {} values, its shape {:?} {}",
                    values.len(),
                    t.shape,
                    t.len()
                )));
            }
            t.region_mut().iter_mut().zip(&values).for_each(|(d, v)| *d = *v as f32);
        }
        Ok(())
    }
}

/// A kernel's output tensor as little-endian bytes of a safetensors dtype.
pub struct TensorBytes<'a> {
    pub shape: Vec<usize>,
    pub dtype: safetensors::Dtype,
    pub data: &'a [u8],
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
    /// The kernel wrote to input memory it was handed (a kernel outside Rust, whose inputs the
    /// harness hashed before and after the call).
    InputsWritten(String),
    /// The kernel's outputs are not the tensors the case expects (a kernel outside Rust, whose
    /// outputs the harness copies in).
    BadOutputs(String),
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::Declined(why) => write!(f, "declined at run time a case its profile selects: {why}"),
            KernelError::Runtime(why) | KernelError::InputsWritten(why) | KernelError::BadOutputs(why) => f.write_str(why),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each element type starts unwritten inside intact canaries; a write past either end, of any
    /// value but the canary itself, is seen.
    fn discipline<T: Element>(value: T) {
        let mut t = OutputTensor::<T>::new(TensorName::Out, vec![2, 3]);
        assert_eq!((t.len(), t.unwritten()), (6, 6), "{}", T::NAME);
        assert!(t.canaries_intact());
        t.region_mut()[0] = value;
        assert_eq!(t.unwritten(), 5);
        let (buf, at) = t.with_margins_mut();
        buf[at + 6] = value;
        assert!(!t.canaries_intact(), "{}: a write just past the end", T::NAME);
        let mut t = OutputTensor::<T>::new(TensorName::Out, vec![4]);
        let (buf, at) = t.with_margins_mut();
        buf[at - 1] = value;
        assert!(!t.canaries_intact(), "{}: a write just before the start", T::NAME);
        assert!(!T::CANARY.same_bits(T::UNWRITTEN), "{}", T::NAME);
    }

    #[test]
    fn every_element_type_keeps_the_canary_and_unwritten_discipline() {
        discipline::<f32>(0.5);
        discipline::<i32>(7);
        discipline::<u8>(0x38); // e4m3 1.0
        assert!(f32::UNWRITTEN.is_nan() && f32::CANARY.is_nan());
        let mut o = Outputs::for_case(&crate::lattice::suite_cases().remove(0), &Profile::everything());
        o.bytes.push(OutputTensor::new(TensorName::K, vec![8]));
        assert!(o.broken_canaries().is_empty() && o.has(TensorName::K));
        let (buf, at) = o.bytes_mut(TensorName::K).unwrap().with_margins_mut();
        buf[at + 8] = 0;
        assert_eq!(o.broken_canaries(), vec![TensorName::K]);
        assert!(o.indices_mut(TensorName::K).is_err());
    }
}
