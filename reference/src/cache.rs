//! KV caches as real data structures: each reports its size from the buffers it allocated.
//!
//! - [`LatentCache`]: the MQA-absorb cache, one row [c_t; k^R_t] of d_c + d_r per token.
//! - [`GroupCache`]: the GQA-path cache, k_{g,t} = W^{UK}_g c_t and v_{g,t} = W^{UV}_g c_t for the
//!   groups it holds, plus k^R_t stored once ([`GroupCacheLayout::RopeOnce`], G(d_n+d_v)+d_r per
//!   token) or copied into every group's key ([`GroupCacheLayout::RopePerGroup`], G(d_n+d_r+d_v)).
//! - [`GqaCache`]: a plain GQA cache, K and V of KV heads × head dim (after RoPE).
//!
//! Caches are generic over the stored element so that sizes can be measured in bf16/f16 as well.

use crate::config::{GqaDims, LatentDims};
use crate::error::{GeometryError, Result};
use ndarray::{s, Array2, ArrayView2};
use std::ops::Range;

/// A growable [tokens, width] buffer of one cache component.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBuffer<E> {
    width: usize,
    data: Vec<E>,
}

impl<E: Copy + Default> TokenBuffer<E> {
    pub fn new(width: usize) -> Self {
        Self { width, data: Vec::new() }
    }
    /// A buffer of `tokens` default-valued rows (for size measurement and pre-allocation).
    pub fn filled(width: usize, tokens: usize) -> Self {
        Self {
            width,
            data: vec![E::default(); width * tokens],
        }
    }
    pub fn width(&self) -> usize {
        self.width
    }
    /// Tokens held. A zero-width buffer holds no data and reports no tokens.
    pub fn tokens(&self) -> usize {
        self.data.len().checked_div(self.width).unwrap_or(0)
    }
    /// Append one token's row.
    pub fn push(&mut self, row: &[E]) {
        assert_eq!(row.len(), self.width, "TokenBuffer::push: row width");
        self.data.extend_from_slice(row);
    }
    pub fn row(&self, t: usize) -> &[E] {
        &self.data[t * self.width..(t + 1) * self.width]
    }
    pub fn view(&self) -> ArrayView2<'_, E> {
        ArrayView2::from_shape((self.tokens(), self.width), &self.data).expect("buffer is [tokens, width]")
    }
    /// Bytes of stored elements.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.data.as_slice())
    }
    /// Elements stored.
    pub fn elements(&self) -> usize {
        self.data.len()
    }
}

/// What a cache occupies per token, measured from its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Footprint {
    pub elements_per_token: usize,
    pub bytes_per_token: usize,
}

fn footprint<E: Copy + Default>(tokens: usize, buffers: &[&TokenBuffer<E>]) -> Option<Footprint> {
    if tokens == 0 {
        return None;
    }
    let elements: usize = buffers.iter().map(|b| b.elements()).sum();
    let bytes: usize = buffers.iter().map(|b| b.bytes()).sum();
    Some(Footprint {
        elements_per_token: elements / tokens,
        bytes_per_token: bytes / tokens,
    })
}

/// The MQA-absorb cache: rows [c_t (d_c); k^R_t (d_r)].
#[derive(Clone, Debug, PartialEq)]
pub struct LatentCache<E> {
    d_c: usize,
    d_r: usize,
    rows: TokenBuffer<E>,
}

