//! Test cases and their stable, query-like ids, e.g.
//! `gqla.decode.gqa:h=32;g=8;dn=128;dr=64;dv=128;sq=2;ctx=4097;page=64;dtype=bf16;seed=3`.
//!
//! A prefix of an id selects a subtree of cases (`gqla.decode` selects every GQLA decode case).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The operations the suite defines (see [`crate::definition`]); serialized by their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    /// MQA over [c; k^R] with value c: MLA's decode (FlashMLA / FlashInfer-MLA shapes).
    #[serde(rename = "gqla.decode.absorb")]
    DecodeAbsorb,
    /// GQA over the per-group cache, H/G query heads per group.
    #[serde(rename = "gqla.decode.gqa")]
    DecodeGqa,
    /// Latent cache to group cache: [k_g; v_g] = [W^UK_g; W^UV_g] c.
    #[serde(rename = "gqla.cache.expand")]
    CacheExpand,
    /// Plain GQA decode.
    #[serde(rename = "gqa.decode")]
    GqaDecode,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::DecodeAbsorb, Op::DecodeGqa, Op::CacheExpand, Op::GqaDecode];
    pub fn name(self) -> &'static str {
        match self {
            Op::DecodeAbsorb => "gqla.decode.absorb",
            Op::DecodeGqa => "gqla.decode.gqa",
            Op::CacheExpand => "gqla.cache.expand",
            Op::GqaDecode => "gqa.decode",
        }
    }
    /// Whether the operation is an attention decode (outputs `out` and `lse`).
    pub fn is_decode(self) -> bool {
        matches!(self.kind(), OpKind::Decode(_))
    }
    /// The operation by kind: a function that can only decode takes a [`DecodeOp`] and matches
    /// nothing else.
    pub fn kind(self) -> OpKind {
        match self {
            Op::DecodeAbsorb => OpKind::Decode(DecodeOp::Absorb),
            Op::DecodeGqa => OpKind::Decode(DecodeOp::Gqa),
            Op::GqaDecode => OpKind::Decode(DecodeOp::PlainGqa),
            Op::CacheExpand => OpKind::Cache(CacheOp::Expand),
        }
    }
}

/// The kinds of operation: attention decodes (dense today, sparse next), cache operations
/// (expand today, the FP8 quantizer next). Selection (a sparse indexer's scores and top-k) will be
/// a third.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Decode(DecodeOp),
    Cache(CacheOp),
}

/// The attention decodes: each outputs `out` [B, s_q, H, d_out] and `lse` [B, s_q, H].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeOp {
    /// `gqla.decode.absorb`: MQA over [c; k^R] with value c (one key stream for every head).
    Absorb,
    /// `gqla.decode.gqa`: GQA over the per-group cache, key [k_g; k^R], value v_g.
    Gqa,
    /// `gqa.decode`: plain GQA.
    PlainGqa,
}

impl DecodeOp {
    pub fn op(self) -> Op {
        match self {
            DecodeOp::Absorb => Op::DecodeAbsorb,
            DecodeOp::Gqa => Op::DecodeGqa,
            DecodeOp::PlainGqa => Op::GqaDecode,
        }
    }
}

/// The operations on caches (no attention, no LSE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheOp {
    /// `gqla.cache.expand`: the latent cache to the group cache, [k_g; v_g] = [W^UK_g; W^UV_g] c.
    Expand,
}

pub use gqla_reference::DType;

pub use gqla_reference::GroupCacheLayout;

pub use gqla_reference::fp8::{Fp8, ScaleRule};

/// How a decode's KV cache is stored (`kv=` in ids; absent for [`KvFormat::Native`], so that the
/// ids of native cases never changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvFormat {
    /// In the case dtype, like the queries.
    Native,
    /// FP8 tiled records (`gqla_reference::fp8::TiledRecord`): per token, d_c e4m3fn latent
    /// values, one f32 scale per `tile` of them, then the RoPE key in bf16, unquantized.
    /// FlashMLA's `ds_mla_656` is d_c = 512, tile = 128, d_r = 64, `scales` pow2.
    Tiled { tile: usize, scales: ScaleRule },
    /// Per-tensor FP8 (vLLM `kv_cache_dtype=fp8`, FlashInfer's trtllm MLA): every cache value in
    /// `fp8` against one f32 scale, `k_scale` for keys (the absorb path's whole row [c; k^R])
    /// and `v_scale` for the GQA path's values (0 on the absorb path); scales as f32 bits.
    PerTensor { fp8: Fp8, k_scale: u32, v_scale: u32 },
}

impl KvFormat {
    /// The format's family, as profiles name it.
    pub fn kind(self) -> KvFormatKind {
        match self {
            KvFormat::Native => KvFormatKind::Native,
            KvFormat::Tiled { .. } => KvFormatKind::Tiled,
            KvFormat::PerTensor { .. } => KvFormatKind::PerTensor,
        }
    }
    /// A per-tensor cache's flavour and scales (k, v) as f32.
    pub fn per_tensor(self) -> Option<(Fp8, f32, f32)> {
        match self {
            KvFormat::PerTensor { fp8, k_scale, v_scale } => Some((fp8, f32::from_bits(k_scale), f32::from_bits(v_scale))),
            _ => None,
        }
    }
}

