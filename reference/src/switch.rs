//! Switching decode paths: expanding a latent cache into a group cache (exact). The way back, a
//! least-squares fit, is `gqla_model::compress` (it needs a QR solver).
//!
//! - (E) [k_{g,t}; v_{g,t}] = [W^{UK}_g; W^{UV}_g] c_t for every group g; k^R_t is copied.

use crate::cache::{GroupCache, GroupCacheLayout, LatentCache};
use crate::latent::LatentWeights;
use crate::real::Real;
use ndarray::{s, Array3, ArrayView2};

/// (E) for latent rows c [s, d_c]: per-group keys [s, G, d_n] and values [s, G, d_v].
pub fn expand_rows<T: Real>(w: &LatentWeights<T>, c: ArrayView2<T>) -> (Array3<T>, Array3<T>) {
    let d = w.dims();
    let s_q = c.nrows();
    let mut k = Array3::zeros((s_q, d.g(), d.d_n()));
    let mut v = Array3::zeros((s_q, d.g(), d.d_v()));
    for g in 0..d.g() {
        k.slice_mut(s![.., g, ..]).assign(&c.dot(&w.w_uk(g).t()));
        v.slice_mut(s![.., g, ..]).assign(&c.dot(&w.w_uv(g).t()));
    }
    (k, v)
}

/// (E) Expand a whole latent cache into a group cache of all of `w`'s groups.
pub fn expand<T: Real>(w: &LatentWeights<T>, cache: &LatentCache<T>, layout: GroupCacheLayout) -> GroupCache<T> {
    let d = w.dims();
    let mut out = GroupCache::new(&d, layout);
    let (k, v) = expand_rows(w, cache.latent());
    out.append(k.view(), v.view(), cache.rope_key());
    out
}
