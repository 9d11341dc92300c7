//! Switching back from the GQA path: compressing a group cache to the latent by least squares
//! (faer's QR), the inverse of `gqla_reference::switch::expand`.
//!
//! - (C) ĉ_t = argmin_c ‖W^{UKV} c − y_t‖₂ with W^{UKV} = kv_b_proj [G(d_n+d_v), d_c] and
//!   y_t the token's stacked group keys and values. Exact when W^{UKV} has full column rank d_c
//!   (needs G(d_n + d_v) ≥ d_c); the residual ‖W^{UKV}Ĉ − Y‖_F / ‖Y‖_F is reported.

use gqla_reference::cache::{GroupCache, LatentCache};
use gqla_reference::error::{Error, Result};
use gqla_reference::latent::LatentWeights;
use gqla_reference::real::Real;
use ndarray::{s, Array2};

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
        // Rank ≤ rows < d_c: σ_min is exactly 0.
        return Err(Error::RankDeficient {
            what: "kv_b_proj W^UKV",
            rows,
            cols: d.d_c(),
            sigma_ratio: 0.0,
        });
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
        return Err(Error::RankDeficient {
            what: "kv_b_proj W^UKV",
            rows,
            cols: d.d_c(),
            sigma_ratio: smin / smax,
        });
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
