//! Versioned operation definitions: axes, tensors, dtype rules, conventions and the pinned
//! reference. Exported as `definitions.json` with every vector pack and certificate, so that an
//! author outside this process reads the contract from the same source the judge uses.

use crate::case::{CacheOp, Case, DecodeOp, GroupCacheLayout, KvFormat, Op, OpKind};
use crate::shape::AxisName::*;
use crate::shape::{AxisName, CacheLayout, CaseAxes, Dim, Shape};
use serde::Serialize;

/// Whether an axis is fixed when a kernel is built (a specialisation), varies per call, or is
/// derived from other axes by a formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AxisRole {
    Fixed,
    Variable,
    Derived,
}

/// One named axis of a definition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Axis {
    pub name: &'static str,
    pub role: AxisRole,
    pub meaning: &'static str,
    /// A derived axis's formula in other axes (`d_c + d_r`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
}

/// When a tensor is part of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Always,
    /// gqla.decode.gqa with rope=once.
    RopeOnce,
    /// gqla.decode.gqa with rope=per_group.
    RopePerGroup,
    /// Paged caches only.
    Paged,
    /// Only when the case requests a split count.
    SplitsRequested,
    /// The cache one element per value: the case dtype, or per-tensor FP8 bytes (not `kv=tiled`).
    KvElements,
    /// The cache in FP8 tiled records (`kv=tiled`).
    KvTiled,
    /// The cache in per-tensor FP8 (`kv=fp8`).
    KvPerTensor,
}

impl Presence {
    fn holds(self, case: &Case) -> bool {
        match self {
            Presence::Always => true,
            Presence::RopeOnce => case.layout() == GroupCacheLayout::RopeOnce,
            Presence::RopePerGroup => case.layout() == GroupCacheLayout::RopePerGroup,
            Presence::Paged => case.page().is_some(),
            Presence::SplitsRequested => case.splits().is_some(),
            Presence::KvElements => !matches!(case.kv(), KvFormat::Tiled { .. }),
            Presence::KvTiled => matches!(case.kv(), KvFormat::Tiled { .. }),
            Presence::KvPerTensor => matches!(case.kv(), KvFormat::PerTensor { .. }),
        }
    }
}

/// The name of an input or output tensor, as it appears in definitions.json and in a pack's
/// safetensors files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorName {
    Q,
    Kv,
    KNope,
    KRope,
    K,
    V,
    Latent,
    WUkv,
    SeqLens,
    BlockTable,
    Scale,
    NumSplits,
    KScale,
    VScale,
    Out,
    Lse,
}

impl TensorName {
    pub const ALL: [TensorName; 16] = [
        TensorName::Q,
        TensorName::Kv,
        TensorName::KNope,
        TensorName::KRope,
        TensorName::K,
        TensorName::V,
        TensorName::Latent,
        TensorName::WUkv,
        TensorName::SeqLens,
        TensorName::BlockTable,
        TensorName::Scale,
        TensorName::NumSplits,
        TensorName::KScale,
        TensorName::VScale,
        TensorName::Out,
        TensorName::Lse,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            TensorName::Q => "q",
            TensorName::Kv => "kv",
            TensorName::KNope => "k_nope",
            TensorName::KRope => "k_rope",
            TensorName::K => "k",
            TensorName::V => "v",
            TensorName::Latent => "latent",
            TensorName::WUkv => "w_ukv",
            TensorName::SeqLens => "seq_lens",
            TensorName::BlockTable => "block_table",
            TensorName::Scale => "scale",
            TensorName::NumSplits => "num_splits",
            TensorName::KScale => "k_scale",
            TensorName::VScale => "v_scale",
            TensorName::Out => "out",
            TensorName::Lse => "lse",
        }
    }
    /// The name spelled `s`, if any tensor is.
    pub fn parse(s: &str) -> Option<TensorName> {
        TensorName::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

impl std::fmt::Display for TensorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tensor is, which decides how the inputs draw it and where poison lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// Queries or weights: dense random values.
    Dense,
    /// A cache: one row per slot, random where a sequence holds a key, poison elsewhere.
    Cache,
    /// Integers that address the cache (sequence lengths, block table, split count).
    Index,
    /// A scalar parameter (the softmax scale).
    Scalar,
    /// Written by the kernel.
    Output,
}

