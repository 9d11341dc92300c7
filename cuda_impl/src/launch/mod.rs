//! Device buffers, kernel parameters and launches.
//!
//! `absorb_decode` and `gqa_decode` are one grouped-attention kernel seen through different
//! [`KeySource`]s: the absorb path is one stream whose key is the latent row [c; k^R] and whose
//! value is the key's first d_c columns; the GQA path is G streams with per-group keys (the rope
//! key shared, or folded into each group's key) and per-group values.
//!
//! Everything here is generic over the [`Runtime`], so the GPU and the host emulator get the same
//! launches. One file per concern: [`decode`](fn@decode) and its buffers, [`expand_cache`],
//! [`fill_random`], and the tensor-core layout probes.

mod decode;
mod expand;
mod fill;
mod probe;

pub use decode::{check_addressing, decode, workspace, BlockTable, Decode, Guarded, KeySource, Segment, Workspace};
pub use expand::{expand_cache, ExpandDims, Tokens};
pub use fill::fill_random;
pub use probe::{mma_probe, mma_probe_mismatches, probe_mismatches, wgmma_probe, MMA_PROBE_WAYS, WGMMA_PROBE_WAYS};

use crate::compile::{Entry, Family};
use crate::runtime::Runtime;
use crate::CudaError;
use gqla_conformance::case::DType;
use gqla_files::tensors::decode_floats;

/// Threads per block of the attention kernel (`NT` in kernels/common.cuh).
pub const THREADS: usize = 128;
/// Query rows per block (`ROWS`).
pub const ROWS: usize = 16;
/// Keys per tile (`TK`).
pub const KEYS_PER_TILE: usize = 16;
/// Widest value the attention kernel accumulates (`DV_MAX`).
pub const DV_MAX: usize = 512;
/// Splits whose weights a combine block holds at once (`COMBINE_CHUNK`).
pub const COMBINE_CHUNK: usize = 256;
/// Dynamic shared memory of a combine block: the weights and one partial per warp.
const COMBINE_SHARED_BYTES: usize = 4 * (COMBINE_CHUNK + THREADS / 32);
/// Cached tokens per block of the expand kernel (`EXPAND_TOKENS`).
pub const EXPAND_TOKENS: usize = 8;
/// Threads per block of the tensor-core attention kernel (`MMA_NT`).
pub const MMA_THREADS: usize = 256;
/// Query rows per block of the tensor-core kernel (`MMA_ROWS`).
pub const MMA_ROWS: usize = 64;
/// Keys per tile of the tensor-core kernel (`MMA_KEYS`).
pub const MMA_KEYS: usize = 32;
/// Padding of its shared rows, in 16-bit elements (`MMA_PAD`).
pub const MMA_PAD: usize = 8;
/// Widest value the narrow tensor-core kernel (`attn_mma_narrow_*`, half the accumulators) takes.
pub const MMA_NARROW_DV: usize = 128;
/// Key/value tiles the tensor-core kernel keeps in flight at most (`MMA_STAGES_MAX`).
pub const MMA_STAGES_MAX: usize = 3;
/// Blocks of `attn_mma_*` (256 threads) an SM holds as far as their registers go: 1 above 128
/// registers a thread. The ptxas test checks these against the assembled kernels.
pub const MMA_BLOCKS_PER_SM: usize = 1;
/// The same for `attn_mma_narrow_*` (at most 128 registers a thread).
pub const MMA_NARROW_BLOCKS_PER_SM: usize = 2;
/// The same for the SIMT `attn_*` (128 threads, up to 255 registers; f16 storage needs fewer).
pub const SIMT_BLOCKS_PER_SM: usize = 2;
/// The same for `attn_wgmma_*` (256 threads, above 128 registers a thread).
pub const WGMMA_BLOCKS_PER_SM: usize = 1;
/// The same for `attn_wgmma_narrow_*` (at most 128 registers a thread).
pub const WGMMA_NARROW_BLOCKS_PER_SM: usize = 2;

