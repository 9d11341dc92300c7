//! What a conversion does, decided once from the source's kind and the caller's request:
//! TransGQLA for a GQA source (one group per kv head, optionally truncated to a cache budget) or
//! per-group PCA for an MLA source. Requests that do not fit the source are refused here, as
//! [`MethodError`]s a caller can match (the CLI names its flags from them).

use super::paper_budget;
use super::pipeline::ConvertOptions;
use super::rorope::{fold_fits, smallest_freqfold};
use crate::hf::config::{AttentionConfig, ModelConfig};

/// How a GQA source's FreqFold is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    /// This fold, as given.
    Given(usize),
    /// Convert at `from`, then at double it while the held-out KL falls, and keep the best (as
    /// TransMLA's `auto`).
    Search { from: usize },
}

impl Fold {
    /// The fold the (first) conversion runs at.
    pub fn start(self) -> usize {
        match self {
            Fold::Given(f) | Fold::Search { from: f } => f,
        }
    }
}

/// How much of a GQA source's cache a TransGQLA conversion keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// Every RoPE frequency, the full kv rank, FreqFold 1: the converted model equals the source.
    Exact,
    /// d_r rope dims on the shared key and a d_c latent.
    To { rope_dim: usize, kv_rank: usize, fold: Fold },
}

/// A conversion, by source kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// A GQA source (LLaMA, Qwen2, Mistral): TransGQLA with G = KV.
    TransGqla(Truncation),
    /// An MLA source (DeepSeek-V2/V3, GLM-4.7-Flash): per-group PCA of the up-projections into
    /// `groups` groups; the source's own d_c and d_r are kept.
    GroupPca { groups: usize },
}

/// How a FreqFold is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FoldRequest {
    /// Search upwards from the smallest valid fold (the default: the best measured,
    /// docs/results/2026-12-04-smollm2-budgets.md).
    #[default]
    Search,
    /// The smallest valid fold (the least approximation), one conversion.
    Smallest,
    /// This fold.
    Given(usize),
    /// Search upwards from this fold.
    SearchFrom(usize),
}

/// What a caller asks for; [`Method::for_source`] fills in the defaults and checks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// G: for a GQA source it must be KV (the default); for an MLA source it is required.
    pub groups: Option<usize>,
    /// d_r (GQA sources; default: the paper's budget).
    pub rope_dim: Option<usize>,
    /// d_c (GQA sources; default: the paper's budget less d_r).
    pub kv_rank: Option<usize>,
    pub fold: FoldRequest,
    /// No truncation at all (GQA sources): the exact conversion.
    pub exact: bool,
}

/// A request that does not fit the source. `defaulted`: the value came from the paper's budget,
/// not from the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("GQA → GQLA keeps one group per kv head: G must be {kv} (num_key_value_heads), got {given}")]
    GqaGroups { kv: usize, given: usize },
    #[error("MLA → GQLA needs the number of groups G (a divisor of the {heads} query heads)")]
    GroupsRequired { heads: usize },
    #[error("G = {groups} must divide the number of query heads H={heads}")]
    GroupsNotDividing { groups: usize, heads: usize },
    #[error("the source is already GQLA (num_key_value_heads = {groups}); per-group PCA takes an MLA source (num_key_value_heads = num_attention_heads = {heads})")]
    AlreadyGqla { groups: usize, heads: usize },
    #[error("d_r and d_c apply to GQA sources: an MLA source keeps its own (per-group PCA changes only the groups)")]
    TruncatingMla,
    #[error("d_r = {rope_dim}: expected an even number in 2..={max} (KV·D, KV = {kv}, D = {d})")]
    RopeDim {
        rope_dim: usize,
        max: usize,
        kv: usize,
        d: usize,
        defaulted: bool,
    },
    #[error("d_c = {kv_rank}: expected 1..={max}, the no-rope keys and the values (2·KV·D − d_r, KV = {kv}, D = {d}, d_r = {rope_dim})")]
    KvRank {
        kv_rank: usize,
        max: usize,
        kv: usize,
        d: usize,
        rope_dim: usize,
        defaulted: bool,
    },
    #[error("no freqfold makes d_r = {rope_dim} valid for head dim {d} and {kv} kv heads")]
    NoFold { rope_dim: usize, d: usize, kv: usize },
    #[error("freqfold {fold} does not fit d_r = {rope_dim} for head dim {d} and {kv} kv heads")]
    FoldDoesNotFit { fold: usize, rope_dim: usize, d: usize, kv: usize },
}

