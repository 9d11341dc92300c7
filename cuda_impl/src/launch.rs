//! Device buffers, kernel parameters and launches.
//!
//! `absorb_decode` and `gqa_decode` are one grouped-attention kernel seen through different
//! [`KeySource`]s: the absorb path is one stream whose key is the latent row [c; k^R] and whose
//! value is the key's first d_c columns; the GQA path is G streams with per-group keys (the rope
//! key shared, or folded into each group's key) and per-group values.
//!
//! Everything here is generic over the [`Runtime`], so the GPU and the host emulator get the same
//! launches.

use crate::runtime::{Args, AttnParams, ExpandParams, FillParams, Launch, ProbeParams, Runtime};
use crate::CudaError;
use gqla_conformance::case::DType;
use gqla_reference::hf::tensors::{decode_floats, RawTensor};

/// Threads per block of the attention kernel (`NT` in decode.cu).
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
    fn family(self, narrow: bool) -> &'static str {
        match (self, narrow) {
            (Variant::Simt, _) => "attn",
            (Variant::Mma, true) => "attn_mma_narrow",
            (Variant::Mma, false) => "attn_mma",
            (Variant::Wgmma, true) => "attn_wgmma_narrow",
            (Variant::Wgmma, false) => "attn_wgmma",
        }
    }
}

/// Little-endian bytes of `values` in storage dtype `d` (round to nearest even).
pub fn to_bytes(d: DType, values: &[f32]) -> Vec<u8> {
    RawTensor::encode(d, vec![values.len()], values.iter().map(|v| *v as f64)).bytes
}

/// The values of little-endian bytes in storage dtype `d`.
pub fn from_bytes(d: DType, bytes: &[u8]) -> Vec<f32> {
    let values = decode_floats(d.safetensors(), bytes).expect("a float storage dtype");
    // Exact: every value came from an f32, bf16 or f16.
    values.into_iter().map(|v| v as f32).collect()
}

/// One cache component as the kernel reads it: slot s, stream g, column d is element
/// `s·row_stride + g·head_stride + d` of `buf`.
pub struct Segment<'a, R: Runtime> {
    pub buf: &'a R::Buf<u8>,
    pub row_stride: usize,
    pub head_stride: usize,
    pub width: usize,
}

impl<R: Runtime> Segment<'_, R> {
    /// Cache slots whose every element streams `0..streams` read (columns `0..width`) lies in the
    /// buffer of `eb`-byte elements.
    fn slots(&self, streams: usize, width: usize, eb: usize) -> usize {
        let row = (streams.max(1) - 1) * self.head_stride + width;
        let elements = R::len(self.buf) / eb;
        match (elements.checked_sub(row), self.row_stride) {
            (None, _) => 0,
            (Some(_), 0) => usize::MAX,
            (Some(rest), stride) => rest / stride + 1,
        }
    }
}

/// `what` needs `need` bytes and its buffer has `have`.
fn too_small(what: &str, need: usize, have: usize) -> CudaError {
    CudaError::Unsupported(format!("{what} needs {need} bytes, its buffer has {have}"))
}

