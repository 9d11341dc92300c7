//! GQLA prefill in the non-absorbed form, group-indexed, with no cache.
//!
//! For tokens at positions 0..T with a causal mask, head i in group g = g(i):
//! $$ o_{i,t} = \sum_{u \le t} \mathrm{softmax}_u\big(\text{scale}\,(q^N_{i,t}\cdot W^{UK}_g c_u
//!   + q^R_{i,t}\cdot k^R_u)\big)\, W^{UV}_g c_u. $$
//!
//! This is the definition written directly; the decode paths must agree with it.

use crate::attention::{attend, causal_ranges};
use crate::decode::DecodeOutput;
use crate::error::{Error, Result};
use crate::latent::LatentWeights;
use crate::linear::matmul_t;
use crate::real::Real;
use ndarray::{concatenate, s, Array2, Array3, ArrayView2, Axis};

/// Prefill hidden states x [T, hidden] at positions 0..T.
pub fn prefill<T: Real>(w: &LatentWeights<T>, x: ArrayView2<T>) -> Result<DecodeOutput<T>> {
    let d = w.dims();
    if x.ncols() != w.hidden() {
        return Err(Error::ShapeMismatch {
            what: "prefill input [T, hidden]".into(),
            expected: vec![x.nrows(), w.hidden()],
            got: x.shape().to_vec(),
        });
    }
    let n = x.nrows();
    let (c, k_r) = w.latent_and_rope_key(x, 0);
    let q = w.queries(x, 0);
    let ranges = causal_ranges(n, n, w.sliding_window());
    let mut heads = Array3::zeros((n, d.h(), d.d_v()));
    let mut lse = Array2::zeros((n, d.h()));
    for g in 0..d.g() {
        // [W^{UK}_g c_u | W^{UV}_g c_u] for every token, shared by the group's heads.
        let kv = matmul_t(c.view(), w.w_ukv(g));
        let keys = concatenate(Axis(1), &[kv.slice(s![.., ..d.d_n()]), k_r.view()]).expect("key concat");
        let values = kv.slice(s![.., d.d_n()..]);
        let per = d.heads_per_group();
        for i in g * per..(g + 1) * per {
            let qi = concatenate(Axis(1), &[q.nope.slice(s![.., i, ..]), q.rope.slice(s![.., i, ..])]).expect("query concat");
            let (o, l) = attend(qi.view(), keys.view(), values, T::of(w.scale()), &ranges);
            heads.slice_mut(s![.., i, ..]).assign(&o);
            lse.slice_mut(s![.., i]).assign(&l);
        }
    }
    Ok(DecodeOutput {
        y: w.output(&heads),
        heads,
        lse,
    })
}
