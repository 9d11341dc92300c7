//! A decode launch: the buffers it reads (cache segments, paging, outputs, split workspace), the
//! checks before it, and the attention and combine kernels.

use super::*;
use crate::runtime::{Args, AttnParams, Launch};
use crate::CudaError;
use gqla_conformance::case::DType;

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
pub struct BlockTable<'a, R: Runtime> {
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
    pub paging: BlockTable<'a, R>,
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
    /// bytes (the layouts in kernels/attn_simt.cu and attn_tc.cu).
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
                // plane per warpgroup (the widths in kernels/attn_tc.cu).
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
        let slots = self.cache_slots();
        if self.paging.page == 0 || slots < self.paging.page {
            return Err(CudaError::Unsupported(format!(
                "a cache of {slots} whole slots cannot hold one page of {}",
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
    unsafe { rt.launch(Entry::new(family, d.dtype), attn, Args::Attn(&p), &buffers) }?;
    if d.num_splits > 1 {
        let combine = Launch {
            grid: (rows as u32, 1, 1),
            threads: THREADS as u32,
            shared_bytes: COMBINE_SHARED_BYTES as u32,
        };
        // SAFETY: as above; the combine kernel reads the partials and writes the outputs.
        unsafe { rt.launch(Entry::new(Family::AttnCombine, d.dtype), combine, Args::Attn(&p), &buffers) }?;
    }
    Ok(())
}
