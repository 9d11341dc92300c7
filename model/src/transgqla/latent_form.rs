//! (T1)/(T3): the latent form of a GQA layer under an orthogonal map of its key latent.
//!
//! With M the orthogonal map of the key latent in pair layout (identity for T1, RoRoPE for T2),
//! P_R the kept rope rows and P_N the dropped ones, the layer is
//! - k^R = P_R M (W_K x + b_K), RoPE'd with the kept pairs' frequencies;
//! - c = [P_N M (W_K x + b_K); W_V x + b_V];
//! - q^N_i = W_{Q,i} x + b_{Q,i} (d_n = D), q^R_i = P_R M E_gᵀ q^N_i;
//! - W^UK_g = [(P_N M E_gᵀ)ᵀ, 0], W^UV_g = [0, E_g];
//! - scale 1/sqrt(D): the GQA logits, with RoPE removed from the dropped pairs.

use gqla_reference::config::{LatentDims, LatentShape};
use gqla_reference::error::{Error, Result};
use gqla_reference::gqa::GqaWeights;
use gqla_reference::latent::{LatentProjections, LatentWeights, QueryProjection};
use gqla_reference::linear::Linear;
use gqla_reference::rope::{Rope, RopeStyle};
use ndarray::{concatenate, s, Array1, Array2, Axis};

/// The key latent's pair layout: coordinate c of kv head j (rotate-half, D = head dim) sits at
/// latent index 2p or 2p + 1 with p = j·D/2 + (c mod D/2).
pub fn pair_index(j: usize, c: usize, d: usize) -> usize {
    let half = d / 2;
    2 * (j * half + c % half) + usize::from(c >= half)
}

/// The permutation Π from head-major key coordinates to pair layout, as a matrix [KV·D, KV·D].
pub fn pair_permutation(kv: usize, d: usize) -> Array2<f64> {
    let mut p = Array2::zeros((kv * d, kv * d));
    for j in 0..kv {
        for c in 0..d {
            p[[pair_index(j, c, d), j * d + c]] = 1.0;
        }
    }
    p
}

/// An orthogonal map of the key latent (in pair layout), the frequency of each new pair, and which
/// new pairs keep RoPE (in k^R order).
#[derive(Clone, Debug)]
pub struct KeyMap {
    /// M [KV·D, KV·D], rows = new coordinates (2m, 2m+1 for new pair m), applied after Π.
    pub rotation: Array2<f64>,
    /// θ of each new pair.
    pub freqs: Vec<f64>,
    /// New pairs kept with RoPE, in the order they appear in k^R.
    pub kept: Vec<usize>,
}

impl KeyMap {
    /// The identity map keeping every pair (T1).
    pub fn identity(gqa: &GqaWeights<f64>) -> Self {
        let (kv, d) = (gqa.dims().kv(), gqa.dims().d());
        let theta = gqa.rope().freqs();
        let freqs = (0..kv * d / 2).map(|p| theta[p % (d / 2)]).collect();
        Self {
            rotation: Array2::eye(kv * d),
            freqs,
            kept: (0..kv * d / 2).collect(),
        }
    }
    fn rows(&self, pairs: &[usize]) -> Array2<f64> {
        let idx: Vec<usize> = pairs.iter().flat_map(|&m| [2 * m, 2 * m + 1]).collect();
        self.rotation.select(Axis(0), &idx)
    }
    fn dropped(&self) -> Vec<usize> {
        (0..self.freqs.len()).filter(|m| !self.kept.contains(m)).collect()
    }
}

