//! (T4) Balanced KV: K_N ← K_N/α and W^UK_g ← α W^UK_g, exact.
//!
//! $$ \alpha = \frac{\mathrm{mean}_j \lVert K_N[:, j]\rVert_2}{\mathrm{mean}_j \lVert V[:, j]\rVert_2} $$
//! with column norms over calibration tokens. It keeps the no-rope keys from dominating the joint PCA.

use gqla_reference::error::Result;
use gqla_reference::latent::LatentWeights;
use ndarray::{s, Array2, Axis};

/// Balance the first `n_k` latent dims (the no-rope keys) against the rest (the values), given
/// the calibration latents `c` = w.latent(x) [T, d_c] (scaled in place to the balanced latents).
/// Returns the balanced layer and α (1 when there are no no-rope key dims).
pub fn balance_kv(w: &LatentWeights<f64>, n_k: usize, c: &mut Array2<f64>) -> Result<(LatentWeights<f64>, f64)> {
    if n_k == 0 {
        return Ok((w.clone(), 1.0));
    }
    let norms = c.map_axis(Axis(0), |col| col.dot(&col).sqrt());
    let (k_mean, v_mean) = (
        norms.slice(s![..n_k]).mean().unwrap_or(0.0),
        norms.slice(s![n_k..]).mean().unwrap_or(0.0),
    );
    let alpha = if k_mean > 0.0 && v_mean > 0.0 { k_mean / v_mean } else { 1.0 };
    let scales: Vec<f64> = (0..w.dims().d_c()).map(|j| if j < n_k { alpha } else { 1.0 }).collect();
    let out = w.rescale_latent(&scales)?;
    c.slice_mut(s![.., ..n_k]).mapv_inplace(|v| v / alpha);
    Ok((out, alpha))
}
