//! `convert --emit mla`: a GQLA layer in the stock DeepSeek-V3 layout, which unmodified HF
//! transformers (and any MLA engine) loads.
//!
//! - Each group's `kv_b_proj` block is repeated for its H/G query heads, so
//!   `num_key_value_heads` = H. The absorb cache [c; k^R] is unchanged (d_c + d_r per token), and
//!   the repeat is exact: head i reads group i / (H/G)'s block either way.
//! - DeepSeek always applies the latent RMSNorm `kv_a_layernorm`. An MLA source has one already. A
//!   GQA source has none, and a norm cannot be expressed exactly: its weight is the scalar s that
//!   minimises Σ_t ‖c_t − s·c_t/rms(c_t)‖² over the calibration latents, which is the mean of
//!   rms(c_t) (TransMLA inserts its norm the same way). The held-out KL measures what it costs.

use gqla_reference::error::{Error, Result};
use gqla_reference::latent::{LatentProjections, LatentWeights};
use gqla_reference::linear::{Linear, RmsNorm};
use gqla_reference::{LatentDims, LatentShape};
use ndarray::{Array1, Array2, ArrayView2};

/// The stock-layout equivalent of `w`: kv_b repeated per head, a latent RMSNorm (`eps`) fitted to
/// the latents of `calibration_inputs` (hidden states entering attention) if `w` has none, and a
/// zero bias on kv_a or o_proj when only the other has one (DeepSeek's `attention_bias` covers
/// both).
pub fn to_stock_mla(w: &LatentWeights<f64>, calibration_inputs: &[ArrayView2<f64>], eps: f64) -> Result<LatentWeights<f64>> {
    let d = w.dims();
    let (h, g, d_c) = (d.h(), d.g(), d.d_c());
    let block = d.d_n() + d.d_v();
    let per_group = h / g;
    let kv_b = w.kv_b();
    let mut repeated = Array2::zeros((h * block, d_c));
    for head in 0..h {
        let grp = head / per_group;
        repeated
            .slice_mut(ndarray::s![head * block..(head + 1) * block, ..])
            .assign(&kv_b.slice(ndarray::s![grp * block..(grp + 1) * block, ..]));
    }
    let norm = match w.kv_norm() {
        Some(n) => n.clone(),
        None => RmsNorm {
            weight: Array1::from_elem(d_c, mean_latent_rms(w, calibration_inputs, eps)?),
            eps,
        },
    };
    let with_bias = |l: &Linear<f64>, other: &Linear<f64>| {
        let bias = l.bias.clone().or_else(|| other.bias.as_ref().map(|_| Array1::zeros(l.out_dim())));
        Linear::new(l.weight.clone(), bias)
    };
    let (kv_a, o) = (with_bias(w.kv_a(), w.o_proj()), with_bias(w.o_proj(), w.kv_a()));
    let dims = LatentDims::new(LatentShape {
        h,
        g: h,
        d_c,
        d_n: d.d_n(),
        d_r: d.d_r(),
        d_v: d.d_v(),
    })?;
    let projections = LatentProjections {
        query: w.query_projection().clone(),
        kv_a,
        kv_norm: Some(norm),
        kv_b: repeated,
        o_proj: o,
    };
    LatentWeights::new(dims, projections, w.rope().clone(), Some(w.scale()))?.with_sliding_window(w.sliding_window())
}

/// mean_t sqrt(mean_i c_t,i² + eps) over every calibration token's latent c_t = (W^DKV x_t)[:d_c].
fn mean_latent_rms(w: &LatentWeights<f64>, inputs: &[ArrayView2<f64>], eps: f64) -> Result<f64> {
    let d_c = w.dims().d_c();
    let (mut sum, mut n) = (0.0, 0usize);
    for x in inputs {
        let kv = w.kv_a().forward(*x);
        for row in kv.rows() {
            let ms = row.iter().take(d_c).map(|v| v * v).sum::<f64>() / d_c as f64;
            sum += (ms + eps).sqrt();
            n += 1;
        }
    }
    let s = sum / n.max(1) as f64;
    if n == 0 {
        return Err(Error::NoCalibration {
            what: "the stock DeepSeek-V3 layout (emit mla) fits the latent RMSNorm weight on calibration latents".into(),
        });
    }
    if !(s.is_finite() && s > 0.0) {
        return Err(Error::Value {
            what: format!("the stock DeepSeek-V3 layout (emit mla): the calibration latents' mean RMS over {n} tokens"),
            value: s,
            expected: "positive and finite",
        });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gqla_reference::random::{hidden_states, latent_layer, LatentOptions};
    use gqla_reference::{absorb_decode, gqa_decode, GroupCache, GroupCacheLayout, LatentCache};

    fn rel(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        (a - b).mapv(|v| v * v).sum().sqrt() / b.mapv(|v| v * v).sum().sqrt()
    }

    /// With a latent norm present (an MLA source), the stock layout computes the same outputs on
    /// both paths: the per-head repeat is exact.
    #[test]
    fn repeat_per_head_is_exact() {
        let dims = LatentDims::new(LatentShape {
            h: 6,
            g: 2,
            d_c: 12,
            d_n: 6,
            d_r: 4,
            d_v: 5,
        })
        .unwrap();
        let opts = LatentOptions {
            kv_norm: true,
            bias: true,
            ..Default::default()
        };
        let w = latent_layer(dims, opts, 7).unwrap();
        let x = hidden_states(9, w.hidden(), 8);
        let stock = to_stock_mla(&w, &[x.view()], 1e-6).unwrap();
        assert_eq!(stock.dims().g(), 6);
        let want = absorb_decode(&w, x.view(), &mut LatentCache::new(&dims)).unwrap().y;
        let absorb = absorb_decode(&stock, x.view(), &mut LatentCache::new(&dims)).unwrap().y;
        let mut cache = GroupCache::new(&stock.dims(), GroupCacheLayout::RopeOnce);
        let gqa = gqa_decode(&stock, x.view(), &mut cache).unwrap().y;
        assert!(rel(&absorb, &want) <= 1e-12, "{:e}", rel(&absorb, &want));
        assert!(rel(&gqa, &want) <= 1e-12, "{:e}", rel(&gqa, &want));
    }

    /// Without a norm (a GQA source), the fitted norm weight is the mean latent RMS.
    #[test]
    fn fitted_norm_is_the_mean_latent_rms() {
        let dims = LatentDims::new(LatentShape {
            h: 4,
            g: 2,
            d_c: 8,
            d_n: 4,
            d_r: 4,
            d_v: 4,
        })
        .unwrap();
        let opts = LatentOptions {
            kv_norm: false,
            ..Default::default()
        };
        let w = latent_layer(dims, opts, 3).unwrap();
        assert!(w.kv_norm().is_none());
        let x = hidden_states(5, w.hidden(), 4);
        let stock = to_stock_mla(&w, &[x.view()], 0.0).unwrap();
        let c = w.kv_a().forward(x.view());
        let mean: f64 = c
            .rows()
            .into_iter()
            .map(|r| (r.iter().take(8).map(|v| v * v).sum::<f64>() / 8.0).sqrt())
            .sum::<f64>()
            / 5.0;
        let weight = &stock.kv_norm().unwrap().weight;
        assert!(weight.iter().all(|&v| (v - mean).abs() <= 1e-12 * mean), "{weight} vs {mean}");
    }
}