impl<E: Copy + Default> LatentCache<E> {
    /// An empty cache for the latent and rope widths of `dims`.
    pub fn new(dims: &LatentDims) -> Self {
        let (d_c, d_r) = (dims.d_c(), dims.d_r());
        Self {
            d_c,
            d_r,
            rows: TokenBuffer::new(d_c + d_r),
        }
    }
    /// A cache of `tokens` default-valued rows.
    pub fn filled(dims: &LatentDims, tokens: usize) -> Self {
        let mut c = Self::new(dims);
        c.rows = TokenBuffer::filled(c.rows.width(), tokens);
        c
    }
    pub fn d_c(&self) -> usize {
        self.d_c
    }
    pub fn d_r(&self) -> usize {
        self.d_r
    }
    pub fn len(&self) -> usize {
        self.rows.tokens()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append tokens: latents [s, d_c] and rope keys [s, d_r].
    pub fn append(&mut self, latent: ArrayView2<E>, rope_key: ArrayView2<E>) {
        assert_eq!(latent.dim().1, self.d_c, "LatentCache::append: latent width");
        assert_eq!(rope_key.dim().1, self.d_r, "LatentCache::append: rope key width");
        assert_eq!(latent.nrows(), rope_key.nrows(), "LatentCache::append: token counts");
        let mut row = vec![E::default(); self.d_c + self.d_r];
        for t in 0..latent.nrows() {
            for (dst, src) in row.iter_mut().zip(latent.row(t).iter().chain(rope_key.row(t).iter())) {
                *dst = *src;
            }
            self.rows.push(&row);
        }
    }
    /// The MQA key rows [len, d_c + d_r].
    pub fn keys(&self) -> ArrayView2<'_, E> {
        self.rows.view()
    }
    /// The MQA value rows, the latents [len, d_c].
    pub fn latent(&self) -> ArrayView2<'_, E> {
        self.rows.view().slice_move(s![.., ..self.d_c])
    }
    /// The shared rope keys [len, d_r].
    pub fn rope_key(&self) -> ArrayView2<'_, E> {
        self.rows.view().slice_move(s![.., self.d_c..])
    }
    pub fn footprint(&self) -> Option<Footprint> {
        footprint(self.len(), &[&self.rows])
    }
}

/// Where the GQA-path cache keeps the shared rope key. Named `once` and `per_group` in case ids,
/// kernel declarations and command lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum GroupCacheLayout {
    /// Canonical: k^R_t stored once per token; G(d_n + d_v) + d_r per token.
    #[serde(rename = "once")]
    RopeOnce,
    /// Stock-GQA-kernel layout: key [k_g; k^R] per group; G(d_n + d_r + d_v) per token.
    #[serde(rename = "per_group")]
    RopePerGroup,
}

impl GroupCacheLayout {
    pub const ALL: [GroupCacheLayout; 2] = [GroupCacheLayout::RopeOnce, GroupCacheLayout::RopePerGroup];
    pub fn name(self) -> &'static str {
        match self {
            GroupCacheLayout::RopeOnce => "once",
            GroupCacheLayout::RopePerGroup => "per_group",
        }
    }
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// The GQA-path cache of the groups `groups` (all of them, or one TP rank's).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCache<E> {
    layout: GroupCacheLayout,
    groups: Range<usize>,
    d_n: usize,
    d_r: usize,
    d_v: usize,
    /// Per token: each group's key, d_n (RopeOnce) or d_n + d_r (RopePerGroup) wide.
    keys: TokenBuffer<E>,
    /// Per token: each group's value, d_v wide.
    values: TokenBuffer<E>,
    /// Per token: k^R (RopeOnce), or nothing (RopePerGroup).
    rope_key: TokenBuffer<E>,
}

