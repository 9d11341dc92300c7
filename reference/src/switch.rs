//! Switching decode paths: expanding a latent cache into a group cache (exact), and compressing a
//! group cache back to the latent by least squares (faer).
//!
//! - (E) [k_{g,t}; v_{g,t}] = [W^{UK}_g; W^{UV}_g] c_t for every group g; k^R_t is copied.
//! - (C) ĉ_t = argmin_c ‖W^{UKV} c − y_t‖₂ with W^{UKV} = kv_b_proj [G(d_n+d_v), d_c] and
//!   y_t the token's stacked group keys and values. Exact when W^{UKV} has full column rank d_c
//!   (needs G(d_n + d_v) ≥ d_c); the residual ‖W^{UKV}Ĉ − Y‖_F / ‖Y‖_F is reported.

use crate::cache::{GroupCache, GroupCacheLayout, LatentCache};
use crate::error::{Error, Result};
use crate::latent::LatentWeights;
use crate::real::Real;
use ndarray::{s, Array2, Array3, ArrayView2};

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

/// What compression recovered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Compression {
    /// ‖W^{UKV}Ĉ − Y‖_F / ‖Y‖_F: zero (to rounding) when the group cache came from a latent.
    pub relative_residual: f64,
    /// σ_max / σ_min of W^{UKV}.
    pub condition_number: f64,
}

/// (C) Least-squares compression of a group cache (all of `w`'s groups) back to a latent cache.
pub fn compress<T: Real>(w: &LatentWeights<T>, cache: &GroupCache<T>) -> Result<(LatentCache<T>, Compression)> {
    let d = w.dims();
    if cache.num_groups() != d.g() {
        return Err(Error::ShapeMismatch {
            what: "group cache groups for compression".into(),
            expected: vec![d.g()],
            got: vec![cache.num_groups()],
        });
    }
    let rows = d.g() * (d.d_n() + d.d_v());
    if rows < d.d_c() {
        return Err(Error::Config(format!(
            "cannot compress: W^UKV has {rows} = G(d_n+d_v) rows, fewer than d_c = {}; the latent is not determined",
            d.d_c()
        )));
    }
    let a = faer::Mat::<f64>::from_fn(rows, d.d_c(), |i, j| w.kv_b()[[i, j]].f64());
    let sv = a.singular_values().map_err(|e| Error::Decomposition {
        what: "the SVD of kv_b_proj",
        why: format!("{e:?}"),
    })?;
    let (smax, smin) = (
        sv.iter().copied().fold(0.0, f64::max),
        sv.iter().copied().fold(f64::INFINITY, f64::min),
    );
    if smin <= smax * 1e-13 {
        return Err(Error::Config(format!(
            "cannot compress: kv_b_proj is rank deficient (σ_min/σ_max = {:e})",
            smin / smax
        )));
    }
    // Y: one column per token, rows ordered like kv_b_proj (group-major, keys then values).
    let n = cache.len();
    let mut y = Array2::<f64>::zeros((rows, n));
    let per = d.d_n() + d.d_v();
    for g in 0..d.g() {
        let k = cache.group_nope_keys(g);
        let v = cache.group_values(g);
        y.slice_mut(s![g * per..g * per + d.d_n(), ..]).assign(&k.t().mapv(|x| x.f64()));
        y.slice_mut(s![g * per + d.d_n()..(g + 1) * per, ..])
            .assign(&v.t().mapv(|x| x.f64()));
    }
    let rhs = faer::Mat::<f64>::from_fn(rows, n, |i, j| y[[i, j]]);
    use faer::linalg::solvers::SolveLstsq;
    let sol = a.qr().solve_lstsq(&rhs);
    let c = Array2::from_shape_fn((n, d.d_c()), |(t, j)| sol[(j, t)]);
    let recon = c.dot(&w.kv_b().mapv(|x| x.f64()).t()).reversed_axes();
    let num = (&recon - &y).mapv(|x| x * x).sum().sqrt();
    let den = y.mapv(|x| x * x).sum().sqrt();
    let relative_residual = if den == 0.0 { num } else { num / den };
    let mut latent = LatentCache::new(&d);
    latent.append(c.mapv(T::of).view(), cache.rope_keys().view());
    Ok((
        latent,
        Compression {
            relative_residual,
            condition_number: smax / smin,
        },
    ))
}