/// The cache formats by family, as profiles and coverage name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvFormatKind {
    Native,
    Tiled,
    PerTensor,
}

impl KvFormatKind {
    pub fn name(self) -> &'static str {
        match self {
            KvFormatKind::Native => "native",
            KvFormatKind::Tiled => "tiled",
            KvFormatKind::PerTensor => "per_tensor",
        }
    }
}

impl<'de> Deserialize<'de> for KvFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Tiled {
            tile: usize,
            scales: String,
            fp8: String,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PerTensor {
            fp8: Fp8,
            k_scale: f32,
            #[serde(default)]
            v_scale: Option<f32>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        enum Repr {
            Native,
            Tiled(Tiled),
            PerTensor(PerTensor),
        }
        match Repr::deserialize(d)? {
            Repr::Native => Ok(KvFormat::Native),
            Repr::PerTensor(p) => Ok(KvFormat::PerTensor {
                fp8: p.fp8,
                k_scale: p.k_scale.to_bits(),
                v_scale: p.v_scale.map_or(0, f32::to_bits),
            }),
            Repr::Tiled(t) => {
                if t.fp8 != "e4m3fn" {
                    return Err(D::Error::custom(format!("tiled records are e4m3fn, not `{}`", t.fp8)));
                }
                let scales = ScaleRule::from_name(&t.scales)
                    .ok_or_else(|| D::Error::custom(format!("scales must be pow2 or amax, not `{}`", t.scales)))?;
                Ok(KvFormat::Tiled { tile: t.tile, scales })
            }
        }
    }
}

/// `"native"`, or `{"tiled": {"tile": 128, "scales": "pow2", "fp8": "e4m3fn"}}`.
impl Serialize for KvFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KvFormat::Native => s.serialize_str("native"),
            KvFormat::Tiled { tile, scales } => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "tiled",
                    &serde_json::json!({"tile": tile, "scales": scales.name(), "fp8": "e4m3fn"}),
                )?;
                m.end()
            }
            KvFormat::PerTensor { fp8, k_scale, v_scale } => {
                use serde::ser::SerializeMap;
                let mut fields = serde_json::json!({"fp8": fp8.name(), "k_scale": f32::from_bits(*k_scale)});
                if *v_scale != 0 {
                    fields["v_scale"] = serde_json::json!(f32::from_bits(*v_scale));
                }
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("per_tensor", &fields)?;
                m.end()
            }
        }
    }
}

/// What fills the memory a correct kernel never reads (dead slots, page tails, unused pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Poison {
    /// NaN: a read that reaches the output turns it NaN.
    Nan,
    /// Finite random values drawn like the live data: a kernel that masks by testing for NaN
    /// instead of by length reads them silently. A case with this poison is the twin of the same
    /// case with NaN poison, and its outputs must be bitwise the twin's.
    Garbage,
}

/// How large the logits are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Logits {
    /// Scaled logits of standard deviation about 3.
    Normal,
    /// Scaled logits of magnitude hundreds: softmax without max-subtraction overflows.
    Large,
    /// Normal logits, and in each sequence one key (t = ctx_b / 2, seen by every query row) whose
    /// logit is lifted by 40 for every head: the output is that key's value to
    /// within rounding, so an error in reading any part of that one cache row shows whole (a
    /// probe of FP8 scales, tile by tile).
    Dominant,
}

/// A case's fields as written, before validation: what an id or the lattice spells out. Which
/// fields matter depends on `op`; [`CaseSpec::build`] checks them and makes the [`Case`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct CaseSpec {
    pub op: Op,
    /// Query heads.
    pub h: usize,
    /// Groups (GQLA) or kv heads (GQA).
    pub g: usize,
    pub dc: usize,
    pub dn: usize,
    pub dr: usize,
    pub dv: usize,
    /// New query tokens per sequence (s_q).
    pub sq: usize,
    /// Per batch row: keys before the s_q new tokens, or None for a padding row that holds no
    /// keys at all (its queries see nothing). The batch is ctx.len().
    pub ctx: Vec<Option<usize>>,
    /// Page size; None = contiguous cache.
    pub page: Option<usize>,
    /// KV splits the kernel is asked to use (flash-decoding); None = the kernel's own choice.
    /// The answer must not depend on it; splits may outnumber a row's keys (empty splits).
    pub splits: Option<usize>,
    pub layout: GroupCacheLayout,
    pub dtype: DType,
    /// How the cache is stored (the queries and outputs are in `dtype`).
    pub kv: KvFormat,
    /// Softmax scale override; None = 1/sqrt(key dim of the definition).
    pub scale: Option<u32>,
    pub logits: Logits,
    pub poison: Poison,
    pub seed: u64,
}

