//! (T5) Joint KV PCA: c ← Rᵀ c with R the top `rank` eigenvectors of Σ_t c_t c_tᵀ (uncentred).
//!
//! W^{DKV} ← Rᵀ W^{DKV} (and its bias), W^{UK}_g ← W^{UK}_g R, W^{UV}_g ← W^{UV}_g R. Exact when
//! `rank` is the full latent dim (R orthogonal); otherwise keeps the retained energy reported.

use crate::eigen::symmetric_eigen_desc;
use gqla_reference::error::{Error, Result};
use gqla_reference::latent::LatentWeights;
use ndarray::{s, Array2, Axis};

/// The top `rank` principal directions R [dim, rank] of the rows of `c` [T, dim] (uncentred), and
/// the fraction of energy they hold. When rank ≤ T < dim the T×T Gram matrix is decomposed
/// instead of the dim×dim covariance (same directions: R = cᵀ U Σ⁻¹), which is much cheaper.
pub fn principal_directions(c: &Array2<f64>, rank: usize) -> Result<(Array2<f64>, f64)> {
    let (t, dim) = c.dim();
    let total: f64 = c.iter().map(|v| v * v).sum();
    let (r, kept) = if rank <= t && t < dim {
        let (values, u) = symmetric_eigen_desc(&c.dot(&c.t()))?;
        let mut r = c.t().dot(&u.slice(s![.., ..rank]));
        for (k, mut col) in r.axis_iter_mut(Axis(1)).enumerate() {
            let norm = values[k].max(0.0).sqrt();
            if norm > 0.0 {
                col.mapv_inplace(|v| v / norm);
            }
        }
        (r, values.iter().take(rank).map(|v| v.max(0.0)).sum::<f64>())
    } else {
        let (values, vectors) = symmetric_eigen_desc(&c.t().dot(c))?;
        (
            vectors.slice(s![.., ..rank]).to_owned(),
            values.iter().take(rank).map(|v| v.max(0.0)).sum::<f64>(),
        )
    };
    Ok((r, if total > 0.0 { (kept / total).min(1.0) } else { 1.0 }))
}

/// Truncate the latent to `rank` principal directions of the calibration latents `c` = w.latent(x)
/// [T, d_c]. Returns the layer and the fraction of latent energy kept.
pub fn joint_pca(w: &LatentWeights<f64>, rank: usize, c: &Array2<f64>) -> Result<(LatentWeights<f64>, f64)> {
    let d = w.dims();
    if rank == 0 || rank > d.d_c() {
        return Err(Error::OutOfRange {
            name: "kv_rank",
            value: rank,
            expected: format!("between 1 and the full latent dim {}", d.d_c()),
        });
    }
    let (r, kept) = principal_directions(c, rank)?;
    Ok((w.project_latent(r.view())?, kept))
}