/// Check that `buf` holds `need` bytes.
fn holds<R: Runtime, T: crate::runtime::Element>(what: &str, buf: &R::Buf<T>, need: usize) -> Result<(), CudaError> {
    let have = R::len(buf) * std::mem::size_of::<T>();
    if need > have {
        return Err(too_small(what, need, have));
    }
    Ok(())
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
    pub dtype: DType,
    /// Queries [B, s_q, H, key width].
    pub q: &'a R::Buf<u8>,
    pub keys: KeySource<'a, R>,
    pub paging: Paging<'a, R>,
    pub batch: usize,
    pub sq: usize,
    pub h: usize,
    pub scale: f32,
    pub num_splits: usize,
    pub variant: Variant,
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
        (self.sq * (self.h / self.keys.streams)).div_ceil(self.variant.rows())
    }
    /// The tensor-core kernel's family: narrow values need half the accumulators (fewer
    /// registers, more blocks per SM).
    fn narrow(&self) -> bool {
        self.keys.dv <= MMA_NARROW_DV
    }
    /// Blocks of the attention kernel one SM holds with `stages` tiles in flight: as many as
    /// its registers allow and its shared memory fits (at least 1).
    fn resident_blocks(&self, rt: &R, stages: usize) -> usize {
        let by_registers = match (self.variant, self.narrow()) {
            (Variant::Simt, _) => SIMT_BLOCKS_PER_SM,
            (Variant::Mma, true) => MMA_NARROW_BLOCKS_PER_SM,
            (Variant::Mma, false) => MMA_BLOCKS_PER_SM,
            (Variant::Wgmma, true) => WGMMA_NARROW_BLOCKS_PER_SM,
            (Variant::Wgmma, false) => WGMMA_BLOCKS_PER_SM,
        };
        let per_block = self.shared_bytes(stages) + rt.reserved_shared_per_block();
        (rt.max_shared_per_multiprocessor() / per_block).clamp(1, by_registers)
    }
    /// Key/value tiles in flight for the tensor-core kernel: the most (up to MMA_STAGES_MAX) whose
    /// shared memory fits a block without lowering the blocks an SM holds below what two stages
    /// allow. 2 for the SIMT kernel, which ignores it.
    pub fn stages(&self, rt: &R) -> usize {
        if self.variant == Variant::Simt {
            return 2;
        }
        (2..=MMA_STAGES_MAX)
            .rev()
            .find(|&s| self.shared_bytes(s) <= rt.max_shared_per_block() && self.resident_blocks(rt, s) >= self.resident_blocks(rt, 2))
            .unwrap_or(2)
    }
    /// The split count when the caller asks for none: enough blocks for one full wave (every SM
    /// holding as many blocks as it can; a second wave would only add partial outputs to write
    /// and merge), but never splits shorter than four key tiles. `longest` is the longest
    /// sequence.
    pub fn default_splits(&self, rt: &R, longest: usize) -> usize {
        let blocks = self.batch * self.keys.streams * self.row_tiles();
        let wave = rt.multiprocessors() * self.resident_blocks(rt, self.stages(rt));
        wave.div_ceil(blocks.max(1))
            .min(longest.div_ceil(4 * self.variant.keys_per_tile()))
            .max(1)
    }
    /// Dynamic shared memory of the attention kernel with `stages` key/value tiles in flight, in
    /// bytes (the layouts in decode.cu).
    pub fn shared_bytes(&self, stages: usize) -> usize {
        let dk = self.key_width();
        let prefix = self.keys.value.is_none();
        match self.variant {
            Variant::Simt => {
                let v = if prefix { 0 } else { KEYS_PER_TILE * self.keys.dv };
                // q tile, key tile with rows padded to dk + 1, value tile, probabilities, row statistics.
                4 * (ROWS * dk + KEYS_PER_TILE * (dk + 1) + v + ROWS * KEYS_PER_TILE + 4 * ROWS)
            }
            Variant::Mma | Variant::Wgmma => {
                // mma.sync: rows padded by MMA_PAD and one score plane; wgmma: unpadded core
                // matrices, keys in whole pairs of k16 steps (at least as wide as values that are
                // their prefix), values in whole m64n64 steps per warpgroup, and a partial score
                // plane per warpgroup (the widths in decode.cu's attn_tc).
                let dv = self.keys.dv;
                let (pad, planes, dkp, dvp) = if self.variant == Variant::Mma {
                    (MMA_PAD, 1, dk.next_multiple_of(16), dv.next_multiple_of(16))
                } else {
                    let dvp = dv.next_multiple_of(128);
                    (0, 2, dk.next_multiple_of(32).max(if prefix { dvp } else { 0 }), dvp)
                };
                let v = if prefix { 0 } else { MMA_KEYS * (dvp + pad) };
                // f32 scores [planes][rows][keys + 1], rescale factors and visible keys per row,
                // each stage's slots; 16-bit q tile, each stage's key (and value) tile, P tile.
                4 * (planes * MMA_ROWS * (MMA_KEYS + 1) + 2 * MMA_ROWS)
                    + 8 * stages * MMA_KEYS
                    + 2 * (MMA_ROWS * (dkp + pad) + stages * (MMA_KEYS * (dkp + pad) + v) + MMA_ROWS * (MMA_KEYS + pad))
            }
        }
    }
    /// Cache slots every key and value segment holds whole: the block table may name pages
    /// `0..cache_slots() / page` (see [`decode`]'s safety section).
    pub fn cache_slots(&self) -> usize {
        let (k, eb) = (&self.keys, self.dtype.size_in_bytes());
        let value_slots = match &k.value {
            Some(v) => v.slots(k.streams, k.dv, eb),
            None => usize::MAX, // a prefix of the key rows, checked with them
        };
        let shared_slots = k.shared_key.as_ref().map_or(usize::MAX, |x| x.slots(1, x.width, eb));
        k.key.slots(k.streams, k.key.width, eb).min(value_slots).min(shared_slots)
    }

    /// Check every extent the host knows against the buffers: queries, outputs, lengths, the
    /// block table, and at least one page of every cache segment.
    fn check_extents(&self) -> Result<(), CudaError> {
        let (k, eb) = (&self.keys, self.dtype.size_in_bytes());
        let rows = self.batch * self.sq * self.h;
        if self.batch == 0 {
            return Ok(()); // nothing is launched
        }
        holds::<R, u8>("the queries", self.q, rows * self.key_width() * eb)?;
        holds::<R, u8>("the output", self.out.buf, (rows * k.dv + 2 * self.out.margin) * eb)?;
        holds::<R, u8>("the LSE", self.lse.buf, (rows + 2 * self.lse.margin) * 4)?;
        holds::<R, i32>("the sequence lengths", self.paging.seq_lens, self.batch * 4)?;
        holds::<R, i32>("the block table", self.paging.block_table, self.batch * self.paging.max_pages * 4)?;
        if k.value.is_none() && k.dv > k.key.width {
            return Err(CudaError::Unsupported(format!(
                "values of width {} as a prefix of keys of width {}",
                k.dv, k.key.width
            )));
        }
        if self.paging.page == 0 || self.cache_slots() < self.paging.page {
            return Err(CudaError::Unsupported(format!(
                "a cache of {} whole slots cannot hold one page of {}",
                self.cache_slots(),
                self.paging.page
            )));
        }
        let i32_fits = |v: usize| i32::try_from(v).is_ok();
        if ![
            self.paging.max_pages.saturating_mul(self.paging.page),
            rows,
            k.key.head_stride,
            k.value.as_ref().map_or(0, |v| v.head_stride),
        ]
        .into_iter()
        .all(i32_fits)
        {
            return Err(CudaError::Unsupported("sizes past the kernel's 32-bit indices".into()));
        }
        Ok(())
    }

    /// Check what the kernel cannot do, before launching.
    pub fn check(&self, rt: &R) -> Result<(), CudaError> {
        self.check_extents()?;
        let k = &self.keys;
        if k.streams == 0 || !self.h.is_multiple_of(k.streams) {
            return Err(CudaError::Unsupported(format!("{} heads over {} streams", self.h, k.streams)));
        }
        if k.dv > DV_MAX {
            return Err(CudaError::Unsupported(format!("value width {} > {DV_MAX}", k.dv)));
        }
        if self.variant.tensor_cores() {
            if self.dtype == DType::F32 {
                return Err(CudaError::Unsupported(
                    "the tensor-core kernel takes bf16 or f16 storage, not f32".into(),
                ));
            }
            if let Some(need) = self.variant.missing(rt) {
                return Err(CudaError::Unsupported(format!("the {} kernel needs {need}", self.variant.name())));
            }
            if k.value.is_none() && k.dv.next_multiple_of(16) > self.key_width().next_multiple_of(16) {
                return Err(CudaError::Unsupported("values wider than the keys they are a prefix of".into()));
            }
        }
        let shared = self.shared_bytes(self.stages(rt));
        if shared > rt.max_shared_per_block() {
            return Err(CudaError::Unsupported(format!(
                "{shared} bytes of shared memory per block, the device allows {}",
                rt.max_shared_per_block()
            )));
        }
        if self.num_splits == 0 || self.batch > 65_535 || k.streams * self.row_tiles() > 65_535 {
            return Err(CudaError::Unsupported("grid too large".into()));
        }
        Ok(())
    }
}