/// Which attention kernel a decode runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `attn_<dtype>`: SIMT FMAs, every storage dtype.
    Simt,
    /// `attn_mma_<dtype>`: tensor cores (mma.sync m16n8k16, f32 accumulation), 16-bit storage,
    /// compute capability 8.0 or later.
    Mma,
    /// `attn_wgmma_<dtype>`: Hopper warpgroup MMA (wgmma.mma_async, operands in shared memory by
    /// descriptor), 16-bit storage, compute capability 9.0 (sm_90a) only. Same tiles as `Mma`.
    Wgmma,
}

/// The attention kernel a `--kernel cuda-<name>` spec forces.
impl From<gqla_conformance::kernel_spec::CudaVariant> for Variant {
    fn from(v: gqla_conformance::kernel_spec::CudaVariant) -> Self {
        use gqla_conformance::kernel_spec::CudaVariant as V;
        match v {
            V::Simt => Variant::Simt,
            V::Mma => Variant::Mma,
            V::Wgmma => Variant::Wgmma,
        }
    }
}

impl Variant {
    /// The default: tensor cores for 16-bit storage where the device has them.
    pub fn choose<R: Runtime>(rt: &R, dtype: DType) -> Self {
        if matches!(dtype, DType::Bf16 | DType::F16) && rt.has_mma() {
            Variant::Mma
        } else {
            Variant::Simt
        }
    }
    /// Every attention kernel.
    pub const ALL: [Variant; 3] = [Variant::Simt, Variant::Mma, Variant::Wgmma];
    /// The variant called `name` (`simt`, `mma`, `wgmma`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
    /// Whether runtime `rt` can run this kernel at all.
    pub fn available<R: Runtime>(self, rt: &R) -> bool {
        self.missing(rt).is_none()
    }
    /// What runtime `rt` lacks to run this kernel (None: nothing).
    pub fn missing<R: Runtime>(self, rt: &R) -> Option<&'static str> {
        match self {
            Variant::Simt => None,
            Variant::Mma => (!rt.has_mma()).then_some("compute capability 8.0 or later"),
            Variant::Wgmma => (!rt.has_wgmma()).then_some("compute capability 9.0 (sm_90a)"),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Variant::Simt => "simt",
            Variant::Mma => "mma",
            Variant::Wgmma => "wgmma",
        }
    }
    /// Whether this is a tensor-core kernel (16-bit storage, 64 rows x 32 keys per block).
    pub fn tensor_cores(self) -> bool {
        self != Variant::Simt
    }
    /// Query rows a block holds.
    pub fn rows(self) -> usize {
        if self.tensor_cores() {
            MMA_ROWS
        } else {
            ROWS
        }
    }
    fn threads(self) -> usize {
        if self.tensor_cores() {
            MMA_THREADS
        } else {
            THREADS
        }
    }
    /// Keys a block reads per tile.
    pub fn keys_per_tile(self) -> usize {
        if self.tensor_cores() {
            MMA_KEYS
        } else {
            KEYS_PER_TILE
        }
    }
    /// The kernel family, e.g. `attn_wgmma_narrow` (narrow: values up to [`MMA_NARROW_DV`] wide).
    fn family(self, narrow: bool) -> Family {
        match (self, narrow) {
            (Variant::Simt, _) => Family::Attn,
            (Variant::Mma, true) => Family::AttnMmaNarrow,
            (Variant::Mma, false) => Family::AttnMma,
            (Variant::Wgmma, true) => Family::AttnWgmmaNarrow,
            (Variant::Wgmma, false) => Family::AttnWgmma,
        }
    }
}

/// The values of little-endian bytes in storage dtype `d`.
pub fn from_bytes(d: DType, bytes: &[u8]) -> Vec<f32> {
    let values = decode_floats(gqla_files::tensors::safetensors_dtype(d), bytes).expect("a float storage dtype");
    // Exact: every value came from an f32, bf16 or f16.
    values.into_iter().map(|v| v as f32).collect()
}

/// `what` needs `need` bytes and its buffer has `have`.
pub(crate) fn too_small(what: &str, need: usize, have: usize) -> CudaError {
    CudaError::Unsupported(format!("{what} needs {need} bytes, its buffer has {have}"))
}

