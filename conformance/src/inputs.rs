//! The concrete inputs of a case, drawn from its seed.
//!
//! Caches are stored the way kernels see them: contiguous [B, capacity, width] or paged
//! [pages, page, width] with a block table. Memory a correct kernel never reads is poisoned: dead
//! slots past each sequence, the tail of its last page, unused pages (and the null page 0) hold
//! NaN (or, for a `poison=garbage` twin, finite random values), and block-table entries past a
//! sequence's pages hold a huge invalid id.

use crate::case::{Case, Logits, Op, Poison};
use crate::definition::TensorName;
use crate::profile::ScaleRead;
use gqla_reference::fp8::{Fp8, TiledRecord};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::ops::Range;

/// Block-table entries past a sequence's last page: far out of range, so an over-read faults or
/// reads poison rather than a neighbour's data.
pub const INVALID_PAGE: i32 = i32::MAX - 7;

/// How cache slots are laid out.
#[derive(Clone, Debug, PartialEq)]
pub enum Paging {
    /// Sequence b's token t is slot b·capacity + t.
    Contiguous { capacity: usize },
    /// Token t of sequence b is slot block_table[b·max_pages + t/page]·page + t%page.
    Paged {
        page: usize,
        num_pages: usize,
        max_pages: usize,
        block_table: Vec<i32>,
    },
}

/// One cache component (e.g. the latent rows, or the values), one row of `width` elements of its
/// storage per slot (values, or a record's bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    pub name: TensorName,
    pub width: usize,
    pub storage: Storage,
}

/// How a cache component stores its rows.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// Values of the case dtype, held as f32 (exactly).
    Values(Vec<f32>),
    /// One FP8 tiled record per slot, `record.bytes()` bytes each (`kv=tiled`).
    Tiled { record: TiledRecord, bytes: Vec<u8> },
    /// One `fp8` byte per value, x = fp8 × `scale` (`kv=fp8`).
    PerTensor { fp8: Fp8, scale: f32, bytes: Vec<u8> },
}

