//! Device buffers, kernel parameters and launches.
//!
//! `absorb_decode` and `gqa_decode` are one grouped-attention kernel seen through different
//! [`KeySource`]s: the absorb path is one stream whose key is the latent row [c; k^R] and whose
//! value is the key's first d_c columns; the GQA path is G streams with per-group keys (the rope
//! key shared, or folded into each group's key) and per-group values.

use crate::device::Gpu;
use crate::{driver, CudaError};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use gqla_conformance::case::Dtype;

/// Threads per block of the attention kernel (`NT` in decode.cu).
pub const THREADS: usize = 128;
/// Query rows per block (`ROWS`).
pub const ROWS: usize = 16;
/// Keys per tile (`TK`).
pub const KEYS_PER_TILE: usize = 16;
/// Widest value the attention kernel accumulates (`DV_MAX`).
pub const DV_MAX: usize = 512;

/// Bytes per element of a storage dtype.
pub fn elem_bytes(d: Dtype) -> usize {
    match d {
        Dtype::F32 => 4,
        Dtype::Bf16 | Dtype::F16 => 2,
    }
}

/// The kernel-name suffix of a storage dtype.
pub fn suffix(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::Bf16 => "bf16",
        Dtype::F16 => "f16",
    }
}

/// Little-endian bytes of `values` in storage dtype `d` (round to nearest even).
pub fn encode(d: Dtype, values: &[f32]) -> Vec<u8> {
    match d {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// The values of little-endian bytes in storage dtype `d`.
pub fn decode(d: Dtype, bytes: &[u8]) -> Vec<f32> {
    match d {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// Parameters of the attention kernels (`AttnParams` in decode.cu, field for field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct AttnParams {
    q: u64,
    ka: u64,
    kb: u64,
    v: u64,
    seq_lens: u64,
    block_table: u64,
    out: u64,
    lse: u64,
    part_o: u64,
    part_lse: u64,
    ka_stride: i64,
    kb_stride: i64,
    v_stride: i64,
    ka_head_stride: i32,
    v_head_stride: i32,
    da: i32,
    db: i32,
    dv: i32,
    max_pages: i32,
    page: i32,
    batch: i32,
    sq: i32,
    h: i32,
    streams: i32,
    num_splits: i32,
    v_is_key_prefix: i32,
    scale: f32,
}
// SAFETY: plain old data with the layout of the CUDA struct.
unsafe impl DeviceRepr for AttnParams {}

/// Parameters of the expand kernel (`ExpandParams` in decode.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ExpandParams {
    latent: u64,
    w: u64,
    tok_b: u64,
    tok_t: u64,
    block_table: u64,
    k_out: u64,
    v_out: u64,
    max_pages: i32,
    page: i32,
    tokens: i32,
    g: i32,
    dc: i32,
    dn: i32,
    dv: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for ExpandParams {}

/// One cache component as the kernel reads it: slot s, stream g, column d is element
/// `s·row_stride + g·head_stride + d` of `buf`.
pub struct Segment<'a> {
    pub buf: &'a CudaSlice<u8>,
    pub row_stride: usize,
    pub head_stride: usize,
    pub width: usize,
}

/// Where the keys and values of a decode come from.
pub struct KeySource<'a> {
    /// Per-stream key part (absorb: the whole latent row).
    pub key: Segment<'a>,
    /// Key part shared by every stream (the rope key stored once), if any.
    pub shared_key: Option<Segment<'a>>,
    /// Per-stream values; None: the first `dv` columns of the key (absorb path).
    pub value: Option<Segment<'a>>,
    pub dv: usize,
    /// Key/value streams (absorb: 1; GQA: G); query head i reads stream i / (H / streams).
    pub streams: usize,
}

/// Block-table addressing of the cache slots (a contiguous cache is one page per sequence).
pub struct Paging<'a> {
    pub seq_lens: &'a CudaSlice<i32>,
    pub block_table: &'a CudaSlice<i32>,
    pub max_pages: usize,
    pub page: usize,
}

/// A device output with `margin` elements on each side.
pub struct Guarded<'a, T> {
    pub buf: &'a mut CudaSlice<T>,
    pub margin: usize,
}

/// Split-KV partials: `[B, S, s_q, H, d_v]` outputs and `[B, S, s_q, H]` LSEs.
pub struct Workspace {
    part_o: CudaSlice<f32>,
    part_lse: CudaSlice<f32>,
}

/// One decode call.
pub struct Decode<'a> {
    pub dtype: Dtype,
    /// Queries [B, s_q, H, key width].
    pub q: &'a CudaSlice<u8>,
    pub keys: KeySource<'a>,
    pub paging: Paging<'a>,
    pub batch: usize,
    pub sq: usize,
    pub h: usize,
    pub scale: f32,
    pub num_splits: usize,
    /// [B, s_q, H, d_v] in `dtype`.
    pub out: Guarded<'a, u8>,
    /// [B, s_q, H] f32 (as bytes).
    pub lse: Guarded<'a, u8>,
}

