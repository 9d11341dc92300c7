//! What a kernel declares before anything runs: the cases it supports and the conventions it
//! follows, chosen from a finite menu. Judging follows the declaration: a case outside the
//! profile is NOT_SUPPORTED by declaration and is not run; every case inside it must PASS, judged
//! exactly as declared.
//!
//! The menu, and which real stacks sit where (read from their code and tests; see
//! `shared/notes/anchors-kernel-tests.md` for the sources):
//!
//! | entry | choices | who |
//! |---|---|---|
//! | `lse` | `"none"` | PyTorch SDPA, most fused kernels |
//! | `lse.dtype` | `f32` | FlashAttention, FlashMLA, FlashInfer, SGLang Triton decode |
//! |  | `storage` (the case dtype) | callers that keep the LSE beside `out` (JAX residuals in bf16) |
//! | `lse.base` | `e` | FlashAttention, FlashMLA, SGLang, JAX |
//! |  | `2` | FlashInfer (MLA and the paged wrappers), flashinfer-bench definitions |
//! | `lse.empty_row` | `neg_inf` | flashinfer-bench's MLA reference, this suite's definition |
//! |  | `pos_inf` | FlashAttention 2/3 and FlashMLA (`sum == 0` gives `INFINITY`) |
//! |  | `{"finite": v}` | JAX's XLA attention (masked logits at −0.7·finfo.max: about −2.38e38) |
//! |  | `unspecified` | kernels that leave padding rows undefined (FlashInfer tests skip them) |
//! | `out_empty_row` | `zero` | FlashAttention, FlashMLA, FlashInfer |
//! |  | `nan` | kernels that divide by a zero sum (SGLang Triton decode before PR#1779: 0/0) |
//! |  | `unspecified` | JAX (a fully masked row averages every value it was given) |
//! | `scale` | `"input"` | every serving kernel (`sm_scale`, `softmax_scale`, `scale=`) |
//! |  | `{"fixed": s}` | test references that hard-code 1/sqrt(key width) |
//! | `split_counts` | `honoured` | FlashDecoding-style kernels that take `num_splits` / `num_kv_splits` |
//! |  | `ignored` | kernels with no KV split, or their own heuristic |
//!
//! Shape axes (operations, dtypes, paging, s_q, rope layouts) select cases; conventions change
//! how a selected case's outputs are judged, never whether the answer is right.

use crate::case::{Case, DType, Fp8, GroupCacheLayout, KvFormat, KvFormatKind, Op, ScaleRule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Which page sizes a kernel takes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PageSizes {
    /// `"any"`, or `"none"` (contiguous caches only).
    Named(PageSizesName),
    /// An explicit list, e.g. `[16, 64]`.
    List(BTreeSet<usize>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageSizesName {
    Any,
    None,
}

impl PageSizes {
    fn takes(&self, page: usize) -> bool {
        match self {
            PageSizes::Named(PageSizesName::Any) => true,
            PageSizes::Named(PageSizesName::None) => false,
            PageSizes::List(l) => l.contains(&page),
        }
    }
}

/// The s_q values a kernel takes, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqRange {
    pub min: usize,
    pub max: usize,
}

/// Whether a requested split count (the `num_splits` input) is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitCounts {
    /// The kernel splits the keys as asked: split-count invariance is certified.
    Honoured,
    /// The kernel ignores `num_splits`: those cases still run, but certify nothing about splits.
    Ignored,
}

/// The dtype the LSE is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LseDtype {
    /// f32, whatever the storage dtype: judged at f32's unit roundoff.
    F32,
    /// The case's storage dtype: judged at that dtype's unit roundoff, against the naive
    /// reference's LSE rounded the same way.
    Storage,
}

/// The logarithm's base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LseBase {
    #[serde(rename = "e")]
    E,
    #[serde(rename = "2")]
    Two,
}

/// What the LSE of a row with no visible key is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyLse {
    NegInf,
    PosInf,
    /// A finite masking value; the kernel's must equal it to 2^-7 relative (a bf16 ulp).
    Finite(f32),
    /// Not judged.
    Unspecified,
}

/// What `out` of a row with no visible key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyOut {
    Zero,
    Nan,
    /// Not judged.
    Unspecified,
}

/// A convention that may differ by dtype: one value for every dtype, or a map from each declared
/// dtype to its value (`{"f32": {"finite": -2.38e38}, "bf16": ..., "f16": "neg_inf"}`), for a
/// framework whose masking value overflows to −∞ in the narrower dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum ByDtype<T> {
    All(T),
    Each(BTreeMap<DType, T>),
}