impl Component {
    /// The values of a component stored in the case dtype (None: FP8 records).
    pub fn values(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Values(v) => Some(v),
            _ => None,
        }
    }
    pub fn values_mut(&mut self) -> Option<&mut Vec<f32>> {
        match &mut self.storage {
            Storage::Values(v) => Some(v),
            _ => None,
        }
    }
    /// The bytes of a component stored as FP8 records, with their format (None: values).
    pub fn records(&self) -> Option<(&TiledRecord, &[u8])> {
        match &self.storage {
            Storage::Tiled { record, bytes } => Some((record, bytes)),
            _ => None,
        }
    }
    /// The bytes of a per-tensor FP8 component, with its flavour and scale.
    pub fn per_tensor(&self) -> Option<(Fp8, f32, &[u8])> {
        match &self.storage {
            Storage::PerTensor { fp8, scale, bytes } => Some((*fp8, *scale, bytes)),
            _ => None,
        }
    }
    /// The stored bytes of an FP8 component, tiled or per-tensor (None: values).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.storage {
            Storage::Values(_) => None,
            Storage::Tiled { bytes, .. } | Storage::PerTensor { bytes, .. } => Some(bytes),
        }
    }
    /// Elements stored (values or bytes).
    pub fn len(&self) -> usize {
        match &self.storage {
            Storage::Values(v) => v.len(),
            Storage::Tiled { bytes, .. } | Storage::PerTensor { bytes, .. } => bytes.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A KV cache of one or more components sharing the same slots.
#[derive(Clone, Debug, PartialEq)]
pub struct KvCache {
    pub paging: Paging,
    pub seq_lens: Vec<usize>,
    pub components: Vec<Component>,
}

impl KvCache {
    /// The physical slot of token t of sequence b.
    pub fn slot(&self, b: usize, t: usize) -> usize {
        match &self.paging {
            Paging::Contiguous { capacity } => b * capacity + t,
            Paging::Paged {
                page,
                max_pages,
                block_table,
                ..
            } => block_table[b * max_pages + t / page] as usize * page + t % page,
        }
    }
    pub fn component(&self, name: TensorName) -> &Component {
        self.components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cache component `{name}`"))
    }
    /// Row of component `name` for token t of sequence b, of a component stored as values (a
    /// kernel that reads FP8 records reads them with [`KvCache::record`]).
    pub fn row(&self, name: TensorName, b: usize, t: usize) -> &[f32] {
        let c = self.component(name);
        let s = self.slot(b, t);
        let values = c
            .values()
            .unwrap_or_else(|| panic!("cache component `{name}` holds FP8 bytes, not values"));
        &values[s * c.width..(s + 1) * c.width]
    }
    /// The FP8 record of component `name` for token t of sequence b, with its format (None: the
    /// component holds values).
    pub fn record(&self, name: TensorName, b: usize, t: usize) -> Option<(&TiledRecord, &[u8])> {
        let c = self.component(name);
        let s = self.slot(b, t);
        c.records().map(|(r, bytes)| (r, &bytes[s * c.width..(s + 1) * c.width]))
    }
    /// The per-tensor FP8 bytes of row (b, t) of component `name`, with their flavour and scale
    /// (None: the component is not per-tensor FP8).
    pub fn per_tensor_row(&self, name: TensorName, b: usize, t: usize) -> Option<(Fp8, f32, &[u8])> {
        let c = self.component(name);
        let s = self.slot(b, t);
        c.per_tensor()
            .map(|(fp8, scale, bytes)| (fp8, scale, &bytes[s * c.width..(s + 1) * c.width]))
    }
    /// Columns `cols` of row (b, t) of component `name`, exactly, in f64: a record dequantised
    /// (SPEC.md F1), values as they are. The reference's only way into the cache.
    pub fn exact_values(&self, name: TensorName, b: usize, t: usize, cols: Range<usize>) -> Vec<f64> {
        if let Some((fp8, scale, bytes)) = self.per_tensor_row(name, b, t) {
            return bytes[cols].iter().map(|&q| fp8.decode(q) * scale as f64).collect();
        }
        match self.record(name, b, t) {
            None => self.row(name, b, t)[cols].iter().map(|&x| x as f64).collect(),
            Some((r, bytes)) => {
                let mut row = vec![0.0; r.d_c() + r.d_r()];
                let (c, k_rope) = row.split_at_mut(r.d_c());
                r.read(bytes, c, k_rope);
                row[cols].to_vec()
            }
        }
    }
    /// Columns `cols` of row (b, t) of component `name` as a kernel that dequantises as `read`
    /// declares reads them: each FP8 value times its f32 scale, rounded to f32 (exact for
    /// power-of-two scales), or, for a tiled record's scales read in bf16, times its bf16-rounded
    /// scale, rounded to bf16.
    pub fn f32_values(&self, name: TensorName, b: usize, t: usize, cols: Range<usize>, read: ScaleRead) -> Cow<'_, [f32]> {
        // A per-tensor scale is an f32 input every reader multiplies by (vLLM, FlashInfer): the
        // profile's `scale_read` is about tiled records' stored scales.
        if let Some((fp8, scale, bytes)) = self.per_tensor_row(name, b, t) {
            return Cow::Owned(bytes[cols].iter().map(|&q| fp8.decode(q) as f32 * scale).collect());
        }
        match self.record(name, b, t) {
            None => Cow::Borrowed(&self.row(name, b, t)[cols]),
            Some((r, bytes)) => {
                let mut row = vec![0.0; r.d_c() + r.d_r()];
                let (c, k_rope) = row.split_at_mut(r.d_c());
                match read {
                    ScaleRead::Pow2 | ScaleRead::ArbitraryF32 => r.read_f32(bytes, c, k_rope),
                    ScaleRead::ArbitraryBf16 => r.read_bf16_scales(bytes, c, k_rope),
                }
                Cow::Owned(row[cols].to_vec())
            }
        }
    }
    /// Total slots per component.
    pub fn slots(&self) -> usize {
        match &self.paging {
            Paging::Contiguous { capacity } => capacity * self.seq_lens.len(),
            Paging::Paged { page, num_pages, .. } => page * num_pages,
        }
    }
}

/// Everything a kernel gets for one case.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseInputs {
    pub case: Case,
    /// Queries [B, s_q, H, q_width] (empty for cache.expand).
    pub q: Vec<f32>,
    pub scale: f32,
    pub cache: KvCache,
    /// cache.expand only: W^UKV [G(d_n + d_v), d_c], group-major, keys first.
    pub w_ukv: Vec<f32>,
}