/// Which dtype a tensor has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DtypeRule {
    /// The case's dtype (f32, bf16 or f16).
    Case,
    F32,
    I32,
    /// Raw bytes (an FP8 cache record, laid out as its convention says).
    U8,
    /// A cache: the case dtype, or u8 FP8 bytes (e4m3fn or e4m3fnuz, as the id's `fp8=` says)
    /// with `kv=fp8`, each value x stored as fp8(clamp(x / scale, ±max)).
    Cache,
}

/// What a cache tensor holds where a correct kernel never reads.
const CACHE_POISON: &str = "NaN (finite random values in a poison=garbage twin) in every slot past seq_lens[b], \
     the tail of each sequence's last page and every page no sequence uses (page 0 among them)";

/// What a tiled FP8 record holds where a correct kernel never reads.
const TILED_POISON: &str = "in every slot past seq_lens[b], the tail of each sequence's last page and every page no sequence uses \
     (page 0 among them): e4m3fn NaN (0x7f) latent bytes, NaN scales and bf16 NaN RoPE values (a poison=garbage twin: \
     finite values quantized like live ones)";

/// One input or output tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorSpec {
    pub name: TensorName,
    pub kind: TensorKind,
    /// Shape in named axes (definitions.json lists the names; a cache, its contiguous and its
    /// paged list).
    pub shape: Shape,
    pub dtype: DtypeRule,
    pub meaning: &'static str,
    pub present: Presence,
    /// Which elements hold poison a correct kernel never reads (empty: none).
    pub poison: &'static str,
}

impl TensorSpec {
    const fn when(self, present: Presence) -> Self {
        TensorSpec { present, ..self }
    }
    const fn cache(self) -> Self {
        TensorSpec {
            kind: TensorKind::Cache,
            poison: CACHE_POISON,
            dtype: match self.dtype {
                DtypeRule::Case => DtypeRule::Cache,
                d => d,
            },
            ..self
        }
    }
    /// The tensor's rank.
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

/// A definition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Definition {
    pub name: &'static str,
    pub version: &'static str,
    pub axes: Vec<Axis>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub dtype_rules: Vec<&'static str>,
    pub conventions: Vec<&'static str>,
    /// The function whose f64 result is the truth.
    pub reference: &'static str,
    /// How case ids of this operation are spelled.
    pub id_grammar: &'static str,
}

impl Definition {
    /// The input tensors a case of this operation has.
    pub fn inputs_for(&self, case: &Case) -> Vec<&TensorSpec> {
        self.inputs.iter().filter(|t| t.present.holds(case)).collect()
    }
}

/// The id grammar, shared by every operation (keys in this order; optional ones only when set).
const ID_GRAMMAR: &str = "OP:KEYS;sq=S;ctx=C1,C2,...;page=P|none;dtype=f32|bf16|f16[;kv=tiled;tile=T;scales=pow2|amax]\
     [;kv=fp8;fp8=e4m3fn|e4m3fnuz;kscale=S[;vscale=S]][;splits=N][;scale=F][;logits=large|dominant]\
     [;poison=garbage];seed=N where KEYS is h=H;dc=DC;dn=DN;dr=DR (gqla.decode.absorb), \
     h=H;g=G;dn=DN;dr=DR;dv=DV;rope=once|per_group (gqla.decode.gqa), g=G;dc=DC;dn=DN;dv=DV without sq \
     (gqla.cache.expand), h=H;g=KV;d=D;dv=DV (gqa.decode); a context Ci is the keys before the s_q new tokens, \
     or `pad` for a padding row; only the canonical spelling is accepted";

/// A dimension axis of the table.
const fn axis(name: AxisName, role: AxisRole, meaning: &'static str) -> Axis {
    param(name.name(), role, meaning)
}

/// An axis that is a choice rather than a dimension (the GQA path's rope layout, the split count).
const fn param(name: &'static str, role: AxisRole, meaning: &'static str) -> Axis {
    Axis {
        name,
        role,
        meaning,
        formula: None,
    }
}

/// The axes table: `axes`, then every derived axis the tensors use, once each, in order of use.
fn with_derived(mut axes: Vec<Axis>, tensors: &[&TensorSpec]) -> Vec<Axis> {
    for d in tensors.iter().flat_map(|t| t.shape.derived()) {
        if !axes.iter().any(|a| a.name == d.name) {
            axes.push(Axis {
                name: d.name,
                role: AxisRole::Derived,
                meaning: d.meaning,
                formula: Some(d.formula.spelled()),
            });
        }
    }
    axes
}