/// Check that `buf` holds `need` bytes.
pub(crate) fn holds<R: Runtime, T: crate::runtime::Element>(what: &str, buf: &R::Buf<T>, need: usize) -> Result<(), CudaError> {
    let have = R::len(buf) * std::mem::size_of::<T>();
    if need > have {
        return Err(too_small(what, need, have));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{AttnParams, ExpandParams, FillParams};

    /// The Rust mirror of the kernel's compile-time constants must match the source.
    #[test]
    fn constants_match_the_source() {
        for (name, value) in [
            ("NT", THREADS),
            ("ROWS", ROWS),
            ("TK", KEYS_PER_TILE),
            ("DV_MAX", DV_MAX),
            ("EXPAND_TOKENS", EXPAND_TOKENS),
            ("COMBINE_CHUNK", COMBINE_CHUNK),
            ("MMA_WARPS", MMA_THREADS / 32),
            ("MMA_ROWS", MMA_ROWS),
            ("MMA_KEYS", MMA_KEYS),
            ("MMA_PAD", MMA_PAD),
            ("MMA_NARROW_DVH", MMA_NARROW_DV / 2),
            ("MMA_STAGES_MAX", MMA_STAGES_MAX),
        ] {
            let line = format!("#define {name} {value}");
            assert!(crate::compile::SOURCE.contains(&line), "the kernel source lacks `{line}`");
        }
    }

    /// Parameter structs: no padding surprises (CUDA lays the same fields out the same way).
    #[test]
    fn parameter_layouts() {
        assert_eq!(
            std::mem::size_of::<AttnParams>(),
            (10 * 8 + 3 * 8 + 14 * 4 + 4usize).next_multiple_of(8)
        );
        assert_eq!(std::mem::size_of::<ExpandParams>(), 7 * 8 + 7 * 4 + 4);
        assert_eq!(std::mem::size_of::<FillParams>(), 8 + 8 + 4 + 4);
    }

    /// The probe comparison reports a wrong element and a NaN, with way, row and column.
    #[test]
    fn mma_probe_mismatches_name_the_element() {
        let want: Vec<f64> = (0..256).map(|i| i as f64 - 100.0).collect();
        let mut got: Vec<f32> = want.iter().cycle().take(MMA_PROBE_WAYS * 256).map(|&w| w as f32).collect();
        assert!(mma_probe_mismatches(&got, &want).is_empty());
        got[256 + 17] += 0.01;
        got[3 * 256 + 255] = f32::NAN;
        let bad = mma_probe_mismatches(&got, &want);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("way 1 (row 1, col 1):"), "{bad:?}");
        assert!(bad[1].starts_with("way 3 (row 15, col 15): NaN"), "{bad:?}");
    }

    #[test]
    fn probe_mismatches_follow_each_ways_shape() {
        let want: Vec<f64> = (0..64 * 32 + 2 * 64 * 64).map(|i| (i % 97) as f64 - 48.0).collect();
        let mut got: Vec<f32> = want.iter().map(|&w| w as f32).collect();
        assert!(probe_mismatches(&got, &want, &WGMMA_PROBE_WAYS).is_empty());
        got[33] = 1e3; // way 0, 32 columns: row 1, col 1
        got[2048 + 64 * 5 + 7] = f32::NAN; // way 1, 64 columns: row 5, col 7
        let bad = probe_mismatches(&got, &want, &WGMMA_PROBE_WAYS);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("way 0 (row 1, col 1):"), "{bad:?}");
        assert!(bad[1].starts_with("way 1 (row 5, col 7): NaN"), "{bad:?}");
        assert_eq!(
            probe_mismatches(&got[..10], &want, &WGMMA_PROBE_WAYS)[0],
            format!("10 results for {} expected", want.len())
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let x = [1.0f32, -2.5, 0.1, f32::NAN, f32::NEG_INFINITY];
        for d in [DType::F32, DType::Bf16, DType::F16] {
            let y = from_bytes(d, &gqla_files::tensors::encode_f32(d, &x));
            for (a, b) in x.iter().zip(&y) {
                assert!(
                    d.round_f32(*a).to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{d:?}: {a} -> {b}"
                );
            }
        }
    }
}
