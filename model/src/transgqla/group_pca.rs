//! MLA → GQLA by per-group PCA (the authors' later release), one layer.
//!
//! For group g of gs = H/G neighbouring heads i_1..i_gs, stack the heads' no-rope keys
//! K_g = [W^{UK}_{i_1} c; …; W^{UK}_{i_gs} c] ∈ R^{gs·d_n} and values V_g likewise over calibration
//! latents. With U_g [gs·d_n, d_n] the top eigenvectors of Σ_t K_g K_gᵀ (uncentred), blocks U_{g,i}:
//! - (P1) W^{UK}_g = Σ_i U_{g,i}ᵀ W^{UK}_i, and head i's no-rope query q^N_i ← U_{g,i}ᵀ q^N_i, so
//!   q^N_i·(W^{UK}_i c) ≈ (U_{g,i}ᵀ q^N_i)·(W^{UK}_g c);
//! - (P2) with U^V_g from V_g: W^{UV}_g = Σ_i U^V_{g,i}ᵀ W^{UV}_i and W^O_i ← W^O_i U^V_{g,i}.
//!
//! The rope parts, the latent and the scale are untouched; Q and O keep their shapes. Exact when
//! G = H (each U_g is orthogonal), and whenever a group's heads already share their
//! up-projections (GQLA expanded to MLA converts back exactly).

use crate::eigen::symmetric_eigen_desc;
use gqla_reference::config::{LatentDims, LatentShape};
use gqla_reference::error::{GeometryError, Result};
use gqla_reference::latent::{LatentProjections, LatentWeights, QueryProjection};
use ndarray::{concatenate, s, Array2, ArrayView2, Axis};

/// Energy kept by the per-group PCAs of one layer (means over groups).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GroupPcaReport {
    pub groups: usize,
    pub key_energy_kept: f64,
    pub value_energy_kept: f64,
}

/// The top `k` eigenvectors [n, k] of Σ_t z_t z_tᵀ for rows z of `z` [T, n], and the energy share.
fn top_directions(z: &Array2<f64>, k: usize) -> Result<(Array2<f64>, f64)> {
    let (values, vectors) = symmetric_eigen_desc(&z.t().dot(z))?;
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    let kept: f64 = values.iter().take(k).map(|v| v.max(0.0)).sum();
    Ok((vectors.slice(s![.., ..k]).to_owned(), if total > 0.0 { kept / total } else { 1.0 }))
}

/// Convert an MLA layer (G = H) to GQLA with `groups` groups of neighbouring heads, calibrated on
/// the hidden states `x` [T, hidden] that reach it.
pub fn group_pca(w: &LatentWeights<f64>, groups: usize, x: ArrayView2<f64>) -> Result<(LatentWeights<f64>, GroupPcaReport)> {
    let d = w.dims();
    if !d.is_mla() {
        return Err(GeometryError::NotMla {
            heads: d.h(),
            groups: d.g(),
        }
        .into());
    }
    let dims = LatentDims::new(LatentShape {
        h: d.h(),
        g: groups,
        d_c: d.d_c(),
        d_n: d.d_n(),
        d_r: d.d_r(),
        d_v: d.d_v(),
    })?;
    let gs = dims.heads_per_group();
    let (d_n, d_v, qk) = (d.d_n(), d.d_v(), d.qk_dim());
    let c = w.latent(x);
    let mut kv_b = Array2::zeros((groups * (d_n + d_v), d.d_c()));
    let mut query = w.query_projection().clone();
    let mut o = w.o_proj().clone();
    let (mut key_kept, mut value_kept) = (0.0, 0.0);
    let q_rows = match &mut query {
        QueryProjection::Direct(l) => l,
        QueryProjection::LowRank { up, .. } => up,
    };
    for g in 0..groups {
        let heads: Vec<usize> = (g * gs..(g + 1) * gs).collect();
        // The group's stacked up-projections: [gs·d_n, d_c] and [gs·d_v, d_c].
        let uk_stack = concatenate(Axis(0), &heads.iter().map(|&i| w.w_uk(i)).collect::<Vec<_>>()).expect("rows");
        let uv_stack = concatenate(Axis(0), &heads.iter().map(|&i| w.w_uv(i)).collect::<Vec<_>>()).expect("rows");
        let (u_k, ek) = top_directions(&c.dot(&uk_stack.t()), d_n)?;
        let (u_v, ev) = top_directions(&c.dot(&uv_stack.t()), d_v)?;
        key_kept += ek / groups as f64;
        value_kept += ev / groups as f64;
        let r = g * (d_n + d_v);
        kv_b.slice_mut(s![r..r + d_n, ..]).assign(&u_k.t().dot(&uk_stack));
        kv_b.slice_mut(s![r + d_n..r + d_n + d_v, ..]).assign(&u_v.t().dot(&uv_stack));
        for (k, &i) in heads.iter().enumerate() {
            let (uk_i, uv_i) = (u_k.slice(s![k * d_n..(k + 1) * d_n, ..]), u_v.slice(s![k * d_v..(k + 1) * d_v, ..]));
            let rows = s![i * qk..i * qk + d_n, ..];
            let rotated = uk_i.t().dot(&q_rows.weight.slice(rows));
            q_rows.weight.slice_mut(rows).assign(&rotated);
            if let Some(b) = q_rows.bias.as_mut() {
                let rb = uk_i.t().dot(&b.slice(s![i * qk..i * qk + d_n]));
                b.slice_mut(s![i * qk..i * qk + d_n]).assign(&rb);
            }
            let cols = s![.., i * d_v..(i + 1) * d_v];
            let mixed = o.weight.slice(cols).dot(&uv_i);
            o.weight.slice_mut(cols).assign(&mixed);
        }
    }
    let projections = LatentProjections {
        query,
        kv_a: w.kv_a().clone(),
        kv_norm: w.kv_norm().cloned(),
        kv_b,
        o_proj: o,
    };
    let out = LatentWeights::new(dims, projections, w.rope().clone(), Some(w.scale()))?;
    Ok((
        out,
        GroupPcaReport {
            groups,
            key_energy_kept: key_kept,
            value_energy_kept: value_kept,
        },
    ))
}