const fn tensor(name: TensorName, kind: TensorKind, shape: Shape, dtype: DtypeRule, meaning: &'static str) -> TensorSpec {
    TensorSpec {
        name,
        kind,
        shape,
        dtype,
        meaning,
        present: Presence::Always,
        poison: "",
    }
}

use AxisRole::{Fixed, Variable};

const BATCH_AXES: [Axis; 6] = [
    axis(B, Variable, "sequences in the batch (padding rows hold no keys)"),
    axis(
        Capacity,
        Variable,
        "rows per sequence of a contiguous cache [B, capacity, width]: the longest sequence + 3",
    ),
    axis(NumPages, Variable, "pages in the pool of a paged cache [num_pages, page, width]"),
    axis(Page, Fixed, "page size of a paged cache (absent: contiguous)"),
    axis(MaxPages, Variable, "block-table columns"),
    param(
        "num_splits",
        Variable,
        "requested KV splits (absent: the kernel's choice); never changes the answer",
    ),
];

const DECODE_CONVENTIONS: [&str; 9] = [
    "scale is an explicit f32 input (the model's 1/sqrt(d_n + d_r), not 1/sqrt(key width)), never rounded to the case dtype",
    "sequence b holds seq_lens[b] = ctx_b + s_q keys; new token j sees keys t <= ctx_b + j (bottom-right causal)",
    "lse is the natural-log log-sum-exp of the scaled scores, in f32 (a kernel's profile may declare base 2, the storage dtype, or no lse)",
    "a row with no visible key (seq_lens[b] = 0) returns out = 0 and lse = -inf (a kernel's profile may declare out NaN or unspecified, lse +inf, a finite sentinel or unspecified)",
    "cache rows are addressed through the block table when paged: slot = block_table[b][t / page] * page + t % page; memory outside the sequences is poisoned with NaN and block-table entries past a sequence's pages are invalid",
    "a case with poison=garbage holds finite random values where its twin (the same id without poison=garbage) holds NaN, and its values mirrored: v negated (gqla.decode.absorb: the first d_c columns of the cache rows and of q); its lse must equal the twin's bitwise and its out the twin's negated (bit for bit, a zero of either sign)",
    "num_splits, when given, is how many KV chunks a split-KV kernel should use; more splits than keys leaves some empty, and the answer must not change",
    "inputs are read-only: a kernel that writes to them is INPUT_MUTATED",
    "logits=dominant: in each sequence the key at t = ctx_b / 2 (seen by every query row) has its scaled logit lifted by 40 for every head (each query plus a multiple of that key): the output is that key's value to within rounding",
];

/// gqla.decode.absorb with `kv=tiled` (FlashMLA's ds_mla_656 layout, any tile that divides d_c).
const TILED_CONVENTIONS: [&str; 6] = [
    "kv=tiled (gqla.decode.absorb, dtype=bf16): the cache is u8 records of tiled_record bytes per token, the token stride exactly tiled_record bytes; q and out stay bf16",
    "kv=tiled: the dequantised cache c_i = e4m3fn(byte_i) × s_(i / tile) and k^R (bf16) are the cache values; the reference decodes them exactly (SPEC.md F1), so a kernel is judged on its attention, not on the quantisation it was handed",
    "kv=tiled;scales=pow2: every scale is a power of two, 2^ceil(log2(max(amax / 448, 1e-4))) (FlashMLA's quantizer); scales=amax: max(amax / 448, 1e-4) in f32, any value, which a reader multiplies as declared in its profile (fp8.scale_read)",
    "kv=tiled;poison=garbage: the twin's records hold the NaN twin's latent values negated (sign bits flipped, scales equal) and its q's first d_c columns negated",
    "kv=tiled: the latent of tile t is drawn at magnitude 1/4 (even t) or 2 (odd t), so neighbouring tiles have different scales; every 11 tokens the cache holds its scale edges on purpose (an all-zero tile, amax exactly 448·2^k, one bf16 ulp above it, amax 336·2^k)",
    "kv=fp8;fp8=F;kscale=S (gqla.decode.absorb, dtype=bf16): every cache value is one byte of F (e4m3fn, max 448; e4m3fnuz, max 240, NaN 0x80), x = fp8 × k_scale, written as fp8(clamp(x / k_scale, ±max)): values past the range saturate; poison is F's NaN byte",
];

