//! Device buffers, kernel parameters and launches.
//!
//! `absorb_decode` and `gqa_decode` are one grouped-attention kernel seen through different
//! [`KeySource`]s: the absorb path is one stream whose key is the latent row [c; k^R] and whose
//! value is the key's first d_c columns; the GQA path is G streams with per-group keys (the rope
//! key shared, or folded into each group's key) and per-group values.
//!
//! Everything here is generic over the [`Runtime`], so the GPU and the host emulator get the same
//! launches.

use crate::runtime::{Args, AttnParams, ExpandParams, Launch, Runtime};
use crate::CudaError;
use gqla_conformance::case::Dtype;

/// Threads per block of the attention kernel (`NT` in decode.cu).
pub const THREADS: usize = 128;
/// Query rows per block (`ROWS`).
pub const ROWS: usize = 16;
/// Keys per tile (`TK`).
pub const KEYS_PER_TILE: usize = 16;
/// Widest value the attention kernel accumulates (`DV_MAX`).
pub const DV_MAX: usize = 512;
/// Cached tokens per block of the expand kernel (`EXPAND_TOKENS`).
pub const EXPAND_TOKENS: usize = 8;

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
pub fn to_bytes(d: Dtype, values: &[f32]) -> Vec<u8> {
    match d {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::Bf16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
    }
}

/// The values of little-endian bytes in storage dtype `d`.
pub fn from_bytes(d: Dtype, bytes: &[u8]) -> Vec<f32> {
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

/// One cache component as the kernel reads it: slot s, stream g, column d is element
/// `s·row_stride + g·head_stride + d` of `buf`.
pub struct Segment<'a, R: Runtime> {
    pub buf: &'a R::Buf<u8>,
    pub row_stride: usize,
    pub head_stride: usize,
    pub width: usize,
}

/// Where the keys and values of a decode come from.
pub struct KeySource<'a, R: Runtime> {
    /// Per-stream key part (absorb: the whole latent row).
    pub key: Segment<'a, R>,
    /// Key part shared by every stream (the rope key stored once), if any.
    pub shared_key: Option<Segment<'a, R>>,
    /// Per-stream values; None: the first `dv` columns of the key (absorb path).
    pub value: Option<Segment<'a, R>>,
    pub dv: usize,
    /// Key/value streams (absorb: 1; GQA: G); query head i reads stream i / (H / streams).
    pub streams: usize,
}

/// Block-table addressing of the cache slots (a contiguous cache is one page per sequence).
pub struct Paging<'a, R: Runtime> {
    pub seq_lens: &'a R::Buf<i32>,
    pub block_table: &'a R::Buf<i32>,
    pub max_pages: usize,
    pub page: usize,
}

/// A device output with `margin` elements on each side.
pub struct Guarded<'a, R: Runtime> {
    pub buf: &'a mut R::Buf<u8>,
    pub margin: usize,
}

/// Split-KV partials: `[B, S, s_q, H, d_v]` outputs and `[B, S, s_q, H]` LSEs.
pub struct Workspace<R: Runtime> {
    part_o: R::Buf<f32>,
    part_lse: R::Buf<f32>,
}

/// One decode call.
pub struct Decode<'a, R: Runtime> {
    pub dtype: Dtype,
    /// Queries [B, s_q, H, key width].
    pub q: &'a R::Buf<u8>,
    pub keys: KeySource<'a, R>,
    pub paging: Paging<'a, R>,
    pub batch: usize,
    pub sq: usize,
    pub h: usize,
    pub scale: f32,
    pub num_splits: usize,
    /// [B, s_q, H, d_v] in `dtype`.
    pub out: Guarded<'a, R>,
    /// [B, s_q, H] f32 (as bytes).
    pub lse: Guarded<'a, R>,
}