impl<T: Copy> ByDtype<T> {
    /// The value for `dtype` (None: a map that does not name it, which validation refuses for a
    /// declared dtype).
    pub fn get(&self, dtype: DType) -> Option<T> {
        match self {
            ByDtype::All(v) => Some(*v),
            ByDtype::Each(m) => m.get(&dtype).copied(),
        }
    }
    /// Every value given.
    fn values(&self) -> Vec<T> {
        match self {
            ByDtype::All(v) => vec![*v],
            ByDtype::Each(m) => m.values().copied().collect(),
        }
    }
    /// In words, with `name` for one value.
    fn describe(&self, name: impl Fn(T) -> String) -> String {
        match self {
            ByDtype::All(v) => name(*v),
            ByDtype::Each(m) => m
                .iter()
                .map(|(d, v)| format!("{}: {}", d.name(), name(*v)))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

impl<T: Serialize> Serialize for ByDtype<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ByDtype::All(v) => v.serialize(s),
            ByDtype::Each(m) => m.serialize(s),
        }
    }
}

/// A map whose keys are all dtype names is per dtype; anything else (a name, `{"finite": v}`) is
/// one value for every dtype.
impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for ByDtype<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        let dtype_of = |k: &str| serde_json::from_value::<DType>(serde_json::Value::String(k.into())).ok();
        match &v {
            serde_json::Value::Object(m) if !m.is_empty() && m.keys().all(|k| dtype_of(k).is_some()) => {
                let mut each = BTreeMap::new();
                for (k, x) in m {
                    let value = serde_json::from_value(x.clone()).map_err(|e| D::Error::custom(format!("{k}: {e}")))?;
                    each.insert(dtype_of(k).expect("checked"), value);
                }
                Ok(ByDtype::Each(each))
            }
            _ => serde_json::from_value(v).map(ByDtype::All).map_err(D::Error::custom),
        }
    }
}

/// The LSE a decode kernel writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LseConvention {
    pub dtype: LseDtype,
    pub base: LseBase,
    pub empty_row: ByDtype<EmptyLse>,
}

/// Whether the kernel writes an LSE, and how.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Lse {
    /// `"none"`: `out` only; the LSE is not certified.
    Named(NoLse),
    Written(LseConvention),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoLse {
    None,
}

// `PageSizes` and `Lse` take a name or a structure. serde's untagged enums would answer a typo
// with "data did not match any variant": these say which forms are allowed, and let the
// structure's own errors (an unknown `base`, a missing `dtype`) through.

impl<'de> Deserialize<'de> for PageSizes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PageSizes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""any", "none" or a list of page sizes such as [16, 64]"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PageSizes, E> {
                match v {
                    "any" => Ok(PageSizes::Named(PageSizesName::Any)),
                    "none" => Ok(PageSizes::Named(PageSizesName::None)),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<PageSizes, A::Error> {
                BTreeSet::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(PageSizes::List)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Lse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Lse;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""none" or {"dtype": "f32"|"storage", "base": "e"|"2", "empty_row": ...}"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lse, E> {
                match v {
                    "none" => Ok(Lse::Named(NoLse::None)),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Lse, A::Error> {
                LseConvention::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Lse::Written)
            }
        }
        d.deserialize_any(V)
    }
}

impl Lse {
    pub fn written(&self) -> Option<&LseConvention> {
        match self {
            Lse::Named(NoLse::None) => None,
            Lse::Written(c) => Some(c),
        }
    }
}

/// Where the softmax scale comes from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// The case's `scale` input is used.
    Input,
    /// The kernel always uses this value: every decode case is drawn at this f32 scale (see
    /// [`Profile::draw`]), so the kernel is judged on the whole lattice.
    Fixed(f32),
}

/// A kernel's declaration. What it supports (`operations`, `dtypes`) and the conventions that
/// decide how its outputs are judged (`out_empty_row`, `lse`) are required; the rest have the
/// default most kernels would write, given in [`Profile::DEFAULTS`]. At least one cache layout
/// (`contiguous` or `page_sizes`) must be declared, and `rope_layouts` when `gqla.decode.gqa` is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub operations: BTreeSet<Op>,
    pub dtypes: BTreeSet<DType>,
    /// Contiguous caches ([B, capacity, width]).
    #[serde(default)]
    pub contiguous: bool,
    /// Paged caches ([num_pages, page, width] with a block table).
    #[serde(default = "PageSizes::none")]
    pub page_sizes: PageSizes,
    #[serde(default = "SqRange::one")]
    pub s_q: SqRange,
    #[serde(default = "SplitCounts::ignored")]
    pub split_counts: SplitCounts,
    /// gqla.decode.gqa only: where the rope key is stored.
    #[serde(default)]
    pub rope_layouts: BTreeSet<GroupCacheLayout>,
    #[serde(default = "Scale::input")]
    pub scale: Scale,
    pub out_empty_row: ByDtype<EmptyOut>,
    pub lse: Lse,
    /// The FP8 caches the kernel reads (absent: none, and every FP8 case is NOT_SUPPORTED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8: Option<Fp8Caches>,
}

