//! MLA attention exactly as HF transformers' DeepSeek-V3 computes it (non-absorbed, per head).
//!
//! ```text
//! q = q_proj(x) | q_b_proj(q_a_layernorm(q_a_proj(x)))      -> [T, H, d_n + d_r], split q_nope, q_pe
//! kv_a = kv_a_proj_with_mqa(x)                              -> split k_pass [d_c], k_pe [d_r]
//! kv = kv_b_proj(kv_a_layernorm(k_pass))                    -> [T, H, d_n + d_v], split k_nope, v
//! q_pe, k_pe = RoPE(q_pe), RoPE(k_pe);  K_i = [k_nope_i; k_pe],  Q_i = [q_nope_i; q_pe_i]
//! A_i = softmax(Q_i K_iᵀ · scale + causal mask);  y = o_proj([A_1 V_1, …, A_H V_H])
//! ```
//! Scores are formed as whole matrices and the mask as −∞, the way the HF eager path does.

use crate::decode::DecodeOutput;
use crate::error::{Error, GeometryError, Result};
use crate::latent::LatentWeights;
use crate::real::Real;
use ndarray::{concatenate, s, Array2, Array3, ArrayView2, Axis};

/// HF DeepSeek-V3 self-attention on x [T, hidden] at positions 0..T. Needs G = H.
pub fn mla_forward<T: Real>(w: &LatentWeights<T>, x: ArrayView2<T>) -> Result<DecodeOutput<T>> {
    let d = w.dims();
    if !d.is_mla() {
        return Err(GeometryError::NotMla {
            heads: d.h(),
            groups: d.g(),
        }
        .into());
    }
    if x.ncols() != w.hidden() {
        return Err(Error::ShapeMismatch {
            what: "MLA input [T, hidden]".into(),
            expected: vec![x.nrows(), w.hidden()],
            got: x.shape().to_vec(),
        });
    }
    let n = x.nrows();
    let q = w.queries(x, 0);
    let (c, k_pe) = w.latent_and_rope_key(x, 0);
    let kv = c.dot(&w.kv_b().t());
    let kv = kv.to_shape((n, d.h(), d.d_n() + d.d_v())).expect("kv reshape").into_owned();
    let scale = T::of(w.scale());
    let mut heads = Array3::zeros((n, d.h(), d.d_v()));
    let mut lse = Array2::zeros((n, d.h()));
    for i in 0..d.h() {
        let k_i = concatenate(Axis(1), &[kv.slice(s![.., i, ..d.d_n()]), k_pe.view()]).expect("key concat");
        let v_i = kv.slice(s![.., i, d.d_n()..]);
        let q_i = concatenate(Axis(1), &[q.nope.slice(s![.., i, ..]), q.rope.slice(s![.., i, ..])]).expect("query concat");
        let mut scores = q_i.dot(&k_i.t()) * scale;
        for r in 0..n {
            for c in 0..n {
                let outside_window = w.sliding_window().is_some_and(|win| r >= c + win);
                if c > r || outside_window {
                    scores[[r, c]] = T::neg_infinity();
                }
            }
        }
        for (r, mut row) in scores.axis_iter_mut(Axis(0)).enumerate() {
            let m = row.iter().copied().fold(T::neg_infinity(), T::max);
            row.mapv_inplace(|v| (v - m).exp());
            let z: T = row.sum();
            row.mapv_inplace(|v| v / z);
            lse[[r, i]] = m + z.ln();
        }
        heads.slice_mut(s![.., i, ..]).assign(&scores.dot(&v_i));
    }
    Ok(DecodeOutput {
        y: w.output(&heads),
        heads,
        lse,
    })
}