impl Method {
    /// The paper's conversion of `config`: for a GQA source d_c + d_r = 28.125% of its cache
    /// ([`paper_budget`]) with the FreqFold searched; an MLA source needs its G (refused).
    pub fn paper(config: &ModelConfig) -> Result<Method, MethodError> {
        Self::for_source(config, &Request::default())
    }

    /// `request` for `config`, the defaults filled in and everything checked against the
    /// source's geometry before any weight is read.
    pub fn for_source(config: &ModelConfig, request: &Request) -> Result<Method, MethodError> {
        match &config.attention {
            AttentionConfig::Latent(c) => {
                if request.rope_dim.is_some() || request.kv_rank.is_some() {
                    return Err(MethodError::TruncatingMla);
                }
                let heads = c.dims.h();
                let groups = request.groups.ok_or(MethodError::GroupsRequired { heads })?;
                if !c.dims.is_mla() {
                    return Err(MethodError::AlreadyGqla { groups: c.dims.g(), heads });
                }
                if groups == 0 || !heads.is_multiple_of(groups) {
                    return Err(MethodError::GroupsNotDividing { groups, heads });
                }
                Ok(Method::GroupPca { groups })
            }
            AttentionConfig::Gqa(c) => {
                let (kv, d) = (c.dims.kv(), c.dims.d());
                if let Some(given) = request.groups.filter(|&g| g != kv) {
                    return Err(MethodError::GqaGroups { kv, given });
                }
                if request.exact {
                    return Ok(Method::TransGqla(Truncation::Exact));
                }
                let (paper_rope, paper_rank) = paper_budget(kv, d);
                let rope_dim = request.rope_dim.unwrap_or(paper_rope);
                if rope_dim == 0 || !rope_dim.is_multiple_of(2) || rope_dim > kv * d {
                    let defaulted = request.rope_dim.is_none();
                    return Err(MethodError::RopeDim {
                        rope_dim,
                        max: kv * d,
                        kv,
                        d,
                        defaulted,
                    });
                }
                // Without a given d_c, the budget's total d_c + d_r is kept whatever d_r is.
                let kv_rank = request.kv_rank.unwrap_or((paper_rank + paper_rope).saturating_sub(rope_dim));
                let max = 2 * kv * d - rope_dim;
                if kv_rank == 0 || kv_rank > max {
                    let defaulted = request.kv_rank.is_none();
                    return Err(MethodError::KvRank {
                        kv_rank,
                        max,
                        kv,
                        d,
                        rope_dim,
                        defaulted,
                    });
                }
                let half = d / 2;
                let smallest = smallest_freqfold(half, kv, rope_dim / 2).ok_or(MethodError::NoFold { rope_dim, d, kv })?;
                let fold = match request.fold {
                    FoldRequest::Search => Fold::Search { from: smallest },
                    FoldRequest::Smallest => Fold::Given(smallest),
                    FoldRequest::Given(f) if fold_fits(half, kv, f, rope_dim / 2) => Fold::Given(f),
                    FoldRequest::SearchFrom(f) if fold_fits(half, kv, f, rope_dim / 2) => Fold::Search { from: f },
                    FoldRequest::Given(fold) | FoldRequest::SearchFrom(fold) => {
                        return Err(MethodError::FoldDoesNotFit { fold, rope_dim, d, kv })
                    }
                };
                Ok(Method::TransGqla(Truncation::To { rope_dim, kv_rank, fold }))
            }
        }
    }