/// Split-KV workspace for up to `rows` = B·s_q·H query rows of width `dv` and `splits` splits.
pub fn workspace<R: Runtime>(rt: &R, rows: usize, dv: usize, splits: usize) -> Result<Workspace<R>, CudaError> {
    let n = rows.max(1) * splits.max(1);
    Ok(Workspace {
        part_o: rt.zeros::<f32>(n * dv.max(1))?,
        part_lse: rt.zeros::<f32>(n)?,
    })
}

/// Check, on the host copy it is uploaded from, the device-side addressing [`decode`] and
/// [`expand_cache`] trust: each of the `seq_lens.len()` rows has a length in
/// `0..=max_pages · page`, and each block-table entry its length reaches names a page of a cache
/// of `slots` slots. (For an expansion, a row's length is its largest listed position + 1.)
pub fn check_addressing(seq_lens: &[i32], block_table: &[i32], max_pages: usize, page: usize, slots: usize) -> Result<(), CudaError> {
    let bad = |why: String| Err(CudaError::Unsupported(format!("cache addressing: {why}")));
    if page == 0 || block_table.len() < seq_lens.len().saturating_mul(max_pages) {
        return bad(format!(
            "{} rows of {max_pages} pages of {page} slots need a block table of {} entries, not {}",
            seq_lens.len(),
            seq_lens.len().saturating_mul(max_pages),
            block_table.len()
        ));
    }
    let pages = slots / page;
    for (b, &len) in seq_lens.iter().enumerate() {
        let Some(len) = usize::try_from(len).ok().filter(|&l| l <= max_pages.saturating_mul(page)) else {
            return bad(format!("row {b} has length {len}, outside 0..={max_pages}·{page}"));
        };
        for (p, &e) in block_table[b * max_pages..][..len.div_ceil(page)].iter().enumerate() {
            if usize::try_from(e).map_or(true, |e| e >= pages) {
                return bad(format!("row {b} page {p} is page {e}; the cache holds pages 0..{pages}"));
            }
        }
    }
    Ok(())
}

