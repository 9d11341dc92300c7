//! Tensor parallelism on the GQA path: T ranks, T | G, each holding whole groups.
//!
//! Rank r holds groups G_r = [rG/T, (r+1)G/T), their heads' query rows and W^O columns, their
//! W^{UK}_g/W^{UV}_g, and a [`GroupCache`] of only those groups. W^{DKV}/W^{KR} are replicated (every
//! rank computes c_t and k^R_t). The partial outputs y_r = W^O_{[:,heads(r)]} o_{heads(r)} sum to y
//! (the all-reduce); b^O is added once, on rank 0.
//!
//! Under the absorb path every rank must hold the whole latent cache: a redundancy factor of T.

use crate::cache::{Footprint, GroupCache, GroupCacheLayout, LatentCache};
use crate::config::LatentDims;
use crate::decode::DecodeOutput;
use crate::error::{Error, GeometryError, Result};
use crate::gqa_decode::gqa_decode;
use crate::latent::LatentWeights;
use crate::real::Real;
use ndarray::{concatenate, Array2, ArrayView2, Axis};
use std::ops::Range;

/// The groups rank `r` of `t` holds.
pub fn rank_groups(g: usize, t: usize, r: usize) -> Range<usize> {
    let per = g / t;
    r * per..(r + 1) * per
}

fn check_degree(dims: LatentDims, t: usize) -> Result<()> {
    if t == 0 || !dims.g().is_multiple_of(t) {
        return Err(GeometryError::TpDegree {
            degree: t,
            groups: dims.g(),
        }
        .into());
    }
    Ok(())
}

/// One rank's share of a layer.
#[derive(Clone, Debug)]
pub struct RankShard<T> {
    pub rank: usize,
    /// Global indices of the groups this rank holds.
    pub groups: Range<usize>,
    /// The rank's weights: dims with H_r = |G_r| H/G heads and |G_r| groups.
    pub weights: LatentWeights<T>,
}

/// A layer sharded over T ranks.
#[derive(Clone, Debug)]
pub struct TpLayer<T> {
    pub ranks: Vec<RankShard<T>>,
    /// The unsharded layer's geometry.
    dims: LatentDims,
}

/// The TP-sharded decode result: per-rank partial outputs and their all-reduced sum.
#[derive(Clone, Debug)]
pub struct TpOutput<T> {
    pub partials: Vec<Array2<T>>,
    /// The all-reduce Σ_r y_r, with per-rank heads and LSE concatenated in global head order.
    pub output: DecodeOutput<T>,
}

impl<T: Real> TpLayer<T> {
    /// Shard `w` into `t` ranks (T | G).
    pub fn shard(w: &LatentWeights<T>, t: usize) -> Result<Self> {
        check_degree(w.dims(), t)?;
        let ranks = (0..t)
            .map(|r| {
                let groups = rank_groups(w.dims().g(), t, r);
                Ok(RankShard {
                    rank: r,
                    weights: w.shard(groups.clone(), r == 0)?,
                    groups,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { ranks, dims: w.dims() })
    }

    /// Empty per-rank caches, each holding only its rank's groups.
    pub fn new_caches(&self, layout: GroupCacheLayout) -> Result<Vec<GroupCache<T>>> {
        self.ranks
            .iter()
            .map(|r| GroupCache::for_groups(&self.dims, layout, r.groups.clone()))
            .collect()
    }

    /// Decode on every rank's GQA path, then all-reduce.
    pub fn gqa_decode(&self, x_new: ArrayView2<T>, caches: &mut [GroupCache<T>]) -> Result<TpOutput<T>> {
        if caches.len() != self.ranks.len() {
            return Err(Error::ShapeMismatch {
                what: "one cache per TP rank".into(),
                expected: vec![self.ranks.len()],
                got: vec![caches.len()],
            });
        }
        let outs = self
            .ranks
            .iter()
            .zip(caches.iter_mut())
            .map(|(r, c)| gqa_decode(&r.weights, x_new, c))
            .collect::<Result<Vec<_>>>()?;
        let mut y = outs[0].y.clone();
        for o in &outs[1..] {
            y += &o.y;
        }
        let heads = concatenate(Axis(1), &outs.iter().map(|o| o.heads.view()).collect::<Vec<_>>()).expect("heads concat");
        let lse = concatenate(Axis(1), &outs.iter().map(|o| o.lse.view()).collect::<Vec<_>>()).expect("lse concat");
        Ok(TpOutput {
            partials: outs.into_iter().map(|o| o.y).collect(),
            output: DecodeOutput { y, heads, lse },
        })
    }
}

/// Per-token cache bytes under TP, measured from caches allocated for `tokens` tokens.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TpFootprint {
    pub degree: usize,
    pub layout: GroupCacheLayout,
    /// GQA path: each rank's cache.
    pub gqa_per_rank: Footprint,
    /// GQA path: bytes per token every rank replicates (the rope key).
    pub gqa_replicated_bytes_per_token: usize,
    /// GQA path: Σ_r rank bytes / unsharded bytes.
    pub gqa_redundancy: f64,
    /// Absorb path: each rank's cache (the whole latent).
    pub absorb_per_rank: Footprint,
    /// Absorb path: Σ_r rank bytes / one latent cache's bytes.
    pub absorb_redundancy: f64,
}

/// Measure TP footprints with caches of element type `E` (e.g. `half::bf16`).
pub fn tp_footprint<E: Copy + Default>(dims: LatentDims, t: usize, layout: GroupCacheLayout, tokens: usize) -> Result<TpFootprint> {
    check_degree(dims, t)?;
    if tokens == 0 {
        return Err(GeometryError::NotPositive { name: "tokens" }.into());
    }
    let ranks: Vec<GroupCache<E>> = (0..t)
        .map(|r| GroupCache::for_groups(&dims, layout, rank_groups(dims.g(), t, r)).map(|c| c.filled(tokens)))
        .collect::<Result<_>>()?;
    let whole = GroupCache::<E>::new(&dims, layout).filled(tokens);
    let fp = |c: &GroupCache<E>| c.footprint().expect("tokens > 0");
    let rank_sum: usize = ranks.iter().map(|c| fp(c).bytes_per_token).sum();
    let latents: Vec<LatentCache<E>> = (0..t).map(|_| LatentCache::filled(&dims, tokens)).collect();
    let one_latent = latents[0].footprint().expect("tokens > 0");
    let latent_sum: usize = latents.iter().map(|c| c.footprint().expect("tokens > 0").bytes_per_token).sum();
    Ok(TpFootprint {
        degree: t,
        layout,
        gqa_per_rank: fp(&ranks[0]),
        gqa_replicated_bytes_per_token: ranks[0].replicated_bytes_per_token().expect("tokens > 0"),
        gqa_redundancy: rank_sum as f64 / fp(&whole).bytes_per_token as f64,
        absorb_per_rank: one_latent,
        absorb_redundancy: latent_sum as f64 / one_latent.bytes_per_token as f64,
    })
}
