//! The GQA decode path over a per-group [`GroupCache`].
//!
//! - (G1) k_{g,t} = W^{UK}_g c_t, v_{g,t} = W^{UV}_g c_t (see [`crate::switch::expand_rows`]);
//! - (G2) o_i = Σ_t softmax_t(scale · [q^N_i; q^R_i] · [k_{g(i),t}; k^R_t]) v_{g(i),t} — plain GQA
//!   with G KV heads of key dim d_n + d_r and value dim d_v, H/G query heads per KV head;
//! - then (O) y = W^O [o_1; …; o_H] + b^O.
//!
//! Equal to the absorb path in exact arithmetic by associativity:
//! q^N·(W^{UK}c) = ((W^{UK})ᵀq^N)·c and Σ p W^{UV}c = W^{UV} Σ p c.

use crate::attention::{attend, causal_ranges};
use crate::cache::GroupCache;
use crate::decode::DecodeOutput;
use crate::error::{Error, Result};
use crate::latent::{LatentWeights, Queries};
use crate::real::Real;
use crate::switch::expand_rows;
use ndarray::{concatenate, s, Array2, Array3, ArrayView2, Axis};

/// (G2) GQA attention of the last s_q cache rows: queries of H_l heads, `heads_per_group` per local
/// group of `cache`. Returns (o [s, H_l, d_v], LSE [s, H_l]).
pub fn gqa_attend<T: Real>(
    q: &Queries<T>,
    cache: &GroupCache<T>,
    scale: T,
    heads_per_group: usize,
    window: Option<usize>,
) -> (Array3<T>, Array2<T>) {
    let (s_q, h, _) = q.nope.dim();
    assert_eq!(
        h,
        heads_per_group * cache.num_groups(),
        "gqa_attend: heads must fill the cache's groups"
    );
    let ranges = causal_ranges(s_q, cache.len(), window);
    let d_v = cache.group_values(0).ncols();
    let mut out = Array3::zeros((s_q, h, d_v));
    let mut lse = Array2::zeros((s_q, h));
    for g in 0..cache.num_groups() {
        let (keys, values) = (cache.group_keys(g), cache.group_values(g));
        for i in g * heads_per_group..(g + 1) * heads_per_group {
            let qi = concatenate(Axis(1), &[q.nope.slice(s![.., i, ..]), q.rope.slice(s![.., i, ..])]).expect("query concat");
            let (o, l) = attend(qi.view(), keys.view(), values.view(), scale, &ranges);
            out.slice_mut(s![.., i, ..]).assign(&o);
            lse.slice_mut(s![.., i]).assign(&l);
        }
    }
    (out, lse)
}

/// Decode `x_new` [s, hidden] (positions cache.len()..) on the GQA path. `w` holds exactly the
/// cache's groups (all of them, or one TP rank's shard).
pub fn gqa_decode<T: Real>(w: &LatentWeights<T>, x_new: ArrayView2<T>, cache: &mut GroupCache<T>) -> Result<DecodeOutput<T>> {
    let d = w.dims();
    if x_new.ncols() != w.hidden() {
        return Err(Error::ShapeMismatch {
            what: "decode input [s, hidden]".into(),
            expected: vec![x_new.nrows(), w.hidden()],
            got: x_new.shape().to_vec(),
        });
    }
    if cache.num_groups() != d.g() {
        return Err(Error::ShapeMismatch {
            what: "group cache groups".into(),
            expected: vec![d.g()],
            got: vec![cache.num_groups()],
        });
    }
    let start = cache.len();
    let (c, rope_key) = w.latent_and_rope_key(x_new, start);
    let (k, v) = expand_rows(w, c.view());
    cache.append(k.view(), v.view(), rope_key.view());
    let (heads, lse) = gqa_attend(
        &w.queries(x_new, start),
        cache,
        T::of(w.scale()),
        d.heads_per_group(),
        w.sliding_window(),
    );
    Ok(DecodeOutput {
        y: w.output(&heads),
        heads,
        lse,
    })
}