/// The dimensions of a case, per operation: only those the operation has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Geometry {
    /// MQA over [c; k^R] with value c; d_n sets the default softmax scale 1/sqrt(d_n + d_r).
    DecodeAbsorb { h: usize, dc: usize, dn: usize, dr: usize },
    /// GQA over the group cache: key [k_g; k^R], value v_g.
    DecodeGqa {
        h: usize,
        g: usize,
        dn: usize,
        dr: usize,
        dv: usize,
        layout: GroupCacheLayout,
    },
    /// Latent to group cache.
    CacheExpand { g: usize, dc: usize, dn: usize, dv: usize },
    /// Plain GQA: `g` kv heads of key width `d` and value width `dv`.
    GqaDecode { h: usize, g: usize, d: usize, dv: usize },
}

/// One test case: valid and canonical by construction (built only by [`CaseSpec::build`] or
/// parsed from its id), so equal cases have equal ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Case {
    geometry: Geometry,
    /// New query tokens per sequence (1 for cache.expand).
    sq: usize,
    ctx: Vec<Option<usize>>,
    page: Option<usize>,
    splits: Option<usize>,
    dtype: DType,
    kv: KvFormat,
    scale: Option<u32>,
    logits: Logits,
    poison: Poison,
    seed: u64,
}

/// Serialized as its [`CaseSpec`] (every field, those the operation does not use reset).
impl Serialize for Case {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.spec().serialize(serializer)
    }
}

impl CaseSpec {
    /// Check the fields and make the case, with every field its operation does not use reset.
    pub fn build(self) -> Result<Case, String> {
        let c = self.canonical();
        c.validate()?;
        let geometry = match c.op {
            Op::DecodeAbsorb => Geometry::DecodeAbsorb {
                h: c.h,
                dc: c.dc,
                dn: c.dn,
                dr: c.dr,
            },
            Op::DecodeGqa => Geometry::DecodeGqa {
                h: c.h,
                g: c.g,
                dn: c.dn,
                dr: c.dr,
                dv: c.dv,
                layout: c.layout,
            },
            Op::CacheExpand => Geometry::CacheExpand {
                g: c.g,
                dc: c.dc,
                dn: c.dn,
                dv: c.dv,
            },
            Op::GqaDecode => Geometry::GqaDecode {
                h: c.h,
                g: c.g,
                d: c.dn,
                dv: c.dv,
            },
        };
        Ok(Case {
            geometry,
            sq: c.sq,
            ctx: c.ctx,
            page: c.page,
            splits: c.splits,
            dtype: c.dtype,
            kv: c.kv,
            scale: c.scale,
            logits: c.logits,
            poison: c.poison,
            seed: c.seed,
        })
    }
}