impl<E: Copy + Default> GroupCache<E> {
    /// An empty cache of every group of `dims`.
    pub fn new(dims: &LatentDims, layout: GroupCacheLayout) -> Self {
        Self::empty(dims, layout, 0..dims.g())
    }
    /// An empty cache of the groups `groups` of `dims` (one TP rank's): a non-empty range of
    /// groups the geometry has.
    pub fn for_groups(dims: &LatentDims, layout: GroupCacheLayout, groups: Range<usize>) -> Result<Self> {
        if groups.is_empty() || groups.end > dims.g() {
            return Err(GeometryError::GroupRange {
                start: groups.start,
                end: groups.end,
                groups: dims.g(),
            }
            .into());
        }
        Ok(Self::empty(dims, layout, groups))
    }
    fn empty(dims: &LatentDims, layout: GroupCacheLayout, groups: Range<usize>) -> Self {
        let (d_n, d_r, d_v) = (dims.d_n(), dims.d_r(), dims.d_v());
        let n = groups.len();
        let (key_w, rope_w) = match layout {
            GroupCacheLayout::RopeOnce => (d_n, d_r),
            GroupCacheLayout::RopePerGroup => (d_n + d_r, 0),
        };
        Self {
            layout,
            groups,
            d_n,
            d_r,
            d_v,
            keys: TokenBuffer::new(n * key_w),
            values: TokenBuffer::new(n * d_v),
            rope_key: TokenBuffer::new(rope_w),
        }
    }
    /// The same cache holding `tokens` default-valued rows (an empty cache's, for sizes).
    pub fn filled(mut self, tokens: usize) -> Self {
        self.keys = TokenBuffer::filled(self.keys.width(), tokens);
        self.values = TokenBuffer::filled(self.values.width(), tokens);
        self.rope_key = TokenBuffer::filled(self.rope_key.width(), tokens);
        self
    }
    pub fn layout(&self) -> GroupCacheLayout {
        self.layout
    }
    /// The (global) group indices this cache holds.
    pub fn groups(&self) -> Range<usize> {
        self.groups.clone()
    }
    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }
    pub fn len(&self) -> usize {
        self.values.tokens()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn key_width(&self) -> usize {
        self.keys.width() / self.num_groups()
    }

    /// Append tokens: per-group keys [s, G_l, d_n], values [s, G_l, d_v], shared rope keys [s, d_r].
    pub fn append(&mut self, keys: ndarray::ArrayView3<E>, values: ndarray::ArrayView3<E>, rope_key: ArrayView2<E>) {
        let (s_q, n, d_n) = keys.dim();
        assert_eq!((n, d_n), (self.num_groups(), self.d_n), "GroupCache::append: keys shape");
        assert_eq!(values.dim(), (s_q, n, self.d_v), "GroupCache::append: values shape");
        assert_eq!(rope_key.dim(), (s_q, self.d_r), "GroupCache::append: rope key shape");
        for t in 0..s_q {
            let mut krow = Vec::with_capacity(self.keys.width());
            for g in 0..n {
                krow.extend(keys.slice(s![t, g, ..]).iter().copied());
                if self.layout == GroupCacheLayout::RopePerGroup {
                    krow.extend(rope_key.row(t).iter().copied());
                }
            }
            self.keys.push(&krow);
            let vrow: Vec<E> = values.slice(s![t, .., ..]).iter().copied().collect();
            self.values.push(&vrow);
            if self.layout == GroupCacheLayout::RopeOnce {
                let r: Vec<E> = rope_key.row(t).to_vec();
                self.rope_key.push(&r);
            }
        }
    }

    /// Local group `g`'s full GQA keys [len, d_n + d_r] = [k_g; k^R], whatever the layout.
    pub fn group_keys(&self, g: usize) -> Array2<E> {
        let kw = self.key_width();
        let mut out = Array2::from_elem((self.len(), self.d_n + self.d_r), E::default());
        for t in 0..self.len() {
            let row = &self.keys.row(t)[g * kw..(g + 1) * kw];
            let mut dst = out.row_mut(t);
            match self.layout {
                GroupCacheLayout::RopePerGroup => dst.iter_mut().zip(row).for_each(|(d, s)| *d = *s),
                GroupCacheLayout::RopeOnce => dst
                    .iter_mut()
                    .zip(row.iter().chain(self.rope_key.row(t)))
                    .for_each(|(d, s)| *d = *s),
            }
        }
        out
    }
    /// Local group `g`'s no-rope keys [len, d_n].
    pub fn group_nope_keys(&self, g: usize) -> Array2<E> {
        self.group_keys(g).slice_move(s![.., ..self.d_n])
    }
    /// The shared rope keys [len, d_r] (read from group 0's copy in the per-group layout).
    pub fn rope_keys(&self) -> Array2<E> {
        self.group_keys(0).slice_move(s![.., self.d_n..])
    }
    /// Local group `g`'s values [len, d_v].
    pub fn group_values(&self, g: usize) -> Array2<E> {
        self.values.view().slice(s![.., g * self.d_v..(g + 1) * self.d_v]).to_owned()
    }
    pub fn footprint(&self) -> Option<Footprint> {
        footprint(self.len(), &[&self.keys, &self.values, &self.rope_key])
    }
    /// Per token, the bytes that every rank holding any group must also hold: the rope key
    /// (once, or once per local group in the per-group layout).
    pub fn replicated_bytes_per_token(&self) -> Option<usize> {
        let per_elem = std::mem::size_of::<E>();
        (!self.is_empty()).then(|| match self.layout {
            GroupCacheLayout::RopeOnce => self.rope_key.bytes() / self.len(),
            GroupCacheLayout::RopePerGroup => self.num_groups() * self.d_r * per_elem,
        })
    }
}