/// How a kernel reads a tiled record's stored scales before it multiplies (a per-tensor scale is
/// an f32 input, multiplied in f32 by every reader).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRead {
    /// Powers of two only (FlashMLA SM100's E8M0 scales, FlashInfer's `pow2_fp32`, which rebuilds
    /// 2^floor(log2 s)): a cache written with arbitrary scales is outside the profile.
    Pow2,
    /// Any f32 scale, multiplied in f32.
    ArbitraryF32,
    /// Any scale, rounded to bf16 and multiplied in bf16 (FlashMLA's SM90 decode): the naive
    /// reference reads the cache the same way.
    ArbitraryBf16,
}

impl ScaleRead {
    /// Whether a reader of this kind reads a cache whose scales were written by `rule`.
    pub fn reads(self, rule: ScaleRule) -> bool {
        match self {
            ScaleRead::Pow2 => rule == ScaleRule::Pow2,
            ScaleRead::ArbitraryF32 | ScaleRead::ArbitraryBf16 => true,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ScaleRead::Pow2 => "pow2",
            ScaleRead::ArbitraryF32 => "arbitrary_f32",
            ScaleRead::ArbitraryBf16 => "arbitrary_bf16",
        }
    }
}

/// The FP8 caches a kernel reads: `{"formats": ["tiled", "per_tensor"], "tiles": [128],
/// "flavours": ["e4m3fn"], "scale_read": "pow2"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fp8Caches {
    /// The cache formats (`tiled`: FlashMLA's record, `ds_mla_656` with tile 128).
    pub formats: BTreeSet<KvFormatKind>,
    /// Tile sizes a tiled reader takes (absent: any divisor of d_c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<BTreeSet<usize>>,
    /// The FP8 element types of a per-tensor cache (tiled records are e4m3fn).
    #[serde(default = "Fp8Caches::e4m3fn")]
    pub flavours: BTreeSet<Fp8>,
    pub scale_read: ScaleRead,
}

impl Fp8Caches {
    fn e4m3fn() -> BTreeSet<Fp8> {
        [Fp8::E4m3fn].into_iter().collect()
    }
}

impl PageSizes {
    fn none() -> Self {
        PageSizes::Named(PageSizesName::None)
    }
}
impl SqRange {
    fn one() -> Self {
        SqRange { min: 1, max: 1 }
    }
}
impl SplitCounts {
    fn ignored() -> Self {
        SplitCounts::Ignored
    }
}
impl Scale {
    fn input() -> Self {
        Scale::Input
    }
}

/// A profile that makes no sense.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("profile field `{field}`: {why}")]
pub struct ProfileError {
    /// Where in the profile, e.g. `lse.base` or `operations[2]`.
    pub field: String,
    pub why: String,
}

/// Deserialize a `T` from JSON, an error naming where it arose (`prefix` + its path, such as
/// `lse.base`) with serde's own account of what was expected.
pub fn parse_json<'de, T: Deserialize<'de>>(
    de: &mut serde_json::Deserializer<impl serde_json::de::Read<'de>>,
    prefix: &str,
) -> Result<T, ProfileError> {
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", ".") => "(the profile)".to_string(),
            (p, ".") => p.to_string(),
            ("", path) => path.to_string(),
            (p, path) => format!("{p}.{path}"),
        };
        let why = e.into_inner().to_string();
        let why = match missing_field_forms(&why) {
            Some((name, forms)) => format!("{why}; `{name}` takes {forms}"),
            None => why,
        };
        ProfileError { field, why }
    })?;
    de.end().map_err(|e| ProfileError {
        field: if prefix.is_empty() {
            "(the profile)".to_string()
        } else {
            prefix.to_string()
        },
        why: e.to_string(),
    })?;
    Ok(value)
}