impl Case {
    /// The fields as a [`CaseSpec`], to derive another case (`spec()`, change, `build()`).
    pub fn spec(&self) -> CaseSpec {
        CaseSpec {
            op: self.op(),
            h: self.h(),
            g: self.g(),
            dc: self.dc(),
            dn: self.dn(),
            dr: self.dr(),
            dv: self.dv(),
            sq: self.sq,
            ctx: self.ctx.clone(),
            page: self.page,
            splits: self.splits,
            layout: self.layout(),
            dtype: self.dtype,
            kv: self.kv,
            scale: self.scale,
            logits: self.logits,
            poison: self.poison,
            seed: self.seed,
        }
    }
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }
    pub fn op(&self) -> Op {
        match self.geometry {
            Geometry::DecodeAbsorb { .. } => Op::DecodeAbsorb,
            Geometry::DecodeGqa { .. } => Op::DecodeGqa,
            Geometry::CacheExpand { .. } => Op::CacheExpand,
            Geometry::GqaDecode { .. } => Op::GqaDecode,
        }
    }
    /// Query heads (0 for cache.expand).
    pub fn h(&self) -> usize {
        match self.geometry {
            Geometry::DecodeAbsorb { h, .. } | Geometry::DecodeGqa { h, .. } | Geometry::GqaDecode { h, .. } => h,
            Geometry::CacheExpand { .. } => 0,
        }
    }
    /// Groups (GQLA) or kv heads (GQA); 0 for the absorb path, which has one stream.
    pub fn g(&self) -> usize {
        match self.geometry {
            Geometry::DecodeGqa { g, .. } | Geometry::CacheExpand { g, .. } | Geometry::GqaDecode { g, .. } => g,
            Geometry::DecodeAbsorb { .. } => 0,
        }
    }
    /// Latent width (0 where the operation has no latent).
    pub fn dc(&self) -> usize {
        match self.geometry {
            Geometry::DecodeAbsorb { dc, .. } | Geometry::CacheExpand { dc, .. } => dc,
            _ => 0,
        }
    }
    /// No-rope key width (the key width of plain GQA).
    pub fn dn(&self) -> usize {
        match self.geometry {
            Geometry::DecodeAbsorb { dn, .. } | Geometry::DecodeGqa { dn, .. } | Geometry::CacheExpand { dn, .. } => dn,
            Geometry::GqaDecode { d, .. } => d,
        }
    }
    /// Rope key width (0 where there is none).
    pub fn dr(&self) -> usize {
        match self.geometry {
            Geometry::DecodeAbsorb { dr, .. } | Geometry::DecodeGqa { dr, .. } => dr,
            _ => 0,
        }
    }
    /// Value width (the latent width on the absorb path).
    pub fn dv(&self) -> usize {
        match self.geometry {
            Geometry::DecodeAbsorb { dc, .. } => dc,
            Geometry::DecodeGqa { dv, .. } | Geometry::CacheExpand { dv, .. } | Geometry::GqaDecode { dv, .. } => dv,
        }
    }
    /// Where the GQA-path cache keeps the rope key (`RopeOnce` outside gqla.decode.gqa).
    pub fn layout(&self) -> GroupCacheLayout {
        match self.geometry {
            Geometry::DecodeGqa { layout, .. } => layout,
            _ => GroupCacheLayout::RopeOnce,
        }
    }
    /// New query tokens per sequence (s_q).
    pub fn sq(&self) -> usize {
        self.sq
    }
    /// Per batch row: keys before the s_q new tokens, or None for a padding row.
    pub fn ctx(&self) -> &[Option<usize>] {
        &self.ctx
    }
    /// Page size; None = contiguous cache.
    pub fn page(&self) -> Option<usize> {
        self.page
    }
    /// KV splits the kernel is asked to use; None = the kernel's own choice.
    pub fn splits(&self) -> Option<usize> {
        self.splits
    }
    /// The dtype of the queries and outputs, and of the cache when it is [`KvFormat::Native`].
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// How the cache is stored.
    pub fn kv(&self) -> KvFormat {
        self.kv
    }
    /// The FP8 record of a tiled cache (None: the cache holds values of the case dtype).
    pub fn tiled_record(&self) -> Option<gqla_reference::fp8::TiledRecord> {
        match self.kv {
            KvFormat::Native => None,
            KvFormat::Tiled { tile, scales } => Some(
                gqla_reference::fp8::TiledRecord::new(self.dc(), tile, self.dr(), gqla_reference::fp8::Fp8::E4m3fn, scales)
                    .expect("validated at construction"),
            ),
            KvFormat::PerTensor { .. } => None,
        }
    }
    /// The softmax scale override as f32 bits; None = the default.
    pub fn scale_override(&self) -> Option<u32> {
        self.scale
    }
    pub fn logits(&self) -> Logits {
        self.logits
    }
    pub fn poison(&self) -> Poison {
        self.poison
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The same case drawn from another seed.
    pub fn with_seed(&self, seed: u64) -> Case {
        Case { seed, ..self.clone() }
    }
    /// The same case with softmax scale `scale` (the suite's own case when that is its scale
    /// already, so that a fixed-scale profile keeps the suite's id where it can).
    pub fn with_scale(&self, scale: f32) -> Case {
        if scale.to_bits() == self.scale().to_bits() {
            return self.clone();
        }
        Case {
            scale: Some(scale.to_bits()),
            ..self.clone()
        }
    }
    /// The same case with another poison (a twin holds the same live data).
    pub fn with_poison(&self, poison: Poison) -> Case {
        Case { poison, ..self.clone() }
    }
    /// The softmax scale, an explicit f32 kernel input (never rounded to the case dtype): the
    /// override (stored as f32 bits) or the model's default 1/sqrt(d_n + d_r) (GQA: 1/sqrt(d)).
    /// For the absorb path that is MLA's 1/sqrt(192), not 1/sqrt(d_c + d_r).
    pub fn scale(&self) -> f32 {
        match self.scale {
            Some(bits) => f32::from_bits(bits),
            None => 1.0 / ((self.dn() + self.dr()) as f32).sqrt(),
        }
    }
    /// The same case with NaN poison: the case a garbage-poison twin must agree with bitwise.
    pub fn nan_twin(&self) -> Option<Case> {
        (self.poison == Poison::Garbage).then(|| self.with_poison(Poison::Nan))
    }
    /// Width of the query (and key) vectors the kernel sees.
    pub fn q_width(&self) -> usize {
        match self.op() {
            Op::DecodeAbsorb => self.dc() + self.dr(),
            Op::DecodeGqa => self.dn() + self.dr(),
            Op::CacheExpand => 0,
            Op::GqaDecode => self.dn(),
        }
    }
    /// Width of each head's output.
    pub fn out_width(&self) -> usize {
        match self.op() {
            Op::DecodeAbsorb => self.dc(),
            _ => self.dv(),
        }
    }
    pub fn batch(&self) -> usize {
        self.ctx.len()
    }
    /// Total keys of row b: context plus the new tokens (cache.expand: the context); 0 for padding.
    pub fn seq_len(&self, b: usize) -> usize {
        match self.ctx[b] {
            None => 0,
            Some(c) if self.op() == Op::CacheExpand => c,
            Some(c) => c + self.sq,
        }
    }
    /// Keys new token j of row b sees: t < visible (bottom-right causal; 0 for padding rows).
    pub fn visible(&self, b: usize, j: usize) -> usize {
        self.ctx[b].map_or(0, |c| c + j + 1)
    }
    /// The id without its seed: the same case drawn on any seed has the same one (the key of
    /// `--seeds` stability tallies).
    pub fn shape_id(&self) -> String {
        struct Shape(CaseSpec);
        impl fmt::Display for Shape {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt_shape(f)
            }
        }
        Shape(self.spec()).to_string()
    }
    /// Whether `prefix` selects this case: a prefix of its id, or `*`.
    pub fn matches(&self, prefix: &str) -> bool {
        prefix.is_empty() || prefix == "*" || self.to_string().starts_with(prefix)
    }
}