impl<R: Runtime> Decode<'_, R> {
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
        // q tile, key tile with rows padded to dk + 1, value tile, probabilities, row statistics.
        4 * (ROWS * dk + KEYS_PER_TILE * (dk + 1) + v + ROWS * KEYS_PER_TILE + 4 * ROWS)
    }
    /// Check what the kernel cannot do, before launching.
    pub fn check(&self, rt: &R) -> Result<(), CudaError> {
        let k = &self.keys;
        if k.streams == 0 || !self.h.is_multiple_of(k.streams) {
            return Err(CudaError::Unsupported(format!("{} heads over {} streams", self.h, k.streams)));
        }
        if k.dv > DV_MAX {
            return Err(CudaError::Unsupported(format!("value width {} > {DV_MAX}", k.dv)));
        }
        if self.shared_bytes() > rt.max_shared_per_block() {
            return Err(CudaError::Unsupported(format!(
                "{} bytes of shared memory per block, the device allows {}",
                self.shared_bytes(),
                rt.max_shared_per_block()
            )));
        }
        if self.num_splits == 0 || self.batch > 65_535 || k.streams * self.row_tiles() > 65_535 {
            return Err(CudaError::Unsupported("grid too large".into()));
        }
        Ok(())
    }
}

/// The split count when the caller asks for none: enough blocks to fill the device twice over,
/// but never splits shorter than four key tiles. `longest` is the longest sequence.
pub fn default_splits<R: Runtime>(rt: &R, batch: usize, sq: usize, h: usize, streams: usize, longest: usize) -> usize {
    let blocks = batch * streams * (sq * (h / streams)).div_ceil(ROWS);
    (2 * rt.multiprocessors())
        .div_ceil(blocks.max(1))
        .min(longest.div_ceil(4 * KEYS_PER_TILE))
        .max(1)
}

/// Split-KV workspace for up to `rows` = B·s_q·H query rows of width `dv` and `splits` splits.
pub fn workspace<R: Runtime>(rt: &R, rows: usize, dv: usize, splits: usize) -> Result<Workspace<R>, CudaError> {
    let n = rows.max(1) * splits.max(1);
    Ok(Workspace {
        part_o: rt.zeros::<f32>(n * dv.max(1))?,
        part_lse: rt.zeros::<f32>(n)?,
    })
}

/// Launch a decode: the attention kernel, then (with several splits) the combine kernel.
/// Asynchronous; `workspace` must fit B·s_q·H rows × num_splits when num_splits > 1.
pub fn decode<R: Runtime>(rt: &R, d: &mut Decode<R>, workspace: Option<&mut Workspace<R>>) -> Result<(), CudaError> {
    d.check(rt)?;
    let eb = elem_bytes(d.dtype) as u64;
    let k = &d.keys;
    let rows = d.batch * d.sq * d.h;
    let mut spans = vec![
        rt.span(d.q),
        rt.span(k.key.buf),
        rt.span(d.paging.seq_lens),
        rt.span(d.paging.block_table),
    ];
    spans.extend(k.shared_key.iter().chain(&k.value).map(|s| rt.span(s.buf)));
    let (part_o, part_lse) = match (d.num_splits, workspace) {
        (1, _) => (0, 0),
        (n, Some(w)) if R::len(&w.part_lse) >= rows * n && R::len(&w.part_o) >= rows * n * k.dv => {
            spans.extend([rt.span(&w.part_o), rt.span(&w.part_lse)]);
            (rt.addr_mut(&mut w.part_o), rt.addr_mut(&mut w.part_lse))
        }
        _ => return Err(CudaError::Unsupported("split-KV without a large enough workspace".into())),
    };
    spans.extend([rt.span(d.out.buf), rt.span(d.lse.buf)]);
    let key_ptr = rt.addr(k.key.buf);
    let p = AttnParams {
        q: rt.addr(d.q),
        ka: key_ptr,
        kb: k.shared_key.as_ref().map_or(0, |x| rt.addr(x.buf)),
        v: k.value.as_ref().map_or(key_ptr, |x| rt.addr(x.buf)),
        seq_lens: rt.addr(d.paging.seq_lens),
        block_table: rt.addr(d.paging.block_table),
        out: rt.addr_mut(d.out.buf) + d.out.margin as u64 * eb,
        lse: rt.addr_mut(d.lse.buf) + d.lse.margin as u64 * 4,
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
    let attn = Launch {
        grid: (d.num_splits as u32, (k.streams * d.row_tiles()) as u32, d.batch as u32),
        threads: THREADS as u32,
        shared_bytes: d.shared_bytes() as u32,
    };
    rt.launch(&format!("attn_{suffix}"), attn, Args::Attn(&p), &spans)?;
    if d.num_splits > 1 {
        let combine = Launch {
            grid: (rows as u32, 1, 1),
            threads: THREADS as u32,
            shared_bytes: 0,
        };
        rt.launch(&format!("attn_combine_{suffix}"), combine, Args::Attn(&p), &spans)?;
    }
    Ok(())
}

/// The tokens an expansion writes: token i is position `positions[i]` of sequence `sequences[i]`.
pub struct Tokens<'a, R: Runtime> {
    pub sequences: &'a R::Buf<i32>,
    pub positions: &'a R::Buf<i32>,
    pub count: usize,
}