    /// The request that gives this method back from [`Method::for_source`] (for a source it fits).
    pub fn request(&self) -> Request {
        match *self {
            Method::GroupPca { groups } => Request {
                groups: Some(groups),
                ..Request::default()
            },
            Method::TransGqla(Truncation::Exact) => Request {
                exact: true,
                ..Request::default()
            },
            Method::TransGqla(Truncation::To { rope_dim, kv_rank, fold }) => Request {
                groups: None,
                rope_dim: Some(rope_dim),
                kv_rank: Some(kv_rank),
                fold: match fold {
                    Fold::Given(f) => FoldRequest::Given(f),
                    Fold::Search { from } => FoldRequest::SearchFrom(from),
                },
                exact: false,
            },
        }
    }

    /// One layer's TransGQLA options at FreqFold `fold` (per-group PCA: the exact ones, unused).
    pub fn layer_options(&self, fold: usize) -> ConvertOptions {
        match *self {
            Method::TransGqla(Truncation::To { rope_dim, kv_rank, .. }) => ConvertOptions {
                rope_dim: Some(rope_dim),
                kv_rank: Some(kv_rank),
                freqfold: fold,
            },
            Method::TransGqla(Truncation::Exact) | Method::GroupPca { .. } => ConvertOptions::exact(),
        }
    }

    /// The FreqFold choice: searched, or the one fold every conversion runs at (1 when nothing
    /// is truncated).
    pub fn fold(&self) -> Fold {
        match *self {
            Method::TransGqla(Truncation::To { fold, .. }) => fold,
            _ => Fold::Given(1),
        }
    }

    /// The same method with the fold fixed (a search's candidate).
    pub fn at_fold(&self, f: usize) -> Method {
        match *self {
            Method::TransGqla(Truncation::To { rope_dim, kv_rank, .. }) => Method::TransGqla(Truncation::To {
                rope_dim,
                kv_rank,
                fold: Fold::Given(f),
            }),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(name: &str) -> ModelConfig {
        ModelConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)).unwrap()
    }

    #[test]
    fn the_paper_budget_for_llama_3_8b_is_576_of_2048() {
        let m = Method::paper(&config("configs/llama-3-8b.json")).unwrap();
        let Method::TransGqla(Truncation::To { rope_dim, kv_rank, fold }) = m else {
            panic!("{m:?}")
        };
        assert_eq!((rope_dim, kv_rank), (64, 512));
        assert!(matches!(fold, Fold::Search { .. }));
        assert_eq!(m.layer_options(fold.start()).rope_dim, Some(64));
    }

    #[test]
    fn requests_that_do_not_fit_are_refused_by_kind() {
        let llama = config("configs/llama-3-8b.json");
        let ask = |r: Request| Method::for_source(&llama, &r);
        assert!(matches!(
            ask(Request {
                groups: Some(4),
                ..Default::default()
            }),
            Err(MethodError::GqaGroups { kv: 8, given: 4 })
        ));
        assert!(matches!(
            ask(Request {
                rope_dim: Some(3),
                ..Default::default()
            }),
            Err(MethodError::RopeDim { defaulted: false, .. })
        ));
        assert!(matches!(
            ask(Request {
                kv_rank: Some(0),
                ..Default::default()
            }),
            Err(MethodError::KvRank { defaulted: false, .. })
        ));
        assert_eq!(
            ask(Request {
                exact: true,
                ..Default::default()
            }),
            Ok(Method::TransGqla(Truncation::Exact))
        );
        let deepseek = config("configs/deepseek-v3.json");
        assert!(matches!(Method::paper(&deepseek), Err(MethodError::GroupsRequired { heads: 128 })));
        let g8 = Request {
            groups: Some(8),
            ..Default::default()
        };
        assert_eq!(Method::for_source(&deepseek, &g8), Ok(Method::GroupPca { groups: 8 }));
        let g7 = Request {
            groups: Some(7),
            ..Default::default()
        };
        assert!(matches!(
            Method::for_source(&deepseek, &g7),
            Err(MethodError::GroupsNotDividing { groups: 7, heads: 128 })
        ));
        let cut = Request { rope_dim: Some(32), ..g8 };
        assert_eq!(Method::for_source(&deepseek, &cut), Err(MethodError::TruncatingMla));
    }
}