/// A malformed case id.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad case id `{id}`: {why}")]
pub struct CaseIdError {
    pub id: String,
    pub why: String,
}

impl CaseSpec {
    /// The case with every field its operation does not use reset, so that equal cases have equal
    /// ids.
    fn canonical(mut self) -> Self {
        match self.op {
            Op::DecodeAbsorb => {
                self.g = 0;
                self.dv = self.dc;
                self.layout = GroupCacheLayout::RopeOnce;
            }
            Op::DecodeGqa => self.dc = 0,
            Op::GqaDecode => {
                self.dc = 0;
                self.dr = 0;
                self.layout = GroupCacheLayout::RopeOnce;
            }
            Op::CacheExpand => {
                self.h = 0;
                self.dr = 0;
                self.sq = 1;
                self.layout = GroupCacheLayout::RopeOnce;
                self.scale = None;
                self.logits = Logits::Normal;
                self.splits = None;
            }
        }
        self
    }

    /// Check that the case describes something computable.
    fn validate(&self) -> Result<(), String> {
        let need = |cond: bool, what: &str| if cond { Ok(()) } else { Err(what.to_string()) };
        need(!self.ctx.is_empty(), "at least one sequence (ctx)")?;
        need(self.dtype.is_kernel_storage(), "a storage dtype of f32, bf16 or f16")?;
        if let Some(p) = self.page {
            need(p > 0, "page size > 0")?;
        }
        if let Some(s) = self.splits {
            need(s > 0, "splits > 0")?;
        }
        // Sizes a case can have without overflowing an index or exhausting memory: checked before
        // any buffer is sized from them (case ids come from hostile manifests too).
        const MAX_DIM: usize = 1 << 16;
        const MAX_TOKENS: usize = 1 << 20;
        for (v, name) in [
            (self.h, "h"),
            (self.g, "g"),
            (self.dc, "dc"),
            (self.dn, "dn"),
            (self.dr, "dr"),
            (self.dv, "dv"),
        ] {
            need(v <= MAX_DIM, &format!("{name} <= {MAX_DIM}"))?;
        }
        need(self.sq <= 64, "sq <= 64")?;
        need(self.ctx.len() <= 1024, "at most 1024 sequences")?;
        need(self.page.is_none_or(|p| p <= MAX_TOKENS), &format!("page <= {MAX_TOKENS}"))?;
        need(self.splits.is_none_or(|s| s <= 4096), "splits <= 4096")?;
        let tokens: usize = self
            .ctx
            .iter()
            .map(|c| c.unwrap_or(0).saturating_add(self.sq))
            .fold(0, usize::saturating_add);
        need(tokens <= MAX_TOKENS, &format!("at most {MAX_TOKENS} cached tokens in all"))?;
        let width = (self.dc + self.dr).max(self.g * (self.dn + self.dr + self.dv));
        need(
            tokens.saturating_mul(4).saturating_mul(width) <= 1 << 31,
            "cache of at most 2^31 elements per component",
        )?;
        if let KvFormat::Tiled { tile, .. } = self.kv {
            need(self.op == Op::DecodeAbsorb, "an FP8 tiled cache (kv=tiled) on gqla.decode.absorb")?;
            need(self.dtype == DType::Bf16, "dtype=bf16 with kv=tiled (bf16 queries and outputs)")?;
            need(tile > 0 && self.dc.is_multiple_of(tile), "a tile that divides dc")?;
        }
        if let KvFormat::PerTensor { k_scale, v_scale, .. } = self.kv {
            need(
                matches!(self.op, Op::DecodeAbsorb | Op::DecodeGqa),
                "a per-tensor FP8 cache (kv=fp8) on gqla.decode.absorb or gqla.decode.gqa",
            )?;
            need(self.dtype == DType::Bf16, "dtype=bf16 with kv=fp8 (bf16 queries and outputs)")?;
            let positive = |bits: u32| f32::from_bits(bits).is_finite() && f32::from_bits(bits) > 0.0;
            need(positive(k_scale), "a finite positive kscale")?;
            match self.op {
                Op::DecodeAbsorb => need(v_scale == 0, "no vscale on gqla.decode.absorb (its values are the keys' latent)")?,
                _ => need(positive(v_scale), "a finite positive vscale")?,
            }
        }
        match self.op {
            Op::DecodeAbsorb => need(self.h > 0 && self.dc > 0 && self.dn > 0 && self.sq > 0, "h, dc, dn, sq > 0")?,
            Op::DecodeGqa => {
                need(self.h > 0 && self.g > 0 && self.h.is_multiple_of(self.g), "g divides h")?;
                need(self.dn > 0 && self.dv > 0 && self.sq > 0, "dn, dv, sq > 0")?;
            }
            Op::CacheExpand => need(self.g > 0 && self.dc > 0 && self.dn > 0 && self.dv > 0, "g, dc, dn, dv > 0")?,
            Op::GqaDecode => {
                need(self.h > 0 && self.g > 0 && self.h.is_multiple_of(self.g), "kv heads divide h")?;
                need(self.dn > 0 && self.dv > 0 && self.sq > 0, "dn, dv, sq > 0")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for CaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_shape(f)?;
        write!(f, ";seed={}", self.seed)
    }
}

impl CaseSpec {
    /// The id without its seed: every parameter but the draw.
    fn fmt_shape(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx: Vec<String> = self.ctx.iter().map(|c| c.map_or("pad".to_string(), |c| c.to_string())).collect();
        write!(f, "{}:", self.op.name())?;
        match self.op {
            Op::DecodeAbsorb => write!(f, "h={};dc={};dn={};dr={}", self.h, self.dc, self.dn, self.dr)?,
            Op::DecodeGqa => write!(
                f,
                "h={};g={};dn={};dr={};dv={};rope={}",
                self.h,
                self.g,
                self.dn,
                self.dr,
                self.dv,
                self.layout.name()
            )?,
            Op::CacheExpand => write!(f, "g={};dc={};dn={};dv={}", self.g, self.dc, self.dn, self.dv)?,
            Op::GqaDecode => write!(f, "h={};g={};d={};dv={}", self.h, self.g, self.dn, self.dv)?,
        }
        if self.op != Op::CacheExpand {
            write!(f, ";sq={}", self.sq)?;
        }
        write!(f, ";ctx={}", ctx.join(","))?;
        match self.page {
            Some(p) => write!(f, ";page={p}")?,
            None => write!(f, ";page=none")?,
        }
        write!(f, ";dtype={}", self.dtype.name())?;
        match self.kv {
            KvFormat::Native => {}
            KvFormat::Tiled { tile, scales } => write!(f, ";kv=tiled;tile={tile};scales={}", scales.name())?,
            KvFormat::PerTensor { fp8, k_scale, v_scale } => {
                write!(f, ";kv=fp8;fp8={};kscale={}", fp8.name(), f32::from_bits(k_scale))?;
                if v_scale != 0 {
                    write!(f, ";vscale={}", f32::from_bits(v_scale))?;
                }
            }
        }
        if let Some(s) = self.splits {
            write!(f, ";splits={s}")?;
        }
        if let Some(bits) = self.scale {
            write!(f, ";scale={}", f32::from_bits(bits))?;
        }
        match self.logits {
            Logits::Normal => {}
            Logits::Large => write!(f, ";logits=large")?,
            Logits::Dominant => write!(f, ";logits=dominant")?,
        }
        if self.poison == Poison::Garbage {
            write!(f, ";poison=garbage")?;
        }
        Ok(())
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.spec(), f)
    }
}

impl FromStr for Case {
    type Err = CaseIdError;
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| CaseIdError { id: id.to_string(), why };
        let (op_name, params) = id.split_once(':').ok_or_else(|| bad("expected `op:key=value;...`".into()))?;
        let op = Op::ALL
            .into_iter()
            .find(|o| o.name() == op_name)
            .ok_or_else(|| bad(format!("unknown operation `{op_name}`")))?;
        let mut c = CaseSpec {
            op,
            h: 0,
            g: 0,
            dc: 0,
            dn: 0,
            dr: 0,
            dv: 0,
            sq: 1,
            ctx: vec![],
            page: None,
            splits: None,
            layout: GroupCacheLayout::RopeOnce,
            dtype: DType::F32,
            kv: KvFormat::Native,
            scale: None,
            logits: Logits::Normal,
            poison: Poison::Nan,
            seed: 0,
        };
        // kv='s parameters, gathered and checked once every key is read.
        let (mut format, mut tile, mut scales) = (None, None, None);
        let (mut fp8, mut k_scale, mut v_scale) = (None, None, None);
        let mut seen: Vec<&str> = Vec::new();
        for kv in params.split(';') {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad(format!("`{kv}` is not key=value")))?;
            if seen.contains(&k) {
                return Err(bad(format!("`{k}` given twice")));
            }
            seen.push(k);
            let num = |v: &str| v.parse::<usize>().map_err(|_| bad(format!("`{k}` needs a number, got `{v}`")));
            match k {
                "h" => c.h = num(v)?,
                "g" => c.g = num(v)?,
                "dc" => c.dc = num(v)?,
                "dn" | "d" => c.dn = num(v)?,
                "dr" => c.dr = num(v)?,
                "dv" => c.dv = num(v)?,
                "sq" => c.sq = num(v)?,
                "ctx" => {
                    c.ctx = v
                        .split(',')
                        .map(|x| if x == "pad" { Ok(None) } else { num(x).map(Some) })
                        .collect::<Result<_, _>>()?
                }
                "page" => c.page = if v == "none" { None } else { Some(num(v)?) },
                "splits" => c.splits = Some(num(v)?),
                "rope" => {
                    c.layout = GroupCacheLayout::from_name(v).ok_or_else(|| bad(format!("rope must be once or per_group, got `{v}`")))?
                }
                "dtype" => {
                    c.dtype = v
                        .parse::<DType>()
                        .ok()
                        .filter(|d| d.is_kernel_storage() && d.name() == v)
                        .ok_or_else(|| bad(format!("dtype must be f32, bf16 or f16, got `{v}`")))?
                }
                "scale" => {
                    c.scale = Some(
                        v.parse::<f32>()
                            .map_err(|_| bad(format!("scale needs a number, got `{v}`")))?
                            .to_bits(),
                    )
                }
                "logits" => {
                    c.logits = match v {
                        "normal" => Logits::Normal,
                        "large" => Logits::Large,
                        "dominant" => Logits::Dominant,
                        _ => return Err(bad(format!("logits must be normal, large or dominant, got `{v}`"))),
                    }
                }
                "poison" => {
                    c.poison = match v {
                        "nan" => Poison::Nan,
                        "garbage" => Poison::Garbage,
                        _ => return Err(bad(format!("poison must be nan or garbage, got `{v}`"))),
                    }
                }
                "kv" => match v {
                    "tiled" | "fp8" => format = Some(v),
                    _ => return Err(bad(format!("kv must be tiled or fp8 (absent: the case dtype), got `{v}`"))),
                },
                "fp8" => fp8 = Some(Fp8::from_name(v).ok_or_else(|| bad(format!("fp8 must be e4m3fn or e4m3fnuz, got `{v}`")))?),
                "kscale" | "vscale" => {
                    let x = v.parse::<f32>().map_err(|_| bad(format!("`{k}` needs a number, got `{v}`")))?;
                    *(if k == "kscale" { &mut k_scale } else { &mut v_scale }) = Some(x.to_bits());
                }
                "tile" => tile = Some(num(v)?),
                "scales" => scales = Some(ScaleRule::from_name(v).ok_or_else(|| bad(format!("scales must be pow2 or amax, got `{v}`")))?),
                "seed" => c.seed = v.parse().map_err(|_| bad(format!("seed needs a number, got `{v}`")))?,
                _ => return Err(bad(format!("unknown key `{k}`"))),
            }
        }
        let tiled_keys = tile.is_some() || scales.is_some();
        let fp8_keys = fp8.is_some() || k_scale.is_some() || v_scale.is_some();
        c.kv = match format {
            None if !tiled_keys && !fp8_keys => KvFormat::Native,
            Some("tiled") if !fp8_keys => match (tile, scales) {
                (Some(tile), Some(scales)) => KvFormat::Tiled { tile, scales },
                _ => return Err(bad("kv=tiled needs tile=N and scales=pow2|amax".into())),
            },
            Some("fp8") if !tiled_keys => match (fp8, k_scale) {
                (Some(fp8), Some(k_scale)) => KvFormat::PerTensor {
                    fp8,
                    k_scale,
                    v_scale: v_scale.unwrap_or(0),
                },
                _ => {
                    return Err(bad(
                        "kv=fp8 needs fp8=e4m3fn|e4m3fnuz and kscale=S (and vscale=S on gqla.decode.gqa)".into(),
                    ))
                }
            },
            _ => return Err(bad("tile and scales belong to kv=tiled; fp8, kscale and vscale to kv=fp8".into())),
        };
        let c = c.build().map_err(bad)?;
        // One spelling per case: the id must be the canonical one, so that a manifest cannot list
        // the same case twice under two spellings.
        if c.to_string() != id {
            return Err(bad(format!("not in canonical form; the canonical id is `{c}`")));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_case_stores_only_kernel_dtypes() {
        let case = crate::lattice::suite_cases().remove(0);
        let id = case.to_string();
        assert!(id.contains(&format!("dtype={}", case.dtype)), "{id}");
        for bad in ["f64", "float32", "f8"] {
            let e = id
                .replace(&format!("dtype={}", case.dtype), &format!("dtype={bad}"))
                .parse::<super::Case>();
            assert!(e.unwrap_err().to_string().contains("f32, bf16 or f16"), "{bad}");
        }
        let wide = super::CaseSpec {
            dtype: super::DType::F64,
            ..case.spec()
        };
        assert!(wide.build().unwrap_err().contains("f32, bf16 or f16"));
    }

    /// `kv=tiled` ids: they round-trip, name every parameter, and refuse what the format cannot
    /// hold (another op, dtype or tile), or parameters without the format.
    #[test]
    fn tiled_cache_ids_round_trip_and_refuse_what_the_format_cannot_hold() {
        let id = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=65,31;page=64;dtype=bf16;kv=tiled;tile=128;scales=pow2;seed=3";
        let case: super::Case = id.parse().unwrap();
        assert_eq!(case.to_string(), id);
        assert_eq!(
            case.kv(),
            super::KvFormat::Tiled {
                tile: 128,
                scales: super::ScaleRule::Pow2
            }
        );
        assert_eq!(case.tiled_record().unwrap(), gqla_reference::fp8::TiledRecord::DS_MLA_656);
        assert_eq!(case.shape_id(), id.trim_end_matches(";seed=3"));
        for (bad, why) in [
            (id.replace("dtype=bf16", "dtype=f32"), "dtype=bf16 with kv=tiled"),
            (id.replace("tile=128", "tile=96"), "a tile that divides dc"),
            (id.replace("tile=128", "tile=0"), "a tile that divides dc"),
            (id.replace("kv=tiled;", ""), "belong to kv=tiled"),
            (id.replace("tile=128;", ""), "needs tile=N and scales"),
            (id.replace("scales=pow2", "scales=e8m0"), "scales must be pow2 or amax"),
            (id.replace("kv=tiled", "kv=fp16"), "kv must be tiled or fp8"),
            (id.replace("kv=tiled", "kv=fp8"), "belong to kv=tiled"),
            (id.replace(";kv=tiled;tile=128;scales=pow2", "").replace("dtype=bf16", "kv=tiled;tile=128;scales=pow2;dtype=bf16"), "canonical"),
            (
                "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=1;ctx=65;page=64;dtype=bf16;kv=tiled;tile=128;scales=pow2;seed=1".into(),
                "on gqla.decode.absorb",
            ),
        ] {
            let e = bad.parse::<super::Case>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // Serialized with its parameters, and read back from a manifest's parameters.
        let json = serde_json::to_value(case.kv()).unwrap();
        assert_eq!(json, serde_json::json!({"tiled": {"tile": 128, "scales": "pow2", "fp8": "e4m3fn"}}));
        assert_eq!(serde_json::from_value::<super::KvFormat>(json).unwrap(), case.kv());
        assert_eq!(
            serde_json::from_value::<super::KvFormat>("native".into()).unwrap(),
            super::KvFormat::Native
        );
        let fnuz = serde_json::json!({"tiled": {"tile": 128, "scales": "pow2", "fp8": "e4m3fnuz"}});
        assert!(serde_json::from_value::<super::KvFormat>(fnuz).is_err());
    }

    /// `kv=fp8` ids: per-tensor scales as f32 (written as Rust prints them, read back to the same
    /// bits), the flavour named, vscale only on the GQA path; nonsense refused.
    #[test]
    fn per_tensor_cache_ids_round_trip_and_refuse_nonsense() {
        let gqa = "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=1;ctx=65,31;page=64;dtype=bf16;kv=fp8;fp8=e4m3fnuz;kscale=0.37;vscale=3.1;seed=2";
        let case: super::Case = gqa.parse().unwrap();
        assert_eq!(case.to_string(), gqa);
        assert_eq!(case.kv().per_tensor(), Some((super::Fp8::E4m3fnuz, 0.37, 3.1)));
        let json = serde_json::to_value(case.kv()).unwrap();
        assert_eq!(json["per_tensor"]["fp8"], "e4m3fnuz");
        assert_eq!(serde_json::from_value::<super::KvFormat>(json).unwrap(), case.kv());
        let absorb = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=65;page=64;dtype=bf16;kv=fp8;fp8=e4m3fn;kscale=0.005;seed=2";
        let a: super::Case = absorb.parse().unwrap();
        assert_eq!(
            serde_json::to_value(a.kv()).unwrap(),
            serde_json::json!({"per_tensor": {"fp8": "e4m3fn", "k_scale": 0.005f32}})
        );
        for (bad, why) in [
            (gqa.replace(";vscale=3.1", ""), "a finite positive vscale"),
            (gqa.replace("kscale=0.37", "kscale=0"), "a finite positive kscale"),
            (gqa.replace("kscale=0.37", "kscale=-1"), "a finite positive kscale"),
            (gqa.replace("kscale=0.37", "kscale=NaN"), "a finite positive kscale"),
            (gqa.replace("kscale=0.37", "kscale=inf"), "a finite positive kscale"),
            (gqa.replace("e4m3fnuz", "e5m2"), "fp8 must be e4m3fn or e4m3fnuz"),
            (gqa.replace(";fp8=e4m3fnuz", ""), "kv=fp8 needs fp8="),
            (gqa.replace("dtype=bf16", "dtype=f16"), "dtype=bf16 with kv=fp8"),
            (gqa.replace(";kv=fp8", ""), "vscale to kv=fp8"),
            (absorb.replace("seed=2", "vscale=1;seed=2"), "no vscale on gqla.decode.absorb"),
            (
                "gqa.decode:h=32;g=8;d=128;dv=128;sq=1;ctx=65;page=64;dtype=bf16;kv=fp8;fp8=e4m3fn;kscale=1;vscale=1;seed=1".into(),
                "on gqla.decode.absorb or gqla.decode.gqa",
            ),
        ] {
            let e = bad.parse::<super::Case>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