/// The cache components an operation reads, with their widths: the cache tensors of its
/// definition (see [`crate::definition::cache_components`]).
pub fn components(case: &Case) -> Vec<(TensorName, usize)> {
    crate::definition::cache_components(case)
}

/// What a `poison=garbage` twin negates besides its poison, and so which of its outputs come out
/// negated: values enter attention (and cache.expand) linearly, so negating them negates those
/// outputs exactly (round-to-nearest is symmetric) while the scores, and the LSE, stay bit for
/// bit. A copy of the NaN twin's output file then fails; an honest kernel passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The cache component whose live rows are negated, and which of its columns.
    pub cache: (TensorName, std::ops::Range<usize>),
    /// The columns of each query vector negated with them (the absorb path, whose value c is
    /// also its no-rope key: q^N·c keeps its products, (−q)(−c) = qc exactly).
    pub query_columns: std::ops::Range<usize>,
    /// The outputs that come out negated; every other output stays bitwise the same.
    pub outputs: &'static [TensorName],
}

impl Mirror {
    pub fn of(case: &Case) -> Self {
        let (cache, query_columns, outputs): (_, _, &'static [TensorName]) = match case.op() {
            Op::DecodeAbsorb => ((TensorName::Kv, 0..case.dc()), 0..case.dc(), &[TensorName::Out]),
            Op::DecodeGqa | Op::GqaDecode => ((TensorName::V, 0..case.g() * case.dv()), 0..0, &[TensorName::Out]),
            Op::CacheExpand => ((TensorName::Latent, 0..case.dc()), 0..0, &[TensorName::K, TensorName::V]),
        };
        Mirror {
            cache,
            query_columns,
            outputs,
        }
    }
}

/// The magnitude tile t of a tiled cache's latent is drawn at: 1/4 for even tiles, 2 for odd
/// ones. Neighbouring tiles then get scales 8× apart (a kernel that takes a neighbour's scale is
/// far off), as a real latent's channels differ in magnitude.
pub fn tile_gain(t: usize) -> f32 {
    if t.is_multiple_of(2) {
        0.25
    } else {
        2.0
    }
}

/// The key each sequence's queries all favour in a `logits=dominant` case: ctx_b / 2, which every
/// new token sees (None for a padding row).
pub fn dominant_key(case: &Case, b: usize) -> Option<usize> {
    case.ctx()[b].map(|c| c / 2)
}

