//! GQA/MHA/MQA attention with HF LLaMA semantics (Qwen2's q/k/v bias, Mistral's sliding window).
//!
//! For head i with KV head j = floor(i / (H/KV)), at positions t:
//! $$ q_i = \mathrm{RoPE}(W^Q_i x_t + b^Q_i, t),\; k_j = \mathrm{RoPE}(W^K_j x_u + b^K_j, u),\;
//!    v_j = W^V_j x_u + b^V_j, $$
//! $$ o_{i,t} = \sum_{u \le t,\; t-u < w} \mathrm{softmax}_u(q_i\cdot k_{j,u}/\sqrt{D})\, v_{j,u},\quad
//!    y_t = W^O[o_1;…;o_H] + b^O. $$

use crate::attention::{attend, causal_ranges};
use crate::cache::GqaCache;
use crate::config::GqaDims;
use crate::decode::DecodeOutput;
use crate::dtype::DType;
use crate::error::{Error, GeometryError, Result};
use crate::linear::Linear;
use crate::real::Real;
use crate::rope::Rope;
use ndarray::{s, Array2, Array3, ArrayView2, Axis};

/// A GQA layer's four projections, by name (their shapes are checked by [`GqaWeights::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GqaProjections<T> {
    /// q_proj [H·D, hidden].
    pub q: Linear<T>,
    /// k_proj [KV·D, hidden].
    pub k: Linear<T>,
    /// v_proj [KV·D, hidden].
    pub v: Linear<T>,
    /// o_proj [hidden, H·D].
    pub o: Linear<T>,
}

/// Weights of one GQA attention layer.
#[derive(Clone, Debug, PartialEq)]
pub struct GqaWeights<T> {
    dims: GqaDims,
    pub(crate) q: Linear<T>,
    pub(crate) k: Linear<T>,
    pub(crate) v: Linear<T>,
    pub(crate) o: Linear<T>,
    rope: Rope,
    sliding_window: Option<usize>,
    scale: f64,
}

impl<T: Real> GqaWeights<T> {
    /// Checks every shape once; `scale` None means 1/sqrt(D).
    pub fn new(
        dims: GqaDims,
        projections: GqaProjections<T>,
        rope: Rope,
        sliding_window: Option<usize>,
        scale: Option<f64>,
    ) -> Result<Self> {
        let GqaProjections { q, k, v, o } = projections;
        let hidden = q.in_dim();
        let (h, kv, dd) = (dims.h(), dims.kv(), dims.d());
        for (what, expected, got) in [
            ("q_proj [H D, hidden]", vec![h * dd, hidden], q.weight.shape().to_vec()),
            ("k_proj [KV D, hidden]", vec![kv * dd, hidden], k.weight.shape().to_vec()),
            ("v_proj [KV D, hidden]", vec![kv * dd, hidden], v.weight.shape().to_vec()),
            ("o_proj [hidden, H D]", vec![hidden, h * dd], o.weight.shape().to_vec()),
            ("RoPE dim = head_dim", vec![dd], vec![rope.dim()]),
        ] {
            if expected != got {
                return Err(Error::ShapeMismatch {
                    what: what.into(),
                    expected,
                    got,
                });
            }
        }
        if sliding_window == Some(0) {
            return Err(GeometryError::NotPositive { name: "sliding_window" }.into());
        }
        Ok(Self {
            dims,
            q,
            k,
            v,
            o,
            rope,
            sliding_window,
            scale: scale.unwrap_or(1.0 / (dd as f64).sqrt()),
        })
    }
    pub fn dims(&self) -> GqaDims {
        self.dims
    }
    pub fn hidden(&self) -> usize {
        self.q.in_dim()
    }
    pub fn scale(&self) -> f64 {
        self.scale
    }
    pub fn rope(&self) -> &Rope {
        &self.rope
    }
    pub fn q_proj(&self) -> &Linear<T> {
        &self.q
    }
    pub fn k_proj(&self) -> &Linear<T> {
        &self.k
    }
    pub fn v_proj(&self) -> &Linear<T> {
        &self.v
    }
    pub fn o_proj(&self) -> &Linear<T> {
        &self.o
    }
    pub fn sliding_window(&self) -> Option<usize> {
        self.sliding_window
    }

    /// Project rows at positions start.. to heads [s, n, D], applying RoPE when `rope`.
    fn heads(&self, w: &Linear<T>, x: ArrayView2<T>, n: usize, start: usize, rope: bool) -> Array3<T> {
        let mut a = w
            .forward(x)
            .to_shape((x.nrows(), n, self.dims.d()))
            .expect("head reshape")
            .into_owned();
        if rope {
            for (t, mut tok) in a.axis_iter_mut(Axis(0)).enumerate() {
                for mut head in tok.axis_iter_mut(Axis(0)) {
                    self.rope.apply(head.view_mut(), start + t);
                }
            }
        }
        a
    }

    /// Decode `x_new` [s, hidden] at positions cache.len().., appending its K/V to `cache`.
    pub fn decode(&self, x_new: ArrayView2<T>, cache: &mut GqaCache<T>) -> Result<DecodeOutput<T>> {
        let (h, kv, dd) = (self.dims.h(), self.dims.kv(), self.dims.d());
        if x_new.ncols() != self.hidden() {
            return Err(Error::ShapeMismatch {
                what: "GQA input [s, hidden]".into(),
                expected: vec![x_new.nrows(), self.hidden()],
                got: x_new.shape().to_vec(),
            });
        }
        let start = cache.len();
        let s_q = x_new.nrows();
        let q = self.heads(&self.q, x_new, h, start, true);
        cache.append(
            self.heads(&self.k, x_new, kv, start, true).view(),
            self.heads(&self.v, x_new, kv, start, false).view(),
        );
        let ranges = causal_ranges(s_q, cache.len(), self.sliding_window);
        let mut heads = Array3::zeros((s_q, h, dd));
        let mut lse = Array2::zeros((s_q, h));
        for i in 0..h {
            let j = self.dims.kv_of(i);
            let (o, l) = attend(
                q.slice(s![.., i, ..]),
                cache.head_keys(j),
                cache.head_values(j),
                T::of(self.scale),
                &ranges,
            );
            heads.slice_mut(s![.., i, ..]).assign(&o);
            lse.slice_mut(s![.., i]).assign(&l);
        }
        let y = self.o.forward(heads.to_shape((s_q, h * dd)).expect("contiguous").view());
        Ok(DecodeOutput { y, heads, lse })
    }

    /// Causal prefill of x [T, hidden] at positions 0..T.
    pub fn prefill(&self, x: ArrayView2<T>) -> Result<DecodeOutput<T>> {
        self.decode(x, &mut GqaCache::new(&self.dims))
    }

    pub fn cast<U: Real>(&self) -> GqaWeights<U> {
        self.rounded(DType::F64)
    }
    /// The weights in precision `U`, every parameter first rounded by `r`.
    pub fn rounded<U: Real>(&self, r: DType) -> GqaWeights<U> {
        GqaWeights {
            dims: self.dims,
            q: self.q.rounded(r),
            k: self.k.rounded(r),
            v: self.v.rounded(r),
            o: self.o.rounded(r),
            rope: self.rope.clone(),
            sliding_window: self.sliding_window,
            scale: self.scale,
        }
    }
}
