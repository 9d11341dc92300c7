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

use crate::case::{Case, DType, GroupCacheLayout, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
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

/// The LSE a decode kernel writes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LseConvention {
    pub dtype: LseDtype,
    pub base: LseBase,
    pub empty_row: EmptyLse,
}

/// Whether the kernel writes an LSE, and how.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
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
    /// The kernel always uses this value: only cases whose scale is this f32 are selected.
    Fixed(f32),
}

impl Scale {
    fn takes(&self, case_scale: f32) -> bool {
        match self {
            Scale::Input => true,
            Scale::Fixed(s) => *s == case_scale,
        }
    }
}

/// A kernel's declaration. Every field is required: nothing is assumed for a kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub operations: BTreeSet<Op>,
    pub dtypes: BTreeSet<DType>,
    /// Contiguous caches ([B, capacity, width]).
    pub contiguous: bool,
    /// Paged caches ([num_pages, page, width] with a block table).
    pub page_sizes: PageSizes,
    pub s_q: SqRange,
    pub split_counts: SplitCounts,
    /// gqla.decode.gqa only: where the rope key is stored.
    pub rope_layouts: BTreeSet<GroupCacheLayout>,
    pub scale: Scale,
    pub out_empty_row: EmptyOut,
    pub lse: Lse,
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
        ProfileError {
            field,
            why: e.into_inner().to_string(),
        }
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

/// Why a case is outside a profile: one axis the profile leaves out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exclusion {
    Operation(Op),
    DType(DType),
    Contiguous,
    PageSize(usize),
    Sq(usize),
    GroupCacheLayout(GroupCacheLayout),
    Scale(u32),
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
            Exclusion::Scale(bits) => format!("scale {}", f32::from_bits(*bits)),
        }
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not in the declared profile", self.axis())
    }
}

impl Profile {
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
            out_empty_row: EmptyOut::Zero,
            lse: Lse::Written(LseConvention {
                dtype: LseDtype::F32,
                base: LseBase::E,
                empty_row: EmptyLse::NegInf,
            }),
        }
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
        if let Some(LseConvention {
            empty_row: EmptyLse::Finite(v),
            ..
        }) = self.lse.written()
        {
            if !v.is_finite() {
                return bad("lse.empty_row", "a finite sentinel must be finite (use neg_inf or pos_inf)");
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
        if case.op().is_decode() {
            if case.sq() < self.s_q.min || case.sq() > self.s_q.max {
                return Some(Exclusion::Sq(case.sq()));
            }
            if !self.scale.takes(case.scale()) {
                return Some(Exclusion::Scale(case.scale().to_bits()));
            }
        }
        if case.op() == Op::DecodeGqa && !self.rope_layouts.contains(&case.layout()) {
            return Some(Exclusion::GroupCacheLayout(case.layout()));
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
                match c.empty_row {
                    EmptyLse::NegInf => "-inf".to_string(),
                    EmptyLse::PosInf => "+inf".to_string(),
                    EmptyLse::Finite(v) => format!("{v:e}"),
                    EmptyLse::Unspecified => "unspecified".to_string(),
                }
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
                match self.out_empty_row {
                    EmptyOut::Zero => "0",
                    EmptyOut::Nan => "NaN",
                    EmptyOut::Unspecified => "unspecified",
                }
                .into(),
            ),
            ("lse".into(), lse),
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
        assert_eq!(p.lse.written().unwrap().empty_row, EmptyLse::Finite(-2.38e38));
        let no_lse = text.replace(
            r#"{"dtype": "storage", "base": "2", "empty_row": {"finite": -2.38e38}}"#,
            r#""none""#,
        );
        assert!(Profile::from_json(&no_lse).unwrap().lse.written().is_none());
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
}
