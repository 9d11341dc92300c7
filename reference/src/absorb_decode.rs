//! The MQA-absorb decode path over a [`LatentCache`].
//!
//! - (A1) q̃_i = [ (W^{UK}_{g(i)})ᵀ q^N_i ; q^R_i ] ∈ R^{d_c + d_r};
//! - (A2) õ_i = Σ_t softmax_t(scale · q̃_i · [c_t; k^R_t]) c_t — MQA with key dim d_c + d_r and
//!   value dim d_c, one shared KV head;
//! - (A3) o_i = W^{UV}_{g(i)} õ_i;
//! - then (O) y = W^O [o_1; …; o_H] + b^O.
//!
//! Decoding s_q ≥ 1 tokens at positions P..P+s_q−1: they are appended first, and query j sees cache
//! positions ≤ P + j (bottom-right causal alignment).

use crate::attention::{attend, causal_ranges};
use crate::cache::LatentCache;
use crate::decode::DecodeOutput;
use crate::error::{Error, Result};
use crate::latent::{LatentWeights, Queries};
use crate::real::Real;
use ndarray::{s, Array2, Array3, ArrayView2};

/// (A1) Absorb W^{UK}_{g(i)} into each head's no-rope query: [s, H, d_c + d_r].
pub fn absorb_queries<T: Real>(w: &LatentWeights<T>, q: &Queries<T>) -> Array3<T> {
    let d = w.dims();
    let (s_q, h, _) = q.nope.dim();
    let mut out = Array3::zeros((s_q, h, d.d_c() + d.d_r()));
    for t in 0..s_q {
        for i in 0..h {
            let w_uk = w.w_uk(d.group_of(i));
            out.slice_mut(s![t, i, ..d.d_c()])
                .assign(&w_uk.t().dot(&q.nope.slice(s![t, i, ..])));
            out.slice_mut(s![t, i, d.d_c()..]).assign(&q.rope.slice(s![t, i, ..]));
        }
    }
    out
}

/// (A2) MQA over the latent cache with the last s_q cache rows as the query tokens:
/// returns (õ [s, H, d_c], LSE [s, H]).
pub fn mqa_attend<T: Real>(q_tilde: &Array3<T>, cache: &LatentCache<T>, scale: T, window: Option<usize>) -> (Array3<T>, Array2<T>) {
    let (s_q, h, _) = q_tilde.dim();
    let ranges = causal_ranges(s_q, cache.len(), window);
    let mut out = Array3::zeros((s_q, h, cache.d_c()));
    let mut lse = Array2::zeros((s_q, h));
    for i in 0..h {
        let (o, l) = attend(q_tilde.slice(s![.., i, ..]), cache.keys(), cache.latent(), scale, &ranges);
        out.slice_mut(s![.., i, ..]).assign(&o);
        lse.slice_mut(s![.., i]).assign(&l);
    }
    (out, lse)
}

/// (A3) o_i = W^{UV}_{g(i)} õ_i: [s, H, d_v].
pub fn up_project_values<T: Real>(w: &LatentWeights<T>, o_latent: &Array3<T>) -> Array3<T> {
    let d = w.dims();
    let (s_q, h, _) = o_latent.dim();
    let mut out = Array3::zeros((s_q, h, d.d_v()));
    for t in 0..s_q {
        for i in 0..h {
            out.slice_mut(s![t, i, ..])
                .assign(&w.w_uv(d.group_of(i)).dot(&o_latent.slice(s![t, i, ..])));
        }
    }
    out
}

/// Decode the hidden states `x_new` [s, hidden] (positions cache.len()..) on the absorb path,
/// appending their latents to `cache`.
pub fn absorb_decode<T: Real>(w: &LatentWeights<T>, x_new: ArrayView2<T>, cache: &mut LatentCache<T>) -> Result<DecodeOutput<T>> {
    let d = w.dims();
    if x_new.ncols() != w.hidden() {
        return Err(Error::ShapeMismatch {
            what: "decode input [s, hidden]".into(),
            expected: vec![x_new.nrows(), w.hidden()],
            got: x_new.shape().to_vec(),
        });
    }
    if (cache.d_c(), cache.d_r()) != (d.d_c(), d.d_r()) {
        return Err(Error::ShapeMismatch {
            what: "latent cache [d_c, d_r]".into(),
            expected: vec![d.d_c(), d.d_r()],
            got: vec![cache.d_c(), cache.d_r()],
        });
    }
    let start = cache.len();
    let (c, k_r) = w.latent_and_rope_key(x_new, start);
    cache.append(c.view(), k_r.view());
    let q_tilde = absorb_queries(w, &w.queries(x_new, start));
    let (o_latent, lse) = mqa_attend(&q_tilde, cache, T::of(w.scale()), w.sliding_window());
    let heads = up_project_values(w, &o_latent);
    Ok(DecodeOutput {
        y: w.output(&heads),
        heads,
        lse,
    })
}
