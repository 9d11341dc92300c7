//! The concrete inputs of a case, drawn from its seed.
//!
//! Caches are stored the way kernels see them: contiguous [B, capacity, width] or paged
//! [pages, page, width] with a block table. Memory a correct kernel never reads is poisoned: dead
//! slots past each sequence, the tail of its last page, unused pages (and the null page 0) hold
//! NaN (or, for a `poison=garbage` twin, finite random values), and block-table entries past a
//! sequence's pages hold a huge invalid id.

use crate::case::{Case, Logits, Op, Poison};
use crate::definition::TensorName;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// One cache component (e.g. the latent rows, or the values), one row of `width` per slot.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    pub name: TensorName,
    pub width: usize,
    pub data: Vec<f32>,
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
    /// Row of component `name` for token t of sequence b.
    pub fn row(&self, name: TensorName, b: usize, t: usize) -> &[f32] {
        let c = self.component(name);
        let s = self.slot(b, t);
        &c.data[s * c.width..(s + 1) * c.width]
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
        for (name, width) in components(case) {
            let data = match case.poison() {
                Poison::Nan => vec![f32::NAN; slots * width],
                Poison::Garbage => (0..slots * width)
                    .map(|_| case.dtype().round_f32(normal(&mut poison_rng)))
                    .collect(),
            };
            cache.components.push(Component { name, width, data });
        }
        let dtype = case.dtype();
        // A garbage twin draws the same live values, its mirrored ones negated (see `Mirror`).
        let mirror = (case.poison() == Poison::Garbage).then(|| Mirror::of(case));
        for ci in 0..cache.components.len() {
            let width = cache.components[ci].width;
            let negated = mirror
                .as_ref()
                .filter(|m| m.cache.0 == cache.components[ci].name)
                .map_or(0..0, |m| m.cache.1.clone());
            for (b, &l) in lens.iter().enumerate() {
                for t in 0..l {
                    let s = cache.slot(b, t);
                    for (j, v) in cache.components[ci].data[s * width..(s + 1) * width].iter_mut().enumerate() {
                        let x = dtype.round_f32(normal(&mut rng));
                        *v = if negated.contains(&j) { -x } else { x };
                    }
                }
            }
        }
        let scale = case.scale();
        let q_width = case.q_width();
        let n_q = batch * case.sq() * case.h() * q_width;
        // Queries scaled so that scaled logits scale·q·k have the target standard deviation.
        let target = match case.logits() {
            Logits::Normal => 3.0,
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
            && self
                .cache
                .components
                .iter()
                .zip(&other.cache.components)
                .all(|(a, b)| a.name == b.name && a.width == b.width && floats(&a.data, &b.data))
    }

    /// Query row of (b, j, i) (sequence, new token, head).
    pub fn q_row(&self, b: usize, j: usize, i: usize) -> &[f32] {
        let w = self.case.q_width();
        let idx = ((b * self.case.sq() + j) * self.case.h() + i) * w;
        &self.q[idx..idx + w]
    }
}