/// `logits=dominant`: add to every query row the multiple of its stream's dominant key that lifts
/// that key's scaled logit by 40, then round to the case dtype. Lifting along the whole key moves
/// another key's logit by 40 · cos(k, k*) · |k| / |k*|, a few units in these widths. A garbage
/// twin's mirrored key columns are negated in its query too, so it stays the mirror image.
fn dominate(case: &Case, cache: &KvCache, q: &mut [f32]) {
    const LIFT: f64 = 40.0;
    let (width, sq, h) = (case.q_width(), case.sq(), case.h());
    let per = if case.op() == Op::DecodeAbsorb { h } else { h / case.g() };
    for b in 0..case.batch() {
        let Some(t) = dominant_key(case, b) else { continue };
        for i in 0..h {
            let g = i / per;
            let key: Vec<f64> = match case.op() {
                Op::DecodeAbsorb => cache.exact_values(TensorName::Kv, b, t, 0..width),
                Op::DecodeGqa => match case.layout() {
                    crate::case::GroupCacheLayout::RopeOnce => {
                        let mut k = cache.exact_values(TensorName::KNope, b, t, g * case.dn()..(g + 1) * case.dn());
                        k.extend(cache.exact_values(TensorName::KRope, b, t, 0..case.dr()));
                        k
                    }
                    crate::case::GroupCacheLayout::RopePerGroup => cache.exact_values(TensorName::K, b, t, g * width..(g + 1) * width),
                },
                Op::GqaDecode => cache.exact_values(TensorName::K, b, t, g * width..(g + 1) * width),
                Op::CacheExpand => return,
            };
            let norm2: f64 = key.iter().map(|x| x * x).sum();
            if norm2 == 0.0 {
                continue;
            }
            let beta = LIFT / (case.scale() as f64 * norm2);
            for j in 0..sq {
                let row = ((b * sq + j) * h + i) * width;
                for (x, k) in q[row..row + width].iter_mut().zip(&key) {
                    *x = case.dtype().round_f32((*x as f64 + beta * k) as f32);
                }
            }
        }
    }
}

/// The scale edges a tiled cache holds on purpose, by token t (every 11 tokens, the tile
/// t mod tiles): an all-zero tile (t ≡ 5: the scale floor, 2^-13 for pow2 scales), a tile whose
/// amax is exactly 448·2^k (t ≡ 7: its largest value is the format's max, byte 0x7e), one bf16
/// ulp above it (t ≡ 9: the next power of two), and amax 336·2^k (t ≡ 3: an arbitrary scale of
/// 0.75·2^k exactly). The values exceed the tile's drawn ones (gain 1/4: |x| < 1.75 as drawn
/// values go; gain 2: < 14), keep the mirror's signs, and depend on t alone, so twins agree.
fn tile_probe(record: &TiledRecord, t: usize, row: &mut [f32], negated: &Range<usize>) {
    let tile = t % record.tiles();
    let cols = tile * record.tile()..(tile + 1) * record.tile();
    let edge = if tile.is_multiple_of(2) { 1.75f32 } else { 14.0 }; // 448 · 2^-8, 448 · 2^-5
    let value = match t % 11 {
        5 => {
            for j in cols {
                row[j] = if negated.contains(&j) { -0.0 } else { 0.0 };
            }
            return;
        }
        7 => edge,
        9 => bf16::from_bits(bf16::from_f32(edge).to_bits() + 1).to_f32(),
        3 => edge * 0.75,
        _ => return,
    };
    let j = cols.start + t % record.tile();
    row[j] = if negated.contains(&j) { -value } else { value };
}

/// Quantize one drawn row [c; k^R] (bf16 values) into its tiled record.
fn write_record(record: &TiledRecord, row: &[f32], bytes: &mut [u8]) {
    let (c, k_rope) = row.split_at(record.d_c());
    let k_rope: Vec<bf16> = k_rope.iter().map(|&x| bf16::from_f32(x)).collect();
    record.write(c, &k_rope, bytes);
}

/// Keys each batch row holds.
fn seq_lens(case: &Case) -> Vec<usize> {
    (0..case.batch()).map(|b| case.seq_len(b)).collect()
}

fn normal(rng: &mut ChaCha8Rng) -> f32 {
    // The ziggurat of rand_distr: no transcendental per draw (Box–Muller's cos was a tenth of a
    // certification's time).
    rng.sample(rand_distr::StandardNormal)
}