/// gqla.decode.gqa with `kv=fp8`.
const GQA_FP8_CONVENTION: &str =
    "kv=fp8;fp8=F;kscale=S;vscale=T (gqla.decode.gqa, dtype=bf16): k_nope, k_rope (or k) and v are bytes of F, \
     keys = fp8 × k_scale and values = fp8 × v_scale, written as fp8(clamp(x / scale, ±max)); the reference decodes the dequantised \
     cache exactly (SPEC.md F4); poison is F's NaN byte";

const DECODE_DTYPE_RULES: [&str; 3] = [
    "q, cache tensors and out share the case dtype (f32, bf16 or f16), except FP8 caches (kv=tiled, kv=fp8: u8 bytes, bf16 q and out); accumulate in at least f32; a pack's out may be any float dtype",
    "lse is f32 whatever the case dtype, unless the kernel's profile declares the storage dtype; scale is f32",
    "seq_lens, block_table, num_splits are i32",
];

/// The derived widths the tensors share, each declared once: definitions.json lists them in the
/// axes table with their formulas.
mod widths {
    use crate::shape::AxisName::*;
    use crate::shape::{Derived, Dim, Formula};
    const fn derived(name: &'static str, formula: Formula, meaning: &'static str) -> Derived {
        Derived { name, formula, meaning }
    }
    pub const LATENT_ROW: Dim = Dim::Derived(&derived(
        "latent_row",
        Formula::Sum(Dc, Dr),
        "a latent row [c; k^R], and the absorbed query that meets it",
    ));
    pub const GROUP_KEY: Dim = Dim::Derived(&derived("group_key", Formula::Sum(Dn, Dr), "a group's key [k_g; k^R]"));
    pub const GROUP_KEYS: Dim = Dim::Derived(&derived(
        "group_keys",
        Formula::Product(G, Dn),
        "every group's no-rope keys [k_0 ... k_{G-1}]",
    ));
    pub const GROUP_KEYS_WITH_ROPE: Dim = Dim::Derived(&derived(
        "group_keys_with_rope",
        Formula::ProductOfSum(G, Dn, Dr),
        "every group's [k_g; k^R] (the per-group rope layout)",
    ));
    pub const GROUP_VALUES: Dim = Dim::Derived(&derived(
        "group_values",
        Formula::Product(G, Dv),
        "every group's values [v_0 ... v_{G-1}]",
    ));
    pub const UP_PROJECTION_ROWS: Dim = Dim::Derived(&derived(
        "up_projection_rows",
        Formula::ProductOfSum(G, Dn, Dv),
        "[W_UK_g; W_UV_g] rows over every group",
    ));
    pub const KV_KEYS: Dim = Dim::Derived(&derived("kv_keys", Formula::Product(Kv, D), "every kv head's keys"));
    pub const KV_VALUES: Dim = Dim::Derived(&derived("kv_values", Formula::Product(Kv, Dv), "every kv head's values"));
    pub const TILED_RECORD: Dim = Dim::Derived(&derived(
        "tiled_record",
        Formula::TiledRecord {
            dc: Dc,
            tile: Tile,
            dr: Dr,
        },
        "bytes of one token's FP8 tiled record (656 for DeepSeek-V3.2's ds_mla_656)",
    ));
}
use widths::*;