/// Widths of an expansion: G groups, latent d_c, key d_n and value d_v per group.
#[derive(Clone, Copy, Debug)]
pub struct ExpandDims {
    pub g: usize,
    pub dc: usize,
    pub dn: usize,
    pub dv: usize,
}

/// Launch the latent → group-cache expansion of the listed tokens (asynchronous).
#[allow(clippy::too_many_arguments)]
pub fn expand_cache<R: Runtime>(
    rt: &R,
    dtype: Dtype,
    latent: &R::Buf<u8>,
    w_ukv: &R::Buf<u8>,
    tokens: &Tokens<R>,
    block_table: (&R::Buf<i32>, usize, usize),
    dims: ExpandDims,
    k_out: &mut Guarded<R>,
    v_out: &mut Guarded<R>,
) -> Result<(), CudaError> {
    if tokens.count == 0 {
        return Ok(());
    }
    let (table, max_pages, page) = block_table;
    let eb = elem_bytes(dtype) as u64;
    let spans = [
        rt.span(latent),
        rt.span(w_ukv),
        rt.span(tokens.sequences),
        rt.span(tokens.positions),
        rt.span(table),
        rt.span(k_out.buf),
        rt.span(v_out.buf),
    ];
    let p = ExpandParams {
        latent: rt.addr(latent),
        w: rt.addr(w_ukv),
        tok_b: rt.addr(tokens.sequences),
        tok_t: rt.addr(tokens.positions),
        block_table: rt.addr(table),
        k_out: rt.addr_mut(k_out.buf) + k_out.margin as u64 * eb,
        v_out: rt.addr_mut(v_out.buf) + v_out.margin as u64 * eb,
        max_pages: max_pages as i32,
        page: page as i32,
        tokens: tokens.count as i32,
        g: dims.g as i32,
        dc: dims.dc as i32,
        dn: dims.dn as i32,
        dv: dims.dv as i32,
    };
    let launch = Launch {
        grid: (tokens.count.div_ceil(EXPAND_TOKENS) as u32, 1, 1),
        threads: THREADS as u32,
        shared_bytes: (4 * EXPAND_TOKENS * dims.dc) as u32,
    };
    rt.launch(&format!("expand_{}", suffix(dtype)), launch, Args::Expand(&p), &spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust mirror of the kernel's compile-time constants must match the source.
    #[test]
    fn constants_match_the_source() {
        for (name, value) in [
            ("NT", THREADS),
            ("ROWS", ROWS),
            ("TK", KEYS_PER_TILE),
            ("DV_MAX", DV_MAX),
            ("EXPAND_TOKENS", EXPAND_TOKENS),
        ] {
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
            let y = from_bytes(d, &to_bytes(d, &x));
            for (a, b) in x.iter().zip(&y) {
                assert!(
                    d.round(*a).to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{d:?}: {a} -> {b}"
                );
            }
        }
    }
}