impl Decode<'_> {
    fn key_width(&self) -> usize {
        self.keys.key.width + self.keys.shared_key.as_ref().map_or(0, |s| s.width)
    }
    fn row_tiles(&self) -> usize {
        (self.sq * (self.h / self.keys.streams)).div_ceil(ROWS)
    }
    /// Dynamic shared memory of the attention kernel, in bytes (the layout in decode.cu).
    pub fn shared_bytes(&self) -> usize {
        let dk = self.key_width();
        let v = if self.keys.value.is_none() {
            0
        } else {
            KEYS_PER_TILE * self.keys.dv
        };
        4 * (ROWS * dk + KEYS_PER_TILE * dk + v + ROWS * KEYS_PER_TILE + 4 * ROWS)
    }
    /// Check what the kernel cannot do, before launching.
    pub fn check(&self, gpu: &Gpu) -> Result<(), CudaError> {
        let k = &self.keys;
        if k.streams == 0 || !self.h.is_multiple_of(k.streams) {
            return Err(CudaError::Unsupported(format!("{} heads over {} streams", self.h, k.streams)));
        }
        if k.dv > DV_MAX {
            return Err(CudaError::Unsupported(format!("value width {} > {DV_MAX}", k.dv)));
        }
        if self.shared_bytes() > gpu.info.max_shared_per_block as usize {
            return Err(CudaError::Unsupported(format!(
                "{} bytes of shared memory per block, the device allows {}",
                self.shared_bytes(),
                gpu.info.max_shared_per_block
            )));
        }
        if self.num_splits == 0 || self.batch > 65_535 || k.streams * self.row_tiles() > 65_535 {
            return Err(CudaError::Unsupported("grid too large".into()));
        }
        Ok(())
    }
}