fn decode_io(op: DecodeOp) -> (Vec<Axis>, Vec<TensorSpec>, Shape) {
    let common = |mut axes: Vec<Axis>| {
        axes.extend([axis(Sq, Variable, "new query tokens per sequence"), axis(H, Fixed, "query heads")]);
        axes
    };
    match op {
        DecodeOp::Absorb => (
            common(vec![
                axis(Dc, Fixed, "latent width (the value width)"),
                axis(Dr, Fixed, "decoupled RoPE key width"),
                axis(Dn, Fixed, "no-rope head width: only sets the model's default scale"),
                axis(Tile, Fixed, "kv=tiled: latent values per f32 scale (a divisor of d_c)"),
            ]),
            vec![
                tensor(
                    TensorName::Q,
                    TensorKind::Dense,
                    Shape::Dims(&[Dim::Of(B), Dim::Of(Sq), Dim::Of(H), LATENT_ROW]),
                    DtypeRule::Case,
                    "absorbed queries [W_UK^T q^N; q^R]",
                ),
                tensor(
                    TensorName::Kv,
                    TensorKind::Dense,
                    Shape::Cache(LATENT_ROW),
                    DtypeRule::Case,
                    "cache rows [c; k^R]; the value is the first d_c columns",
                )
                .cache()
                .when(Presence::KvElements),
                TensorSpec {
                    poison: TILED_POISON,
                    ..tensor(
                        TensorName::Kv,
                        TensorKind::Dense,
                        Shape::Cache(TILED_RECORD),
                        DtypeRule::U8,
                        "kv=tiled: per token the FP8 record of [c; k^R]: bytes [0, d_c) e4m3fn c_i / s_(i / tile); \
                         bytes [d_c, d_c + 4·d_c/tile) one little-endian f32 scale s per tile; then d_r little-endian bf16 \
                         k^R values, unquantized. Dequantise c_i = e4m3fn(byte_i) × s_(i / tile)",
                    )
                    .cache()
                    .when(Presence::KvTiled)
                },
            ],
            Shape::Dims(&[Dim::Of(B), Dim::Of(Sq), Dim::Of(H), Dim::Of(Dc)]),
        ),
        DecodeOp::Gqa => (
            common(vec![
                axis(G, Fixed, "groups; head i reads group i / (H/G)"),
                axis(Dn, Fixed, "per-group key width"),
                axis(Dr, Fixed, "shared RoPE key width"),
                axis(Dv, Fixed, "per-group value width"),
                param(
                    "rope",
                    Fixed,
                    "once: k^R stored once per token; per_group: folded into each group's key",
                ),
            ]),
            vec![
                tensor(
                    TensorName::Q,
                    TensorKind::Dense,
                    Shape::Dims(&[Dim::Of(B), Dim::Of(Sq), Dim::Of(H), GROUP_KEY]),
                    DtypeRule::Case,
                    "queries [q^N; q^R]",
                ),
                tensor(
                    TensorName::KNope,
                    TensorKind::Dense,
                    Shape::Cache(GROUP_KEYS),
                    DtypeRule::Case,
                    "rope=once: per-group keys W_UK_g c",
                )
                .cache()
                .when(Presence::RopeOnce),
                tensor(
                    TensorName::KRope,
                    TensorKind::Dense,
                    Shape::Cache(Dim::Of(Dr)),
                    DtypeRule::Case,
                    "rope=once: the shared RoPE key",
                )
                .cache()
                .when(Presence::RopeOnce),
                tensor(
                    TensorName::K,
                    TensorKind::Dense,
                    Shape::Cache(GROUP_KEYS_WITH_ROPE),
                    DtypeRule::Case,
                    "rope=per_group: [k_g; k^R] per group",
                )
                .cache()
                .when(Presence::RopePerGroup),
                tensor(
                    TensorName::V,
                    TensorKind::Dense,
                    Shape::Cache(GROUP_VALUES),
                    DtypeRule::Case,
                    "per-group values W_UV_g c",
                )
                .cache(),
            ],
            Shape::Dims(&[Dim::Of(B), Dim::Of(Sq), Dim::Of(H), Dim::Of(Dv)]),
        ),
        DecodeOp::PlainGqa => (
            common(vec![
                axis(Kv, Fixed, "kv heads; head i reads kv head i / (H/KV)"),
                axis(D, Fixed, "key width"),
                axis(Dv, Fixed, "value width"),
            ]),
            vec![
                tensor(
                    TensorName::Q,
                    TensorKind::Dense,
                    Shape::Dims(&[Dim::Of(B), Dim::Of(Sq), Dim::Of(H), Dim::Of(D)]),
                    DtypeRule::Case,
                    "queries",
                ),
                tensor(TensorName::K, TensorKind::Dense, Shape::Cache(KV_KEYS), DtypeRule::Case, "keys").cache(),
                tensor(TensorName::V, TensorKind::Dense, Shape::Cache(KV_VALUES), DtypeRule::Case, "values").cache(),
            ],
            Shape::Dims(&[Dim::Of(B), Dim::Of(Sq), Dim::Of(H), Dim::Of(Dv)]),
        ),
    }
}