impl CaseInputs {
    /// Draw the inputs of `case` from its seed.
    pub fn generate(case: &Case) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(case.seed() ^ 0x6751_4c41_5f43_4153);
        let lens = seq_lens(case);
        let batch = case.batch();
        let paging = match case.page() {
            None => Paging::Contiguous {
                capacity: lens.iter().copied().max().unwrap_or(0) + 3,
            },
            Some(page) => {
                let pages_of = |l: usize| l.div_ceil(page);
                let max_pages = lens.iter().map(|&l| pages_of(l)).max().unwrap_or(0) + 1;
                let used: usize = lens.iter().map(|&l| pages_of(l)).sum();
                let num_pages = 3 * used + 2; // page 0 is the null page; the pool is oversized
                let mut free: Vec<i32> = (1..num_pages as i32).collect();
                for i in (1..free.len()).rev() {
                    free.swap(i, rng.random_range(0..=i));
                }
                let mut block_table = vec![INVALID_PAGE; batch * max_pages];
                let mut next = free.into_iter();
                for (b, &l) in lens.iter().enumerate() {
                    for p in 0..pages_of(l) {
                        block_table[b * max_pages + p] = next.next().expect("pool is oversized");
                    }
                }
                Paging::Paged {
                    page,
                    num_pages,
                    max_pages,
                    block_table,
                }
            }
        };
        let mut cache = KvCache {
            paging,
            seq_lens: lens.clone(),
            components: vec![],
        };
        let slots = cache.slots();
        // Poison from its own stream, so that a garbage twin's live data is its NaN twin's.
        let mut poison_rng = ChaCha8Rng::seed_from_u64(case.seed() ^ 0x504f_4953_4f4e_2121);
        let dtype = case.dtype();
        let record = case.tiled_record();
        for (name, width) in components(case) {
            if let Some((fp8, k_scale, v_scale)) = case.kv().per_tensor() {
                let scale = if name == TensorName::V { v_scale } else { k_scale };
                let bytes = match case.poison() {
                    Poison::Nan => vec![fp8.nan(); slots * width],
                    Poison::Garbage => (0..slots * width)
                        .map(|_| fp8.encode_clamped(dtype.round_f32(normal(&mut poison_rng)) / scale))
                        .collect(),
                };
                cache.components.push(Component {
                    name,
                    width,
                    storage: Storage::PerTensor { fp8, scale, bytes },
                });
                continue;
            }
            let storage = match (record, case.poison()) {
                (None, Poison::Nan) => Storage::Values(vec![f32::NAN; slots * width]),
                (None, Poison::Garbage) => Storage::Values((0..slots * width).map(|_| dtype.round_f32(normal(&mut poison_rng))).collect()),
                (Some(record), Poison::Nan) => {
                    let mut bytes = vec![0; slots * width];
                    bytes.chunks_exact_mut(width).for_each(|r| record.poison(r));
                    Storage::Tiled { record, bytes }
                }
                (Some(record), Poison::Garbage) => {
                    let mut bytes = vec![0; slots * width];
                    let mut row = vec![0.0; record.d_c() + record.d_r()];
                    for r in bytes.chunks_exact_mut(width) {
                        row.iter_mut().for_each(|v| *v = dtype.round_f32(normal(&mut poison_rng)));
                        write_record(&record, &row, r);
                    }
                    Storage::Tiled { record, bytes }
                }
            };
            cache.components.push(Component { name, width, storage });
        }
        // A garbage twin draws the same live values, its mirrored ones negated (see `Mirror`).
        let mirror = (case.poison() == Poison::Garbage).then(|| Mirror::of(case));
        for ci in 0..cache.components.len() {
            let negated = mirror
                .as_ref()
                .filter(|m| m.cache.0 == cache.components[ci].name)
                .map_or(0..0, |m| m.cache.1.clone());
            // The values of a row, as drawn, with their gains: a record quantizes them, its
            // tiles drawn at alternating magnitudes (see `tile_gain`).
            let gains: Vec<f32> = match &cache.components[ci].storage {
                Storage::Values(_) | Storage::PerTensor { .. } => vec![1.0; cache.components[ci].width],
                Storage::Tiled { record, .. } => (0..record.d_c())
                    .map(|j| tile_gain(j / record.tile()))
                    .chain(std::iter::repeat_n(1.0, record.d_r()))
                    .collect(),
            };
            let mut row = vec![0.0f32; gains.len()];
            for (b, &l) in lens.iter().enumerate() {
                for t in 0..l {
                    for (j, v) in row.iter_mut().enumerate() {
                        let x = dtype.round_f32(gains[j] * normal(&mut rng));
                        *v = if negated.contains(&j) { -x } else { x };
                    }
                    let s = cache.slot(b, t);
                    let component = &mut cache.components[ci];
                    let width = component.width;
                    match &mut component.storage {
                        Storage::Values(data) => data[s * width..(s + 1) * width].copy_from_slice(&row),
                        Storage::Tiled { record, bytes } => {
                            tile_probe(record, t, &mut row, &negated);
                            write_record(record, &row, &mut bytes[s * width..(s + 1) * width])
                        }
                        Storage::PerTensor { fp8, scale, bytes } => bytes[s * width..(s + 1) * width]
                            .iter_mut()
                            .zip(&row)
                            .for_each(|(q, x)| *q = fp8.encode_clamped(x / *scale)),
                    }
                }
            }
        }
        let scale = case.scale();
        let q_width = case.q_width();
        let n_q = batch * case.sq() * case.h() * q_width;
        // Queries scaled so that scaled logits scale·q·k have the target standard deviation.
        let target = match case.logits() {
            Logits::Normal | Logits::Dominant => 3.0,
            Logits::Large => 300.0,
        };
        let q_gain = if q_width > 0 {
            target / (scale * (q_width as f32).sqrt())
        } else {
            0.0
        };
        let negated = mirror.map_or(0..0, |m| m.query_columns);
        let q = if case.op() == Op::CacheExpand {
            vec![]
        } else {
            (0..n_q)
                .map(|i| {
                    let x = dtype.round_f32(q_gain * normal(&mut rng));
                    if negated.contains(&(i % q_width)) {
                        -x
                    } else {
                        x
                    }
                })
                .collect()
        };
        let mut q = q;
        if case.logits() == Logits::Dominant {
            dominate(case, &cache, &mut q);
        }
        let w_ukv = if case.op() == Op::CacheExpand {
            let n = case.g() * (case.dn() + case.dv()) * case.dc();
            let gain = 1.0 / (case.dc() as f32).sqrt();
            (0..n).map(|_| dtype.round_f32(gain * normal(&mut rng))).collect()
        } else {
            vec![]
        };
        CaseInputs {
            case: case.clone(),
            q,
            scale,
            cache,
            w_ukv,
        }
    }

    /// Whether every input is bitwise the same as `other`'s (NaN poison included): a kernel that
    /// wrote to its copy of the inputs differs.
    pub fn same_bits(&self, other: &CaseInputs) -> bool {
        // Whole chunks compared without an early exit, so that the comparison vectorises.
        let floats = |a: &[f32], b: &[f32]| {
            a.len() == b.len()
                && a.chunks(256)
                    .zip(b.chunks(256))
                    .all(|(x, y)| x.iter().zip(y).fold(true, |same, (p, q)| same & (p.to_bits() == q.to_bits())))
        };
        floats(&self.q, &other.q)
            && floats(&self.w_ukv, &other.w_ukv)
            && self.scale.to_bits() == other.scale.to_bits()
            && self.cache.paging == other.cache.paging
            && self.cache.seq_lens == other.cache.seq_lens
            && self.cache.components.len() == other.cache.components.len()
            && self.cache.components.iter().zip(&other.cache.components).all(|(a, b)| {
                a.name == b.name
                    && a.width == b.width
                    && match (&a.storage, &b.storage) {
                        (Storage::Values(x), Storage::Values(y)) => floats(x, y),
                        (Storage::Tiled { record: r, bytes: x }, Storage::Tiled { record: s, bytes: y }) => r == s && x == y,
                        (
                            Storage::PerTensor {
                                fp8: f,
                                scale: s,
                                bytes: x,
                            },
                            Storage::PerTensor {
                                fp8: g,
                                scale: t,
                                bytes: y,
                            },
                        ) => f == g && s.to_bits() == t.to_bits() && x == y,
                        _ => false,
                    }
            })
    }

    /// Query row of (b, j, i) (sequence, new token, head).
    pub fn q_row(&self, b: usize, j: usize, i: usize) -> &[f32] {
        let w = self.case.q_width();
        let idx = ((b * self.case.sq() + j) * self.case.h() + i) * w;
        &self.q[idx..idx + w]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gqla_reference::fp8::{Fp8, RecordField};

    const TILED: &str = "gqla.decode.absorb:h=16;dc=256;dn=64;dr=32;sq=1;ctx=65,130,3;page=16;dtype=bf16;kv=tiled;tile=64;scales=pow2";

    /// A tiled cache holds, in every live slot, the record the reference writer makes of values
    /// drawn like a native case's (bf16), every tile's scale a power of two covering its amax;
    /// every other slot is NaN in every field.
    #[test]
    fn tiled_caches_hold_written_records_and_nan_elsewhere() {
        let case: Case = format!("{TILED};seed=5").parse().unwrap();
        let inp = CaseInputs::generate(&case);
        let kv = inp.cache.component(TensorName::Kv);
        let (record, bytes) = kv.records().expect("a tiled cache holds records");
        assert_eq!((kv.width, record.bytes()), (256 + 4 * 4 + 2 * 32, 336));
        assert_eq!(bytes.len(), inp.cache.slots() * kv.width);
        let mut live = vec![false; inp.cache.slots()];
        for b in 0..case.batch() {
            for t in 0..case.seq_len(b) {
                live[inp.cache.slot(b, t)] = true;
                let (_, r) = inp.cache.record(TensorName::Kv, b, t).unwrap();
                let row = inp.cache.exact_values(TensorName::Kv, b, t, 0..288);
                assert!(row.iter().all(|x| x.is_finite()) && row[..256].iter().any(|&x| x != 0.0));
                for tile in 0..4 {
                    let s = record.scale(r, tile);
                    assert!(s > 0.0 && s.to_bits() & 0x7f_ffff == 0, "scale {s} is a power of two");
                    let amax = row[tile * 64..(tile + 1) * 64].iter().fold(0f64, |m, x| m.max(x.abs()));
                    let floor = amax == 0.0 && s == 2f32.powi(-13);
                    assert!(
                        floor || (amax <= 448.0 * s as f64 && amax >= 224.0 * s as f64 * 0.9),
                        "amax {amax} at scale {s}"
                    );
                }
                // The RoPE key is stored unquantized: the f32 reader gives the exact values.
                let f32_row = inp.cache.f32_values(TensorName::Kv, b, t, 0..288, ScaleRead::ArbitraryF32);
                assert!(
                    f32_row.iter().zip(&row).all(|(a, b)| *a as f64 == *b),
                    "pow2 scales read exactly in f32"
                );
            }
        }
        for (s, _) in live.iter().enumerate().filter(|(_, l)| !**l) {
            let r = &bytes[s * kv.width..(s + 1) * kv.width];
            for (offset, &byte) in r.iter().enumerate() {
                let nan = match record.field(offset) {
                    RecordField::Latent { index } => Fp8::E4m3fn.decode(r[index]).is_nan(),
                    RecordField::Scale { tile, .. } => record.scale(r, tile).is_nan(),
                    RecordField::Rope { index, .. } => {
                        let at = record.rope_offset() + 2 * index;
                        half::bf16::from_bits(u16::from_le_bytes([r[at], r[at + 1]])).is_nan()
                    }
                };
                assert!(nan, "slot {s}, byte {offset} ({byte:#x}) is not poison");
            }
        }
    }

    /// The garbage twin of a tiled case: finite records in the dead slots, and in the live ones
    /// its NaN twin's records with every latent byte's sign flipped (the same scales and RoPE
    /// bytes): the values negated exactly, as `Mirror` says.
    #[test]
    fn a_tiled_garbage_twin_mirrors_the_latent_by_sign_bits() {
        let twin: Case = format!("{TILED};poison=garbage;seed=5").parse().unwrap();
        let (a, b) = (CaseInputs::generate(&twin.nan_twin().unwrap()), CaseInputs::generate(&twin));
        let (record, _) = a.cache.component(TensorName::Kv).records().unwrap();
        let mut flipped = 0;
        for s in 0..twin.batch() {
            for t in 0..twin.seq_len(s) {
                let (_, x) = a.cache.record(TensorName::Kv, s, t).unwrap();
                let (_, y) = b.cache.record(TensorName::Kv, s, t).unwrap();
                for i in 0..record.bytes() {
                    if i < record.d_c() {
                        assert_eq!(x[i] ^ 0x80, y[i], "latent byte {i} of ({s}, {t})");
                        flipped += 1;
                    } else {
                        assert_eq!(x[i], y[i], "byte {i} of ({s}, {t}) is not mirrored");
                    }
                }
            }
        }
        assert!(flipped > 0);
        let (_, bytes) = b.cache.component(TensorName::Kv).records().unwrap();
        let mut dead = 0;
        for r in bytes.chunks_exact(record.bytes()) {
            let mut c = vec![0.0; record.d_c()];
            let mut k = vec![0.0; record.d_r()];
            record.read(r, &mut c, &mut k);
            assert!(c.iter().chain(&k).all(|x| x.is_finite()), "garbage records are finite");
            dead += 1;
        }
        assert_eq!(dead, b.cache.slots());
    }

    /// The scale edges every tiled cache holds: an all-zero tile at the floor's scale 2^-13, a tile
    /// at exactly the format's max (byte 0x7e or 0xfe) under 2^-8, one bf16 ulp above it under
    /// 2^-7, and with amax scales, 0.75 · 2^-8 exactly.
    #[test]
    fn tiled_caches_hold_the_scale_edges() {
        let case: Case = format!("{TILED};seed=5").parse().unwrap();
        let inp = CaseInputs::generate(&case);
        let amax = CaseInputs::generate(&format!("{TILED};seed=5").replace("scales=pow2", "scales=amax").parse().unwrap());
        let mut seen = [false; 5];
        for t in 0..case.seq_len(1) {
            let (record, r) = inp.cache.record(TensorName::Kv, 1, t).unwrap();
            let tile = t % record.tiles();
            let (first, scale) = (r[tile * record.tile() + t % record.tile()], record.scale(r, tile));
            match t % 11 {
                5 => {
                    assert!(r[tile * 64..(tile + 1) * 64].iter().all(|&q| q & 0x7f == 0) && scale == 2f32.powi(-13));
                    seen[0] = true;
                }
                7 if tile % 2 == 0 => {
                    assert_eq!((first & 0x7f, scale), (0x7e, 2f32.powi(-8)));
                    seen[1] = true;
                }
                9 if tile % 2 == 0 => {
                    assert_eq!(scale, 2f32.powi(-7), "one ulp above 448 · 2^-8");
                    seen[2] = true;
                }
                3 if tile % 2 == 0 => {
                    let (record, r) = amax.cache.record(TensorName::Kv, 1, t).unwrap();
                    assert_eq!(record.scale(r, tile), 0.75 * 2f32.powi(-8));
                    seen[3] = true;
                }
                7 => {
                    assert_eq!((first & 0x7f, scale), (0x7e, 2f32.powi(-5)));
                    seen[4] = true;
                }
                _ => {}
            }
        }
        assert_eq!(seen, [true; 5]);
    }
}