impl Gpu {
    /// Upload bytes.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream.clone_htod(data).map_err(driver("copying to the device"))
    }
    /// Download a buffer.
    pub fn download<T: DeviceRepr + Default + Clone>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream.clone_dtoh(buf).map_err(driver("copying from the device"))
    }
    /// Wait for the stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver("running the kernels"))
    }

    /// The split count when the caller asks for none: enough blocks to fill the device twice
    /// over, but never splits shorter than four key tiles. `longest` is the longest sequence.
    pub fn default_splits(&self, batch: usize, sq: usize, h: usize, streams: usize, longest: usize) -> usize {
        let blocks = batch * streams * (sq * (h / streams)).div_ceil(ROWS);
        (2 * self.info.multiprocessors.max(1) as usize)
            .div_ceil(blocks.max(1))
            .min(longest.div_ceil(4 * KEYS_PER_TILE))
            .max(1)
    }

    /// Split-KV workspace for up to `rows` = B·s_q·H query rows of width `dv` and `splits` splits.
    pub fn workspace(&self, rows: usize, dv: usize, splits: usize) -> Result<Workspace, CudaError> {
        let n = rows.max(1) * splits.max(1);
        Ok(Workspace {
            part_o: self
                .stream
                .alloc_zeros::<f32>(n * dv.max(1))
                .map_err(driver("allocating the workspace"))?,
            part_lse: self.stream.alloc_zeros::<f32>(n).map_err(driver("allocating the workspace"))?,
        })
    }

    /// Launch a decode: the attention kernel, then (with several splits) the combine kernel.
    /// Asynchronous; `workspace` must fit B·s_q·H rows × num_splits when num_splits > 1.
    pub fn decode(&self, d: &mut Decode, workspace: Option<&mut Workspace>) -> Result<(), CudaError> {
        d.check(self)?;
        let s = &self.stream;
        let eb = elem_bytes(d.dtype) as u64;
        let k = &d.keys;
        let rows = d.batch * d.sq * d.h;
        let (part_o, part_lse) = match (d.num_splits, workspace) {
            (1, _) => (0, 0),
            (n, Some(w)) if w.part_lse.len() >= rows * n && w.part_o.len() >= rows * n * k.dv => {
                (w.part_o.device_ptr_mut(s).0, w.part_lse.device_ptr_mut(s).0)
            }
            _ => return Err(CudaError::Unsupported("split-KV without a large enough workspace".into())),
        };
        let key_ptr = k.key.buf.device_ptr(s).0;
        let p = AttnParams {
            q: d.q.device_ptr(s).0,
            ka: key_ptr,
            kb: k.shared_key.as_ref().map_or(0, |x| x.buf.device_ptr(s).0),
            v: k.value.as_ref().map_or(key_ptr, |x| x.buf.device_ptr(s).0),
            seq_lens: d.paging.seq_lens.device_ptr(s).0,
            block_table: d.paging.block_table.device_ptr(s).0,
            out: d.out.buf.device_ptr_mut(s).0 + d.out.margin as u64 * eb,
            lse: d.lse.buf.device_ptr_mut(s).0 + d.lse.margin as u64 * 4,
            part_o,
            part_lse,
            ka_stride: k.key.row_stride as i64,
            kb_stride: k.shared_key.as_ref().map_or(0, |x| x.row_stride as i64),
            v_stride: k.value.as_ref().map_or(k.key.row_stride, |x| x.row_stride) as i64,
            ka_head_stride: k.key.head_stride as i32,
            v_head_stride: k.value.as_ref().map_or(0, |x| x.head_stride) as i32,
            da: k.key.width as i32,
            db: k.shared_key.as_ref().map_or(0, |x| x.width) as i32,
            dv: k.dv as i32,
            max_pages: d.paging.max_pages as i32,
            page: d.paging.page as i32,
            batch: d.batch as i32,
            sq: d.sq as i32,
            h: d.h as i32,
            streams: k.streams as i32,
            num_splits: d.num_splits as i32,
            v_is_key_prefix: k.value.is_none() as i32,
            scale: d.scale,
        };
        if d.batch == 0 {
            return Ok(());
        }
        let suffix = suffix(d.dtype);
        let attn = self.function("attn", suffix);
        let smem = d.shared_bytes() as u32;
        attn.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
            .map_err(driver("raising the shared-memory limit"))?;
        let cfg = LaunchConfig {
            grid_dim: (d.num_splits as u32, (k.streams * d.row_tiles()) as u32, d.batch as u32),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = s.launch_builder(attn);
        b.arg(&p);
        // SAFETY: the parameters describe buffers that outlive the launch (they are borrowed by `d`
        // and the workspace, and every use is ordered on this one stream).
        unsafe { b.launch(cfg) }.map_err(driver("launching attn"))?;
        if d.num_splits > 1 {
            let combine = self.function("attn_combine", suffix);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (THREADS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = s.launch_builder(combine);
            b.arg(&p);
            // SAFETY: as above.
            unsafe { b.launch(cfg) }.map_err(driver("launching attn_combine"))?;
        }
        Ok(())
    }

    /// Launch the latent → group-cache expansion of the listed tokens (asynchronous).
    #[allow(clippy::too_many_arguments)]
    pub fn expand_cache(
        &self,
        dtype: Dtype,
        latent: &CudaSlice<u8>,
        w_ukv: &CudaSlice<u8>,
        tokens: (&CudaSlice<i32>, &CudaSlice<i32>, usize),
        paging: &Paging,
        dims: (usize, usize, usize, usize),
        k_out: &mut Guarded<u8>,
        v_out: &mut Guarded<u8>,
    ) -> Result<(), CudaError> {
        let (g, dc, dn, dv) = dims;
        let (tok_b, tok_t, n) = tokens;
        if n == 0 {
            return Ok(());
        }
        let s = &self.stream;
        let eb = elem_bytes(dtype) as u64;
        let p = ExpandParams {
            latent: latent.device_ptr(s).0,
            w: w_ukv.device_ptr(s).0,
            tok_b: tok_b.device_ptr(s).0,
            tok_t: tok_t.device_ptr(s).0,
            block_table: paging.block_table.device_ptr(s).0,
            k_out: k_out.buf.device_ptr_mut(s).0 + k_out.margin as u64 * eb,
            v_out: v_out.buf.device_ptr_mut(s).0 + v_out.margin as u64 * eb,
            max_pages: paging.max_pages as i32,
            page: paging.page as i32,
            tokens: n as i32,
            g: g as i32,
            dc: dc as i32,
            dn: dn as i32,
            dv: dv as i32,
        };
        let smem = (4 * dc) as u32;
        let f = self.function("expand", suffix(dtype));
        f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
            .map_err(driver("raising the shared-memory limit"))?;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = s.launch_builder(f);
        b.arg(&p);
        // SAFETY: as in `decode`.
        unsafe { b.launch(cfg) }.map_err(driver("launching expand"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust mirror of the kernel's compile-time constants must match the source.
    #[test]
    fn constants_match_the_source() {
        for (name, value) in [("NT", THREADS), ("ROWS", ROWS), ("TK", KEYS_PER_TILE), ("DV_MAX", DV_MAX)] {
            let line = format!("#define {name} {value}");
            assert!(crate::compile::SOURCE.contains(&line), "decode.cu lacks `{line}`");
        }
    }

    /// Parameter structs: no padding surprises (CUDA lays the same fields out the same way).
    #[test]
    fn parameter_layouts() {
        assert_eq!(std::mem::size_of::<AttnParams>(), 10 * 8 + 3 * 8 + 13 * 4 + 4);
        assert_eq!(std::mem::size_of::<ExpandParams>(), 7 * 8 + 7 * 4 + 4);
    }

    #[test]
    fn encode_decode_round_trip() {
        let x = [1.0f32, -2.5, 0.1, f32::NAN, f32::NEG_INFINITY];
        for d in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
            let y = decode(d, &encode(d, &x));
            for (a, b) in x.iter().zip(&y) {
                assert!(
                    d.round(*a).to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{d:?}: {a} -> {b}"
                );
            }
        }
    }
}