/// A plain GQA cache: K (after RoPE) and V, each [KV, D] per token.
#[derive(Clone, Debug, PartialEq)]
pub struct GqaCache<E> {
    kv: usize,
    d: usize,
    keys: TokenBuffer<E>,
    values: TokenBuffer<E>,
}

impl<E: Copy + Default> GqaCache<E> {
    /// An empty cache of the KV heads of `dims`.
    pub fn new(dims: &GqaDims) -> Self {
        let (kv, d) = (dims.kv(), dims.d());
        Self {
            kv,
            d,
            keys: TokenBuffer::new(kv * d),
            values: TokenBuffer::new(kv * d),
        }
    }
    /// A cache of `tokens` default-valued rows.
    pub fn filled(dims: &GqaDims, tokens: usize) -> Self {
        let mut c = Self::new(dims);
        c.keys = TokenBuffer::filled(c.keys.width(), tokens);
        c.values = TokenBuffer::filled(c.values.width(), tokens);
        c
    }
    pub fn len(&self) -> usize {
        self.keys.tokens()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append tokens: keys and values [s, KV, D].
    pub fn append(&mut self, keys: ndarray::ArrayView3<E>, values: ndarray::ArrayView3<E>) {
        assert_eq!((keys.dim().1, keys.dim().2), (self.kv, self.d), "GqaCache::append: keys shape");
        assert_eq!(keys.dim(), values.dim(), "GqaCache::append: values shape");
        for t in 0..keys.dim().0 {
            let k: Vec<E> = keys.slice(s![t, .., ..]).iter().copied().collect();
            let v: Vec<E> = values.slice(s![t, .., ..]).iter().copied().collect();
            self.keys.push(&k);
            self.values.push(&v);
        }
    }
    /// KV head `j`'s keys [len, D].
    pub fn head_keys(&self, j: usize) -> ArrayView2<'_, E> {
        self.keys.view().slice_move(s![.., j * self.d..(j + 1) * self.d])
    }
    /// KV head `j`'s values [len, D].
    pub fn head_values(&self, j: usize) -> ArrayView2<'_, E> {
        self.values.view().slice_move(s![.., j * self.d..(j + 1) * self.d])
    }
    pub fn footprint(&self) -> Option<Footprint> {
        footprint(self.len(), &[&self.keys, &self.values])
    }
}

/// Tokens each measured cache holds: a few, so that per-token sizes are exact quotients.
const MEASURED_TOKENS: usize = 4;

/// Per-token sizes of the caches of one latent geometry, measured on caches of `E` allocated
/// with a few tokens each (never computed from a formula).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheSizes {
    /// [`LatentCache`]: the MQA-absorb path.
    pub absorb: Footprint,
    /// [`GroupCache`] with the rope key once per token.
    pub gqa_rope_once: Footprint,
    /// [`GroupCache`] with the rope key in every group's key.
    pub gqa_rope_per_group: Footprint,
}

impl CacheSizes {
    /// Measure the three caches of `dims` in element type `E`.
    pub fn measure<E: Copy + Default>(dims: &LatentDims) -> Self {
        let fp = |f: Option<Footprint>| f.expect("measured caches hold tokens");
        let group = |layout| fp(GroupCache::<E>::new(dims, layout).filled(MEASURED_TOKENS).footprint());
        Self {
            absorb: fp(LatentCache::<E>::filled(dims, MEASURED_TOKENS).footprint()),
            gqa_rope_once: group(GroupCacheLayout::RopeOnce),
            gqa_rope_per_group: group(GroupCacheLayout::RopePerGroup),
        }
    }
    /// The GQA-path cache of `layout`.
    pub fn gqa(&self, layout: GroupCacheLayout) -> Footprint {
        match layout {
            GroupCacheLayout::RopeOnce => self.gqa_rope_once,
            GroupCacheLayout::RopePerGroup => self.gqa_rope_per_group,
        }
    }
}

/// The per-token size of a plain GQA cache of `dims` in `E`, measured on an allocated cache.
pub fn measure_gqa_cache<E: Copy + Default>(dims: &GqaDims) -> Footprint {
    GqaCache::<E>::filled(dims, MEASURED_TOKENS)
        .footprint()
        .expect("measured caches hold tokens")
}