fn indexing() -> Vec<TensorSpec> {
    vec![
        tensor(
            TensorName::SeqLens,
            TensorKind::Index,
            Shape::Dims(&[Dim::Of(B)]),
            DtypeRule::I32,
            "keys held by each sequence",
        ),
        TensorSpec {
            poison: "entries past a sequence's pages hold 2147483640 (i32::MAX - 7), far out of range",
            ..tensor(
                TensorName::BlockTable,
                TensorKind::Index,
                Shape::Dims(&[Dim::Of(B), Dim::Of(MaxPages)]),
                DtypeRule::I32,
                "page ids of each sequence",
            )
            .when(Presence::Paged)
        },
    ]
}

/// The definition of `op`.
pub fn definition(op: Op) -> Definition {
    match op.kind() {
        OpKind::Cache(CacheOp::Expand) => expand_definition(),
        OpKind::Decode(d) => decode_definition(d),
    }
}

/// `gqla.cache.expand`.
fn expand_definition() -> Definition {
    let mut axes = vec![
        axis(G, Fixed, "groups"),
        axis(Dc, Fixed, "latent width"),
        axis(Dn, Fixed, "per-group key width"),
        axis(Dv, Fixed, "per-group value width"),
        axis(Tokens, Variable, "sum of seq_lens"),
    ];
    axes.extend(BATCH_AXES.into_iter().filter(|a| a.name != "num_splits"));
    let mut inputs = vec![
        tensor(
            TensorName::Latent,
            TensorKind::Dense,
            Shape::Cache(Dim::Of(Dc)),
            DtypeRule::Case,
            "latent cache rows c",
        )
        .cache(),
        tensor(
            TensorName::WUkv,
            TensorKind::Dense,
            Shape::Dims(&[UP_PROJECTION_ROWS, Dim::Of(Dc)]),
            DtypeRule::Case,
            "[W_UK_g; W_UV_g] per group, group-major, keys first",
        ),
    ];
    inputs.extend(indexing());
    let outputs = vec![
        tensor(
            TensorName::K,
            TensorKind::Output,
            Shape::Dims(&[Dim::Of(Tokens), GROUP_KEYS]),
            DtypeRule::Case,
            "k_g = W_UK_g c for every cached token, sequences in order",
        ),
        tensor(
            TensorName::V,
            TensorKind::Output,
            Shape::Dims(&[Dim::Of(Tokens), GROUP_VALUES]),
            DtypeRule::Case,
            "v_g = W_UV_g c",
        ),
    ];
    Definition {
        name: Op::CacheExpand.name(),
        version: "1",
        axes: with_derived(axes, &inputs.iter().chain(&outputs).collect::<Vec<_>>()),
        inputs,
        outputs,
        dtype_rules: vec!["inputs and outputs share the case dtype; accumulate in at least f32"],
        conventions: vec![
            "k_g = W_UK_g c, v_g = W_UV_g c for every cached token (SPEC.md eq. E)",
            "tokens of sequence 0 first, then sequence 1, ...; padding rows contribute none",
            "a case with poison=garbage holds finite random values where its twin (the same id without poison=garbage) holds NaN, and its latent rows negated: its k and v must be the twin's negated (bit for bit, a zero of either sign)",
        ],
        reference: "gqla_conformance::reference::compute (f64 matrix-vector products)",
        id_grammar: ID_GRAMMAR,
    }
}