/// The latent form of `gqa` under `map`: an evaluable GQLA layer with G = KV, d_n = d_v = D,
/// d_r = 2·|kept|, d_c = 2·|dropped| + KV·D, scale 1/sqrt(D).
pub fn latent_form(gqa: &GqaWeights<f64>, map: &KeyMap) -> Result<LatentWeights<f64>> {
    let gd = gqa.dims();
    let (h, kv, d) = (gd.h(), gd.kv(), gd.d());
    if gqa.rope().style() != RopeStyle::RotateHalf || gqa.rope().attention_factor() != 1.0 {
        return Err(Error::UnsupportedRope {
            style: gqa.rope().style(),
            attention_factor: gqa.rope().attention_factor(),
        });
    }
    if map.kept.is_empty() {
        return Err(Error::OutOfRange {
            name: "d_r",
            value: 0,
            expected: "at least one kept RoPE pair".into(),
        });
    }
    // Rows of M Π: maps head-major key coordinates to the kept rope pairs and to the dropped ones.
    let pi = pair_permutation(kv, d);
    let (rope_rows, nope_rows) = (map.rows(&map.kept).dot(&pi), map.rows(&map.dropped()).dot(&pi));
    let (wk, bk) = (
        &gqa.k_proj().weight,
        gqa.k_proj().bias.clone().unwrap_or_else(|| Array1::zeros(kv * d)),
    );
    let (wv, bv) = (
        &gqa.v_proj().weight,
        gqa.v_proj().bias.clone().unwrap_or_else(|| Array1::zeros(kv * d)),
    );
    let n_drop = nope_rows.nrows();
    let d_r = rope_rows.nrows();
    let d_c = n_drop + kv * d;
    // Latent c = [P_N M Π (W_K x + b_K); W_V x + b_V] and the rope key P_R M Π (W_K x + b_K).
    let w_dkv = concatenate(Axis(0), &[nope_rows.dot(wk).view(), wv.view()]).expect("rows");
    let b_dkv = concatenate(Axis(0), &[nope_rows.dot(&bk).view(), bv.view()]).expect("rows");
    let w_kr = rope_rows.dot(wk);
    let b_kr = rope_rows.dot(&bk);
    let any_bias = gqa.k_proj().bias.is_some() || gqa.v_proj().bias.is_some();
    let kv_a = Linear::new(
        concatenate(Axis(0), &[w_dkv.view(), w_kr.view()]).expect("rows"),
        any_bias.then(|| concatenate(Axis(0), &[b_dkv.view(), b_kr.view()]).expect("rows")),
    );
    // Per group: W^UK_g = [(P_N M Π)[:, block g]ᵀ, 0], W^UV_g = [0, E_g].
    let mut kv_b = Array2::zeros((kv * 2 * d, d_c));
    for g in 0..kv {
        let block = s![.., g * d..(g + 1) * d];
        kv_b.slice_mut(s![g * 2 * d..g * 2 * d + d, ..n_drop])
            .assign(&nope_rows.slice(block).t());
        for c in 0..d {
            kv_b[[g * 2 * d + d + c, n_drop + g * d + c]] = 1.0;
        }
    }
    // Query rows per head: [W_Q,i ; P_R M Π E_gᵀ W_Q,i].
    let (wq, bq) = (&gqa.q_proj().weight, gqa.q_proj().bias.as_ref());
    let qk = d + d_r;
    let mut q_w = Array2::zeros((h * qk, wq.ncols()));
    let mut q_b = Array1::zeros(h * qk);
    for i in 0..h {
        let g = gd.kv_of(i);
        let absorb = rope_rows.slice(s![.., g * d..(g + 1) * d]).to_owned(); // [d_r, D]
        let wqi = wq.slice(s![i * d..(i + 1) * d, ..]);
        q_w.slice_mut(s![i * qk..i * qk + d, ..]).assign(&wqi);
        q_w.slice_mut(s![i * qk + d..(i + 1) * qk, ..]).assign(&absorb.dot(&wqi));
        if let Some(b) = bq {
            let bqi = b.slice(s![i * d..(i + 1) * d]);
            q_b.slice_mut(s![i * qk..i * qk + d]).assign(&bqi);
            q_b.slice_mut(s![i * qk + d..(i + 1) * qk]).assign(&absorb.dot(&bqi));
        }
    }
    let query = QueryProjection::Direct(Linear::new(q_w, bq.map(|_| q_b)));
    let rope = Rope::new(RopeStyle::Interleaved, map.kept.iter().map(|&m| map.freqs[m]).collect())?;
    let dims = LatentDims::new(LatentShape::from_gqa(gd, d_c, d_r))?;
    let projections = LatentProjections {
        query,
        kv_a,
        kv_norm: None,
        kv_b,
        o_proj: gqa.o_proj().clone(),
    };
    LatentWeights::new(dims, projections, rope, Some(gqa.scale())).and_then(|w| w.with_sliding_window(gqa.sliding_window()))
}