/// Launch a decode: the attention kernel, then (with several splits) the combine kernel.
/// Asynchronous; `workspace` must fit B·s_q·H rows × num_splits when num_splits > 1. Every extent
/// the host knows is checked first ([`Decode::check`]); what lies in device memory is not.
///
/// # Safety
/// The device-side addressing data must keep the kernel inside the buffers, and the buffers must
/// stay untouched until the launch completes (the next synchronize or download):
/// - each sequence length is at most `max_pages · page`;
/// - each block-table entry the lengths reach (page p of row b, p < ⌈len_b / page⌉) is below
///   [`Decode::cache_slots`]` / page`.
pub unsafe fn decode<R: Runtime>(rt: &R, d: &mut Decode<R>, workspace: Option<&mut Workspace<R>>) -> Result<(), CudaError> {
    d.check(rt)?;
    if d.batch == 0 {
        return Ok(());
    }
    let stages = d.stages(rt);
    let eb = d.dtype.size_in_bytes();
    let rows = d.batch * d.sq * d.h;
    let suffix = d.dtype.name();
    let attn = Launch {
        grid: (d.num_splits as u32, (d.keys.streams * d.row_tiles()) as u32, d.batch as u32),
        threads: d.variant.threads() as u32,
        shared_bytes: d.shared_bytes(stages) as u32,
    };
    let family = d.variant.family(d.narrow());
    let k = &d.keys;
    let (q, key) = (rt.read(d.q), rt.read(k.key.buf));
    let (seq_lens, block_table) = (rt.read(d.paging.seq_lens), rt.read(d.paging.block_table));
    let shared_key = k.shared_key.as_ref().map(|x| rt.read(x.buf));
    let value = k.value.as_ref().map(|x| rt.read(x.buf));
    let (part_o, part_lse) = match (d.num_splits, workspace) {
        (1, _) => (None, None),
        (n, Some(w)) if R::len(&w.part_lse) >= rows * n && R::len(&w.part_o) >= rows * n * k.dv => {
            (Some(rt.write(&mut w.part_o)), Some(rt.write(&mut w.part_lse)))
        }
        _ => return Err(CudaError::Unsupported("split-KV without a large enough workspace".into())),
    };
    let (out, lse) = (rt.write(d.out.buf), rt.write(d.lse.buf));
    let p = AttnParams {
        q: q.addr,
        ka: key.addr,
        kb: shared_key.as_ref().map_or(0, |x| x.addr),
        v: value.as_ref().map_or(key.addr, |x| x.addr),
        seq_lens: seq_lens.addr,
        block_table: block_table.addr,
        out: out.offset(d.out.margin, eb),
        lse: lse.offset(d.lse.margin, 4),
        part_o: part_o.as_ref().map_or(0, |x| x.addr),
        part_lse: part_lse.as_ref().map_or(0, |x| x.addr),
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
        stages: stages as i32,
        scale: d.scale,
    };
    let mut buffers = vec![q, key, seq_lens, block_table, out, lse];
    buffers.extend(shared_key.into_iter().chain(value).chain(part_o).chain(part_lse));
    // SAFETY: the parameters are AttnParams, every address is one of `buffers`, the host-known
    // extents were checked above and the device-side ones are the caller's contract.
    unsafe { rt.launch(&format!("{family}_{suffix}"), attn, Args::Attn(&p), &buffers) }?;
    if d.num_splits > 1 {
        let combine = Launch {
            grid: (rows as u32, 1, 1),
            threads: THREADS as u32,
            shared_bytes: COMBINE_SHARED_BYTES as u32,
        };
        // SAFETY: as above; the combine kernel reads the partials and writes the outputs.
        unsafe { rt.launch(&format!("attn_combine_{suffix}"), combine, Args::Attn(&p), &buffers) }?;
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

/// Launch the latent → group-cache expansion of the listed tokens (asynchronous), reading the
/// latent through `paging`'s block table (its sequence lengths are not read: `tokens` lists the
/// positions). Every extent the host knows is checked first; what lies in device memory is not.
///
/// # Safety
/// The device-side addressing data must keep the kernel inside the buffers, and the buffers must
/// stay untouched until the launch completes (the next synchronize or download):
/// - each token's sequence is below the block table's rows (`len / max_pages`) and its position
///   below `max_pages · page`;
/// - each block-table entry a token reaches is below `latent slots / page`, where a latent slot
///   is `dc` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn expand_cache<R: Runtime>(
    rt: &R,
    dtype: DType,
    latent: &R::Buf<u8>,
    w_ukv: &R::Buf<u8>,
    tokens: &Tokens<R>,
    paging: &Paging<R>,
    dims: ExpandDims,
    k_out: &mut Guarded<R>,
    v_out: &mut Guarded<R>,
) -> Result<(), CudaError> {
    if tokens.count == 0 {
        return Ok(());
    }
    let (n, eb) = (tokens.count, dtype.size_in_bytes());
    let ExpandDims { g, dc, dn, dv } = dims;
    holds::<R, u8>("the latent cache", latent, paging.page.max(1) * dc * eb)?;
    holds::<R, u8>("the up-projections", w_ukv, g * (dn + dv) * dc * eb)?;
    holds::<R, i32>("the token sequences", tokens.sequences, n * 4)?;
    holds::<R, i32>("the token positions", tokens.positions, n * 4)?;
    holds::<R, i32>("the block table", paging.block_table, paging.max_pages * 4)?;
    holds::<R, u8>("the expanded keys", k_out.buf, (n * g * dn + 2 * k_out.margin) * eb)?;
    holds::<R, u8>("the expanded values", v_out.buf, (n * g * dv + 2 * v_out.margin) * eb)?;
    if paging.page == 0
        || [n, paging.max_pages.saturating_mul(paging.page), g * (dn + dv) * dc]
            .into_iter()
            .any(|v| i32::try_from(v).is_err())
    {
        return Err(CudaError::Unsupported(
            "an empty page, or sizes past the kernel's 32-bit indices".into(),
        ));
    }
    let (latent, w) = (rt.read(latent), rt.read(w_ukv));
    let (tok_b, tok_t, table) = (rt.read(tokens.sequences), rt.read(tokens.positions), rt.read(paging.block_table));
    let (k, v) = (rt.write(k_out.buf), rt.write(v_out.buf));
    let p = ExpandParams {
        latent: latent.addr,
        w: w.addr,
        tok_b: tok_b.addr,
        tok_t: tok_t.addr,
        block_table: table.addr,
        k_out: k.offset(k_out.margin, eb),
        v_out: v.offset(v_out.margin, eb),
        max_pages: paging.max_pages as i32,
        page: paging.page as i32,
        tokens: n as i32,
        g: g as i32,
        dc: dc as i32,
        dn: dn as i32,
        dv: dv as i32,
    };
    let launch = Launch {
        grid: (n.div_ceil(EXPAND_TOKENS) as u32, 1, 1),
        threads: THREADS as u32,
        shared_bytes: (4 * EXPAND_TOKENS * dc) as u32,
    };
    // SAFETY: the parameters are ExpandParams, every address is one of the buffers, the
    // host-known extents were checked above and the device-side ones are the caller's contract.
    unsafe {
        rt.launch(
            &format!("expand_{}", dtype.name()),
            launch,
            Args::Expand(&p),
            &[latent, w, tok_b, tok_t, table, k, v],
        )
    }
}

/// Fill the first `n` elements (of `dtype`) of `buf` with pseudo-random values in amp·[-1, 1)
/// (`fill_*`; deterministic in `seed`).
pub fn fill_random<R: Runtime>(rt: &R, buf: &mut R::Buf<u8>, dtype: DType, n: usize, seed: u32, amp: f32) -> Result<(), CudaError> {
    if n * dtype.size_in_bytes() > R::len(buf) {
        return Err(CudaError::Unsupported(format!(
            "{n} elements of {} in a buffer of {} bytes",
            dtype.name(),
            R::len(buf)
        )));
    }
    let buf = rt.write(buf);
    let p = FillParams {
        p: buf.addr,
        n: n as i64,
        seed,
        amp,
    };
    let launch = Launch {
        grid: (4 * rt.multiprocessors() as u32, 1, 1),
        threads: 256,
        shared_bytes: 0,
    };
    // SAFETY: the parameters are FillParams; the kernel writes elements 0..n of `buf`, which
    // holds them (checked above).
    unsafe { rt.launch(&format!("fill_{}", dtype.name()), launch, Args::Fill(&p), &[buf]) }
}

/// Ways `mma_probe_*` computes the same product (register fragments, then three ldmatrix forms).
pub const MMA_PROBE_WAYS: usize = 4;

/// `n` seeded random values in [-1, 1), rounded to `dtype` (a small LCG: a probe needs varied
/// values, not statistical quality).
fn probe_operand(dtype: DType, seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            dtype.round_f32(((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        })
        .collect()
}

/// The f64 product of row-major `a [m][k]` and the first `n` columns of `b [k][ldb]`, row-major.
fn plain_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ldb: usize) -> Vec<f64> {
    (0..m * n)
        .map(|i| (0..k).map(|j| a[(i / n) * k + j] as f64 * b[j * ldb + i % n] as f64).sum())
        .collect()
}

/// Run probe kernel `name` (one block of `threads`) on operands `a`, `b` with `d_len` f32 outputs.
fn run_probe<R: Runtime>(
    rt: &R,
    name: &str,
    dtype: DType,
    a: &[f32],
    b: &[f32],
    d_len: usize,
    launch: Launch,
) -> Result<Vec<f32>, CudaError> {
    let (ab, bb) = (rt.upload(&to_bytes(dtype, a))?, rt.upload(&to_bytes(dtype, b))?);
    let mut d = rt.zeros::<f32>(d_len)?;
    let buffers = [rt.read(&ab), rt.read(&bb), rt.write(&mut d)];
    let p = ProbeParams {
        a: buffers[0].addr,
        b: buffers[1].addr,
        d: buffers[2].addr,
    };
    // SAFETY: the probes take ProbeParams and read the fixed-size operands and write the products
    // the callers size `a`, `b` and `d_len` for.
    unsafe { rt.launch(&format!("{name}_{}", dtype.name()), launch, Args::Probe(&p), &buffers) }?;
    drop(buffers);
    rt.synchronize()?;
    rt.download(&d)
}

/// Run `mma_probe_<dtype>` on seeded random 16-bit operands A, B `[16][16]`: (the kernel's
/// MMA_PROBE_WAYS products D `[16][16]`, one after the other; the f64 product of the same rounded
/// operands). Checks the tensor-core fragment and ldmatrix layouts on their own.
pub fn mma_probe<R: Runtime>(rt: &R, dtype: DType, seed: u64) -> Result<(Vec<f32>, Vec<f64>), CudaError> {
    if dtype == DType::F32 {
        return Err(CudaError::Unsupported("mma_probe takes bf16 or f16".into()));
    }
    let a = probe_operand(dtype, seed, 256);
    let b = probe_operand(dtype, seed ^ 0x5eed, 256);
    let launch = Launch {
        grid: (1, 1, 1),
        threads: 32,
        shared_bytes: 3 * 256 * 2,
    };
    let got = run_probe(rt, "mma_probe", dtype, &a, &b, MMA_PROBE_WAYS * 256, launch)?;
    Ok((got, plain_product(&a, &b, 16, 16, 16, 16)))
}

/// The shapes (rows, columns) of the products `wgmma_probe_*` writes one after the other:
/// D[:, 0:32] with B K-major (m64n32k16), then D with B MN-major (m64n64k16, then eight m64n8k16).
pub const WGMMA_PROBE_WAYS: [(usize, usize); 3] = [(64, 32), (64, 64), (64, 64)];

/// Run `wgmma_probe_<dtype>` on seeded random A `[64][32]`, B `[32][64]`: (the kernel's products,
/// the f64 products of the same rounded operands, both laid out as [`WGMMA_PROBE_WAYS`]). Checks
/// the wgmma descriptors, core-matrix layouts and accumulator layout the wgmma kernel uses.
pub fn wgmma_probe<R: Runtime>(rt: &R, dtype: DType, seed: u64) -> Result<(Vec<f32>, Vec<f64>), CudaError> {
    if dtype == DType::F32 {
        return Err(CudaError::Unsupported("wgmma_probe takes bf16 or f16".into()));
    }
    if let Some(need) = Variant::Wgmma.missing(rt) {
        return Err(CudaError::Unsupported(format!("wgmma needs {need}")));
    }
    let a = probe_operand(dtype, seed, 64 * 32);
    let b = probe_operand(dtype, seed ^ 0x5eed, 32 * 64);
    let want: Vec<f64> = WGMMA_PROBE_WAYS
        .iter()
        .flat_map(|&(m, n)| plain_product(&a, &b, m, 32, n, 64))
        .collect();
    let launch = Launch {
        grid: (1, 1, 1),
        threads: 128,
        shared_bytes: (64 * 32 + 32 * 32 + 32 * 64) * 2,
    };
    let got = run_probe(rt, "wgmma_probe", dtype, &a, &b, want.len(), launch)?;
    Ok((got, want))
}

/// The elements of probe products `got` that differ from the f64 products `want` (both laid out
/// as `ways`, (rows, columns) each) by more than 1e-5 of the largest magnitude, as
/// "way W (row R, col C): got vs want".
pub fn probe_mismatches(got: &[f32], want: &[f64], ways: &[(usize, usize)]) -> Vec<String> {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut out = Vec::new();
    if got.len() != want.len() {
        out.push(format!("{} results for {} expected", got.len(), want.len()));
    }
    let mut offset = 0;
    for (way, &(_, cols)) in ways.iter().enumerate() {
        let n = ways[way].0 * cols;
        for i in offset..(offset + n).min(got.len()).min(want.len()) {
            let (g, w) = (got[i], want[i]);
            let close = (g as f64 - w).abs() <= 1e-5 * scale; // false for NaN
            if !close {
                out.push(format!(
                    "way {way} (row {}, col {}): {g} vs {w}",
                    (i - offset) / cols,
                    (i - offset) % cols
                ));
            }
        }
        offset += n;
    }
    out
}

/// [`probe_mismatches`] of an `mma_probe` result: MMA_PROBE_WAYS products of the one `[16][16]`
/// product `want` (way 0: register fragments; 1-3: ldmatrix x4.trans, x2.trans, x4 of the
/// transpose).
pub fn mma_probe_mismatches(got: &[f32], want: &[f64]) -> Vec<String> {
    let all: Vec<f64> = want.iter().copied().cycle().take(MMA_PROBE_WAYS * want.len()).collect();
    probe_mismatches(got, &all, &[(16, 16); MMA_PROBE_WAYS])
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
            ("COMBINE_CHUNK", COMBINE_CHUNK),
            ("MMA_WARPS", MMA_THREADS / 32),
            ("MMA_ROWS", MMA_ROWS),
            ("MMA_KEYS", MMA_KEYS),
            ("MMA_PAD", MMA_PAD),
            ("MMA_NARROW_DVH", MMA_NARROW_DV / 2),
            ("MMA_STAGES_MAX", MMA_STAGES_MAX),
        ] {
            let line = format!("#define {name} {value}");
            assert!(crate::compile::SOURCE.contains(&line), "decode.cu lacks `{line}`");
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
            let y = from_bytes(d, &to_bytes(d, &x));
            for (a, b) in x.iter().zip(&y) {
                assert!(
                    d.round_f32(*a).to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{d:?}: {a} -> {b}"
                );
            }
        }
    }
}