/// An attention decode.
fn decode_definition(op: DecodeOp) -> Definition {
    let (mut axes, mut inputs, out_shape) = decode_io(op);
    axes.extend(BATCH_AXES);
    inputs.extend(indexing());
    inputs.push(tensor(
        TensorName::Scale,
        TensorKind::Scalar,
        Shape::Dims(&[]),
        DtypeRule::F32,
        "softmax scale",
    ));
    if matches!(op, DecodeOp::Absorb | DecodeOp::Gqa) {
        inputs.push(
            tensor(
                TensorName::KScale,
                TensorKind::Scalar,
                Shape::Dims(&[]),
                DtypeRule::F32,
                "kv=fp8: the keys' per-tensor scale (the absorb path's whole cache row): k = fp8 × k_scale",
            )
            .when(Presence::KvPerTensor),
        );
    }
    if op == DecodeOp::Gqa {
        inputs.push(
            tensor(
                TensorName::VScale,
                TensorKind::Scalar,
                Shape::Dims(&[]),
                DtypeRule::F32,
                "kv=fp8: the values' per-tensor scale: v = fp8 × v_scale",
            )
            .when(Presence::KvPerTensor),
        );
    }
    inputs.push(
        tensor(
            TensorName::NumSplits,
            TensorKind::Index,
            Shape::Dims(&[]),
            DtypeRule::I32,
            "the requested split count",
        )
        .when(Presence::SplitsRequested),
    );
    let outputs = vec![
        tensor(
            TensorName::Out,
            TensorKind::Output,
            out_shape,
            DtypeRule::Case,
            "attention output per query head",
        ),
        tensor(
            TensorName::Lse,
            TensorKind::Output,
            Shape::Dims(&[Dim::Of(B), Dim::Of(Sq), Dim::Of(H)]),
            DtypeRule::F32,
            "natural-log log-sum-exp of the scaled scores",
        ),
    ];
    Definition {
        name: op.op().name(),
        version: "1",
        axes: with_derived(axes, &inputs.iter().chain(&outputs).collect::<Vec<_>>()),
        inputs,
        outputs,
        dtype_rules: DECODE_DTYPE_RULES.to_vec(),
        conventions: match op {
            DecodeOp::Absorb => DECODE_CONVENTIONS.iter().chain(&TILED_CONVENTIONS).copied().collect(),
            DecodeOp::Gqa => DECODE_CONVENTIONS.iter().chain(&[GQA_FP8_CONVENTION]).copied().collect(),
            DecodeOp::PlainGqa => DECODE_CONVENTIONS.to_vec(),
        },
        reference: "gqla_reference::attention::attend_row in f64 (SPEC.md eqs. S, P, O), via gqla_conformance::reference::compute",
        id_grammar: ID_GRAMMAR,
    }
}

/// The definitions of every operation, in [`Op::ALL`] order.
pub fn all() -> Vec<Definition> {
    Op::ALL.into_iter().map(definition).collect()
}

/// The cache tensors a case's inputs hold, with their row widths: the last dimension of their shape formula.
pub fn cache_components(case: &Case) -> Vec<(TensorName, usize)> {
    let def = definition(case.op());
    let axes = CaseAxes {
        case,
        layout: CacheLayout::Contiguous { capacity: 1 },
    };
    def.inputs
        .iter()
        .filter(|t| t.present.holds(case) && t.kind == TensorKind::Cache)
        .filter_map(|t| Some((t.name, t.shape.cache_width(&axes)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The axes table is closed: every name a tensor's shape uses, in either cache layout, is an
    /// axis of its definition, and every derived axis's formula names only axes of the table.
    #[test]
    fn every_shape_names_axes_of_its_table() {
        for def in all() {
            let declared: Vec<&str> = def.axes.iter().map(|a| a.name).collect();
            let mut unique = declared.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), declared.len(), "{}: an axis is listed twice", def.name);
            for t in def.inputs.iter().chain(&def.outputs) {
                for name in t.shape.names() {
                    assert!(declared.contains(&name), "{}: `{}` uses undeclared axis `{name}`", def.name, t.name);
                }
            }
            for a in def.axes.iter().filter(|a| a.role == AxisRole::Derived) {
                let formula = a.formula.as_deref().expect("a derived axis has a formula");
                let operands = formula
                    .split(|c: char| "+·()/ ".contains(c))
                    .filter(|s| !s.is_empty() && !s.chars().all(|c| c.is_ascii_digit()));
                for name in operands {
                    assert!(declared.contains(&name), "{}: `{}` = {formula} names `{name}`", def.name, a.name);
                }
            }
        }
        let json = serde_json::to_value(definition(Op::DecodeAbsorb)).unwrap();
        assert_eq!(json["inputs"][0]["shape"], serde_json::json!(["B", "s_q", "H", "latent_row"]));
        let latent_row = json["axes"].as_array().unwrap().iter().find(|a| a["name"] == "latent_row").unwrap();
        assert_eq!(
            (latent_row["role"].as_str(), latent_row["formula"].as_str()),
            (Some("derived"), Some("d_c + d_r"))
        );
    }
}