/// What a required field takes, for serde's "missing field `x`" (which names no allowed value).
fn missing_field_forms(why: &str) -> Option<(&str, String)> {
    let field = why.strip_prefix("missing field `")?.split('`').next()?;
    let per_dtype = ", or a map from each declared dtype to one";
    let forms = match field {
        "operations" => format!(
            "a list of {}",
            Op::ALL.iter().map(|o| format!("\"{}\"", o.name())).collect::<Vec<_>>().join(", ")
        ),
        "dtypes" => r#"a list of "f32", "bf16", "f16""#.into(),
        "out_empty_row" => format!(r#""zero", "nan" or "unspecified"{per_dtype}"#),
        "lse" => r#""none" or {"dtype": "f32"|"storage", "base": "e"|"2", "empty_row": ...}"#.into(),
        "dtype" => r#""f32" or "storage""#.into(),
        "base" => r#""e" or "2""#.into(),
        "empty_row" => format!(r#""neg_inf", "pos_inf", {{"finite": v}} or "unspecified"{per_dtype}"#),
        "min" | "max" => "a positive integer".into(),
        _ => return None,
    };
    Some((field, forms))
}

/// Why a case is outside a profile: one axis the profile leaves out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exclusion {
    Operation(Op),
    DType(DType),
    Contiguous,
    PageSize(usize),
    Sq(usize),
    GroupCacheLayout(GroupCacheLayout),
    KvFormat(KvFormatKind),
    Tile(usize),
    Scales(ScaleRule),
    Flavour(Fp8),
}

impl Exclusion {
    /// The axis, for grouping in certificates.
    pub fn axis(&self) -> String {
        match self {
            Exclusion::Operation(op) => format!("operation {}", op.name()),
            Exclusion::DType(d) => format!("dtype {}", d.name()),
            Exclusion::Contiguous => "contiguous caches".into(),
            Exclusion::PageSize(p) => format!("page size {p}"),
            Exclusion::Sq(s) => format!("s_q = {s}"),
            Exclusion::GroupCacheLayout(l) => format!("rope layout {}", l.name()),
            Exclusion::KvFormat(k) => format!("cache format {}", k.name()),
            Exclusion::Tile(t) => format!("FP8 tile size {t}"),
            Exclusion::Scales(r) => format!("FP8 scales written {} (fp8.scale_read)", r.name()),
            Exclusion::Flavour(f) => format!("FP8 flavour {}", f.name()),
        }
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not in the declared profile", self.axis())
    }
}

impl Profile {
    /// The fields a profile may leave out, and what they then are (the README's Profiles table
    /// shows the same; a test holds them to the deserializer).
    pub const DEFAULTS: [(&'static str, &'static str); 7] = [
        ("contiguous", "false"),
        ("page_sizes", "\"none\""),
        ("s_q", "{\"min\": 1, \"max\": 1} (plain decode)"),
        ("split_counts", "\"ignored\""),
        ("rope_layouts", "[] (required when gqla.decode.gqa is declared)"),
        ("scale", "\"input\""),
        ("fp8", "null (absent: no FP8 cache is read)"),
    ];

    /// Every case of the suite, with the suite's own conventions (out = 0, LSE = −∞ in f32 and
    /// base e for an empty row; split counts honoured; the scale an input).
    pub fn everything() -> Self {
        Profile {
            operations: Op::ALL.into_iter().collect(),
            dtypes: [DType::F32, DType::Bf16, DType::F16].into_iter().collect(),
            contiguous: true,
            page_sizes: PageSizes::Named(PageSizesName::Any),
            s_q: SqRange { min: 1, max: 64 },
            split_counts: SplitCounts::Honoured,
            rope_layouts: [GroupCacheLayout::RopeOnce, GroupCacheLayout::RopePerGroup].into_iter().collect(),
            scale: Scale::Input,
            out_empty_row: ByDtype::All(EmptyOut::Zero),
            lse: Lse::Written(LseConvention {
                dtype: LseDtype::F32,
                base: LseBase::E,
                empty_row: ByDtype::All(EmptyLse::NegInf),
            }),
            fp8: Some(Fp8Caches {
                formats: [KvFormatKind::Tiled, KvFormatKind::PerTensor].into_iter().collect(),
                tiles: None,
                flavours: Fp8::ALL.into_iter().collect(),
                scale_read: ScaleRead::ArbitraryF32,
            }),
        }
    }

    /// The same declaration without FP8 caches (a kernel that reads only the case dtype).
    pub fn without_fp8(self) -> Self {
        Profile { fp8: None, ..self }
    }

    /// Check the declaration once, at construction (deserialization does not).
    pub fn validate(&self) -> Result<(), ProfileError> {
        let bad = |field: &str, why: &str| {
            Err(ProfileError {
                field: field.to_string(),
                why: why.to_string(),
            })
        };
        if let Some(d) = self.dtypes.iter().find(|d| !d.is_kernel_storage()) {
            return bad("dtypes", &format!("kernels store f32, bf16 or f16, not {d}"));
        }
        if self.s_q.min == 0 || self.s_q.min > self.s_q.max {
            return bad("s_q", "needs 1 <= min <= max");
        }
        if let PageSizes::List(l) = &self.page_sizes {
            if l.is_empty() || l.contains(&0) {
                return bad("page_sizes", "a list needs positive sizes (use \"none\" for contiguous only)");
            }
        }
        if let Scale::Fixed(s) = self.scale {
            if !(s.is_finite() && s > 0.0) {
                return bad("scale", "a fixed scale must be finite and positive");
            }
        }
        if !self.contiguous && matches!(self.page_sizes, PageSizes::Named(PageSizesName::None)) {
            return bad(
                "contiguous",
                "no cache layout is declared: set \"contiguous\": true, \"page_sizes\": \"any\" or a list such as [16, 64], or both",
            );
        }
        if self.operations.contains(&Op::DecodeGqa) && self.rope_layouts.is_empty() {
            return bad(
                "rope_layouts",
                "gqla.decode.gqa is declared: list the rope layouts it takes, [\"once\"], [\"per_group\"] or both",
            );
        }
        if let Some(fp8) = &self.fp8 {
            if fp8.formats.is_empty() || fp8.formats.contains(&KvFormatKind::Native) {
                return bad("fp8.formats", "list the FP8 cache formats read: \"tiled\", \"per_tensor\" or both");
            }
            if fp8.flavours.is_empty() {
                return bad(
                    "fp8.flavours",
                    "list the FP8 element types read: [\"e4m3fn\"], [\"e4m3fnuz\"] or both",
                );
            }
            if fp8.formats.contains(&KvFormatKind::Tiled) && !fp8.flavours.contains(&Fp8::E4m3fn) {
                return bad("fp8.flavours", "tiled records are e4m3fn: list e4m3fn among the flavours read");
            }
            if fp8.tiles.as_ref().is_some_and(|t| t.is_empty() || t.contains(&0)) {
                return bad("fp8.tiles", "a list needs positive tile sizes (leave it out for any)");
            }
        }
        self.check_by_dtype("out_empty_row", &self.out_empty_row)?;
        if let Some(c) = self.lse.written() {
            self.check_by_dtype("lse.empty_row", &c.empty_row)?;
            if c.empty_row
                .values()
                .iter()
                .any(|v| matches!(v, EmptyLse::Finite(f) if !f.is_finite()))
            {
                return bad("lse.empty_row", "a finite sentinel must be finite (use neg_inf or pos_inf)");
            }
        }
        Ok(())
    }

    /// A per-dtype convention names exactly the declared dtypes.
    fn check_by_dtype<T>(&self, field: &str, v: &ByDtype<T>) -> Result<(), ProfileError> {
        if let ByDtype::Each(m) = v {
            let named: BTreeSet<DType> = m.keys().copied().collect();
            if named != self.dtypes {
                let list = |s: &BTreeSet<DType>| s.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ");
                return Err(ProfileError {
                    field: field.to_string(),
                    why: format!(
                        "a per-dtype map names {}, but `dtypes` declares {}: name each declared dtype once",
                        list(&named),
                        list(&self.dtypes)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Parse and validate a profile from JSON text.
    pub fn from_json(text: &str) -> Result<Self, ProfileError> {
        let p: Profile = parse_json(&mut serde_json::Deserializer::from_str(text), "")?;
        p.validate()?;
        Ok(p)
    }

    /// `case` as this profile draws it: a convention that is an input value rather than a
    /// capability (a fixed softmax scale) sets that input, instead of leaving the case out.
    pub fn draw(&self, case: &Case) -> Case {
        match self.scale {
            Scale::Fixed(s) if case.op().is_decode() => case.with_scale(s),
            _ => case.clone(),
        }
    }

    /// The first axis that puts `case` outside this profile (None: the case is selected).
    pub fn excludes(&self, case: &Case) -> Option<Exclusion> {
        if !self.operations.contains(&case.op()) {
            return Some(Exclusion::Operation(case.op()));
        }
        if !self.dtypes.contains(&case.dtype()) {
            return Some(Exclusion::DType(case.dtype()));
        }
        match case.page() {
            None if !self.contiguous => return Some(Exclusion::Contiguous),
            Some(p) if !self.page_sizes.takes(p) => return Some(Exclusion::PageSize(p)),
            _ => {}
        }
        if case.op().is_decode() && (case.sq() < self.s_q.min || case.sq() > self.s_q.max) {
            return Some(Exclusion::Sq(case.sq()));
        }
        if case.op() == Op::DecodeGqa && !self.rope_layouts.contains(&case.layout()) {
            return Some(Exclusion::GroupCacheLayout(case.layout()));
        }
        if let KvFormat::Tiled { tile, scales } = case.kv() {
            let Some(fp8) = self.fp8.as_ref().filter(|f| f.formats.contains(&KvFormatKind::Tiled)) else {
                return Some(Exclusion::KvFormat(KvFormatKind::Tiled));
            };
            if fp8.tiles.as_ref().is_some_and(|t| !t.contains(&tile)) {
                return Some(Exclusion::Tile(tile));
            }
            if !fp8.scale_read.reads(scales) {
                return Some(Exclusion::Scales(scales));
            }
        }
        if let Some((flavour, _, _)) = case.kv().per_tensor() {
            let Some(fp8) = self.fp8.as_ref().filter(|f| f.formats.contains(&KvFormatKind::PerTensor)) else {
                return Some(Exclusion::KvFormat(KvFormatKind::PerTensor));
            };
            if !fp8.flavours.contains(&flavour) {
                return Some(Exclusion::Flavour(flavour));
            }
        }
        None
    }

    /// One line per entry, for certificates.
    pub fn describe(&self) -> Vec<(String, String)> {
        let list = |it: Vec<&str>| if it.is_empty() { "(none)".to_string() } else { it.join(", ") };
        let pages = match &self.page_sizes {
            PageSizes::Named(PageSizesName::Any) => "any".to_string(),
            PageSizes::Named(PageSizesName::None) => "none".to_string(),
            PageSizes::List(l) => l.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
        };
        let lse = match self.lse.written() {
            None => "not written (not certified)".to_string(),
            Some(c) => format!(
                "{} in base {}, empty row {}",
                match c.dtype {
                    LseDtype::F32 => "f32",
                    LseDtype::Storage => "the storage dtype",
                },
                match c.base {
                    LseBase::E => "e",
                    LseBase::Two => "2",
                },
                c.empty_row.describe(|v| match v {
                    EmptyLse::NegInf => "-inf".to_string(),
                    EmptyLse::PosInf => "+inf".to_string(),
                    EmptyLse::Finite(v) => format!("{v:e}"),
                    EmptyLse::Unspecified => "unspecified".to_string(),
                })
            ),
        };
        vec![
            ("operations".into(), list(self.operations.iter().map(|o| o.name()).collect())),
            ("dtypes".into(), list(self.dtypes.iter().map(|d| d.name()).collect())),
            ("contiguous".into(), if self.contiguous { "yes" } else { "no" }.into()),
            ("page sizes".into(), pages),
            ("s_q".into(), format!("{}..={}", self.s_q.min, self.s_q.max)),
            (
                "split counts".into(),
                match self.split_counts {
                    SplitCounts::Honoured => "honoured",
                    SplitCounts::Ignored => "ignored (split-count invariance not certified)",
                }
                .into(),
            ),
            ("rope layouts".into(), list(self.rope_layouts.iter().map(|l| l.name()).collect())),
            (
                "scale".into(),
                match self.scale {
                    Scale::Input => "an input".to_string(),
                    Scale::Fixed(s) => format!("fixed at {s}"),
                },
            ),
            (
                "out of an empty row".into(),
                self.out_empty_row.describe(|v| {
                    match v {
                        EmptyOut::Zero => "0",
                        EmptyOut::Nan => "NaN",
                        EmptyOut::Unspecified => "unspecified",
                    }
                    .into()
                }),
            ),
            ("lse".into(), lse),
            (
                "FP8 caches".into(),
                match &self.fp8 {
                    None => "none".to_string(),
                    Some(f) => format!(
                        "{}; flavours {}; tiles {}; scales read {}",
                        list(f.formats.iter().map(|k| k.name()).collect()),
                        list(f.flavours.iter().map(|k| k.name()).collect()),
                        f.tiles.as_ref().map_or("any".to_string(), |t| t
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")),
                        f.scale_read.name()
                    ),
                },
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_round_trips_through_json() {
        let p = Profile::everything();
        let text = serde_json::to_string_pretty(&p).unwrap();
        assert_eq!(Profile::from_json(&text).unwrap(), p, "{text}");
    }

    #[test]
    fn the_documented_forms_parse() {
        let text = r#"{
            "operations": ["gqla.decode.gqa"], "dtypes": ["bf16"], "contiguous": false,
            "page_sizes": [1, 16], "s_q": {"min": 1, "max": 1}, "split_counts": "ignored",
            "rope_layouts": ["once"], "scale": {"fixed": 0.125}, "out_empty_row": "nan",
            "lse": {"dtype": "storage", "base": "2", "empty_row": {"finite": -2.38e38}}
        }"#;
        let p = Profile::from_json(text).unwrap();
        assert_eq!(p.scale, Scale::Fixed(0.125));
        assert_eq!(p.lse.written().unwrap().empty_row, ByDtype::All(EmptyLse::Finite(-2.38e38)));
        let no_lse = text.replace(
            r#"{"dtype": "storage", "base": "2", "empty_row": {"finite": -2.38e38}}"#,
            r#""none""#,
        );
        assert!(Profile::from_json(&no_lse).unwrap().lse.written().is_none());
    }

    /// Left-out fields take the documented defaults; the ones that decide how outputs are judged
    /// are required, and their errors say what they take.
    #[test]
    fn defaults_are_the_documented_ones() {
        let minimal = r#"{"operations": ["gqla.decode.absorb"], "dtypes": ["bf16"], "page_sizes": [64],
            "out_empty_row": "zero", "lse": "none"}"#;
        let p = Profile::from_json(minimal).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        for (field, default) in Profile::DEFAULTS {
            let doc: serde_json::Value = serde_json::from_str(default.split(" (").next().unwrap()).unwrap();
            if field != "page_sizes" {
                assert_eq!(json[field], doc, "{field}");
            }
        }
        let contiguous_only = minimal.replace(r#""page_sizes": [64],"#, r#""contiguous": true,"#);
        let json = serde_json::to_value(Profile::from_json(&contiguous_only).unwrap()).unwrap();
        assert_eq!(json["page_sizes"], serde_json::json!("none"));
        assert_eq!(
            (p.contiguous, p.s_q, p.split_counts, p.scale, p.rope_layouts.len()),
            (false, SqRange { min: 1, max: 1 }, SplitCounts::Ignored, Scale::Input, 0)
        );
        // No layout at all, or gqla.decode.gqa without its rope layouts: refused, naming the field.
        let no_layout = minimal.replace(r#""page_sizes": [64],"#, "");
        assert_eq!(Profile::from_json(&no_layout).unwrap_err().field, "contiguous");
        let gqa = minimal.replace("gqla.decode.absorb", "gqla.decode.gqa");
        assert_eq!(Profile::from_json(&gqa).unwrap_err().field, "rope_layouts");
        assert!(Profile::from_json(&gqa.replace(r#""lse""#, r#""rope_layouts": ["once"], "lse""#)).is_ok());
        let e = Profile::from_json(&minimal.replace(r#""lse": "none""#, r#""s_q": {"min": 1, "max": 2}"#)).unwrap_err();
        assert!(
            e.why.contains("missing field `lse`") && e.why.contains("`lse` takes \"none\" or {"),
            "{e}"
        );
        let e = Profile::from_json(&minimal.replace(r#""operations": ["gqla.decode.absorb"], "#, "")).unwrap_err();
        assert!(e.why.contains("\"gqla.decode.absorb\", \"gqla.decode.gqa\""), "{e}");
    }

    /// Empty-row conventions per dtype: a map naming each declared dtype once.
    #[test]
    fn empty_row_conventions_may_differ_by_dtype() {
        let text = r#"{"operations": ["gqla.decode.absorb"], "dtypes": ["f32", "bf16", "f16"], "contiguous": true,
            "out_empty_row": {"f32": "unspecified", "bf16": "unspecified", "f16": "nan"},
            "lse": {"dtype": "f32", "base": "e",
                    "empty_row": {"f32": {"finite": -2.38e38}, "bf16": {"finite": -2.38e38}, "f16": "neg_inf"}}}"#;
        let p = Profile::from_json(text).unwrap();
        let lse = &p.lse.written().unwrap().empty_row;
        assert_eq!(
            (lse.get(DType::Bf16), lse.get(DType::F16)),
            (Some(EmptyLse::Finite(-2.38e38)), Some(EmptyLse::NegInf))
        );
        assert_eq!(p.out_empty_row.get(DType::F16), Some(EmptyOut::Nan));
        assert_eq!(Profile::from_json(&serde_json::to_string(&p).unwrap()).unwrap(), p);
        // A map that leaves out a declared dtype, or names another, is refused.
        let missing = text.replace(r#", "f16": "neg_inf""#, "");
        let e = Profile::from_json(&missing).unwrap_err();
        assert_eq!(e.field, "lse.empty_row", "{e}");
        assert!(e.why.contains("names bf16, f32") || e.why.contains("names f32, bf16"), "{e}");
        let bad = text.replace(r#""f16": "nan""#, r#""f16": "nope""#);
        let e = Profile::from_json(&bad).unwrap_err();
        assert!(e.field == "out_empty_row" && e.why.contains("f16: unknown variant `nope`"), "{e}");
        let inf = text.replace(r#""bf16": {"finite": -2.38e38}"#, r#""bf16": {"finite": 1e39}"#);
        assert!(Profile::from_json(&inf).is_err());
    }

    #[test]
    fn bad_declarations_name_the_field() {
        let base = serde_json::to_value(Profile::everything()).unwrap();
        for (field, value, want) in [
            ("s_q", serde_json::json!({"min": 0, "max": 2}), "s_q"),
            ("s_q", serde_json::json!({"min": 3, "max": 2}), "s_q"),
            ("page_sizes", serde_json::json!([0]), "page_sizes"),
            ("scale", serde_json::json!({"fixed": -1.0}), "scale"),
            ("dtypes", serde_json::json!(["f8"]), "unknown variant `f8`"),
            ("dtypes", serde_json::json!(["bf16", "f64"]), "not f64"),
            (
                "lse",
                serde_json::json!({"dtype": "f32", "base": "10", "empty_row": "neg_inf"}),
                "field `lse.base`: unknown variant `10`, expected `e` or `2`",
            ),
            (
                "lse",
                serde_json::json!("nope"),
                "field `lse`: invalid value: string \"nope\", expected \"none\" or {",
            ),
            (
                "lse",
                serde_json::json!({"dtype": "f32", "base": "e", "empty_row": "-inf"}),
                "field `lse.empty_row`: unknown variant `-inf`, expected one of `neg_inf`, `pos_inf`, `finite`, `unspecified`",
            ),
            (
                "lse",
                serde_json::json!({"dtype": "f32", "base": "e"}),
                "field `lse`: missing field `empty_row`",
            ),
            (
                "page_sizes",
                serde_json::json!("all"),
                "field `page_sizes`: invalid value: string \"all\", expected \"any\", \"none\"",
            ),
            (
                "page_sizes",
                serde_json::json!([16, -1]),
                "field `page_sizes[1]`: invalid value: integer `-1`",
            ),
            (
                "operations",
                serde_json::json!(["gqla.decode.gqa", "mla"]),
                "field `operations[1]`: unknown variant `mla`",
            ),
        ] {
            let mut v = base.clone();
            v[field] = value;
            let e = Profile::from_json(&v.to_string()).unwrap_err().to_string();
            assert!(e.contains(want), "{field}: {e}");
        }
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove("lse");
        assert!(Profile::from_json(&v.to_string())
            .unwrap_err()
            .to_string()
            .contains("missing field `lse`"));
        let mut v = base;
        v["lse_base"] = serde_json::json!("e");
        assert!(Profile::from_json(&v.to_string())
            .unwrap_err()
            .to_string()
            .contains("unknown field `lse_base`"));
    }

    /// The `fp8` entry: absent, every FP8 case is NOT_SUPPORTED by declaration; a tile list and a
    /// power-of-two reader narrow it; nonsense is refused naming the field.
    #[test]
    fn fp8_caches_are_selected_as_declared() {
        use crate::case::KvFormat;
        let tiled = |tile: usize, scales: ScaleRule| -> Case {
            format!(
                "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=65;page=64;dtype=bf16;kv=tiled;tile={tile};scales={};seed=1",
                scales.name()
            )
            .parse()
            .unwrap()
        };
        let native: Case = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=65;page=64;dtype=bf16;seed=1"
            .parse()
            .unwrap();
        assert_eq!(native.kv(), KvFormat::Native);
        let base = r#"{"operations": ["gqla.decode.absorb"], "dtypes": ["bf16"], "page_sizes": "any",
            "out_empty_row": "zero", "lse": "none""#;
        let p = Profile::from_json(&format!("{base}}}")).unwrap();
        assert_eq!(
            p.excludes(&tiled(128, ScaleRule::Pow2)),
            Some(Exclusion::KvFormat(KvFormatKind::Tiled))
        );
        assert_eq!(p.excludes(&native), None);
        let p = Profile::from_json(&format!(
            r#"{base}, "fp8": {{"formats": ["tiled"], "tiles": [128], "scale_read": "pow2"}}}}"#
        ))
        .unwrap();
        assert_eq!(p.excludes(&tiled(128, ScaleRule::Pow2)), None);
        assert_eq!(p.excludes(&tiled(64, ScaleRule::Pow2)), Some(Exclusion::Tile(64)));
        assert_eq!(p.excludes(&tiled(128, ScaleRule::Amax)), Some(Exclusion::Scales(ScaleRule::Amax)));
        assert!(Exclusion::Scales(ScaleRule::Amax).to_string().contains("fp8.scale_read"));
        let p = Profile::from_json(&format!(
            r#"{base}, "fp8": {{"formats": ["tiled"], "scale_read": "arbitrary_f32"}}}}"#
        ))
        .unwrap();
        assert_eq!((p.excludes(&tiled(64, ScaleRule::Amax)), p.excludes(&native)), (None, None));
        assert!(p
            .describe()
            .iter()
            .any(|(k, v)| k == "FP8 caches" && v == "tiled; flavours e4m3fn; tiles any; scales read arbitrary_f32"));
        let p = Profile::from_json(&format!(
            r#"{base}, "fp8": {{"formats": ["tiled"], "scale_read": "arbitrary_bf16"}}}}"#
        ))
        .unwrap();
        assert_eq!(p.excludes(&tiled(128, ScaleRule::Amax)), None);
        for (fp8, field) in [
            (r#"{"formats": [], "scale_read": "pow2"}"#, "fp8.formats"),
            (r#"{"formats": ["native"], "scale_read": "pow2"}"#, "fp8.formats"),
            (r#"{"formats": ["tiled"], "tiles": [0], "scale_read": "pow2"}"#, "fp8.tiles"),
            (r#"{"formats": ["tiled"], "scale_read": "e8m0"}"#, "fp8.scale_read"),
            (r#"{"formats": ["tiled"], "scale_read": "bf16"}"#, "fp8.scale_read"),
            (
                r#"{"formats": ["tiled"], "flavours": ["e4m3fnuz"], "scale_read": "pow2"}"#,
                "fp8.flavours",
            ),
            (
                r#"{"formats": ["per_tensor"], "flavours": [], "scale_read": "pow2"}"#,
                "fp8.flavours",
            ),
            (r#"{"formats": ["tiled"]}"#, "fp8"),
            (
                r#"{"formats": ["tiled"], "scale_read": "pow2", "flavour": "e4m3fn"}"#,
                "fp8.flavour",
            ),
        ] {
            let e = Profile::from_json(&format!(r#"{base}, "fp8": {fp8}}}"#)).unwrap_err();
            assert_eq!(e.field, field, "{fp8}: {e}");
        }
        // Tiled cases are bf16: a profile of f32 alone selects none of them, whatever it reads.
        let f32_only = format!(r#"{base}, "fp8": {{"formats": ["tiled"], "scale_read": "pow2"}}}}"#).replace(r#"["bf16"]"#, r#"["f32"]"#);
        assert_eq!(
            Profile::from_json(&f32_only).unwrap().excludes(&tiled(128, ScaleRule::Pow2)),
            Some(Exclusion::DType(DType::Bf16))
        );
    }
}
