//! Weights of an MLA/GQLA attention layer, and the projections shared by every decode path.
//!
//! Equations (SPEC.md §2):
//! - (L1) latent: c_t = N(W^{DKV} x_t), N = RMSNorm (kv_a_layernorm) or identity;
//! - (L2) shared rope key: k^R_t = RoPE(W^{KR} x_t, t);
//! - (Q)  query of head i: [q^N_i; q^R_i] = W^Q_i x_t (or through the q-LoRA W^{UQ} N_q(W^{DQ} x_t)),
//!   with RoPE applied to q^R_i at position t;
//! - (O)  y_t = W^O [o_1; …; o_H] + b^O.
//!
//! `W^{DKV}` and `W^{KR}` are the two row blocks of HF's `kv_a_proj_with_mqa` ([d_c + d_r, hidden]);
//! `W^{UK}_g`, `W^{UV}_g` are the row blocks of `kv_b_proj` ([G(d_n + d_v), d_c], group-major,
//! each group's d_n key rows first).

use crate::config::{LatentDims, LatentShape};
use crate::dtype::DType;
use crate::error::{Error, GeometryError, Result};
use crate::linear::{Linear, RmsNorm};
use crate::real::Real;
use crate::rope::Rope;
use ndarray::{s, Array2, Array3, ArrayView2, Axis};

/// How the query is produced.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryProjection<T> {
    /// `q_proj`: [H(d_n + d_r), hidden].
    Direct(Linear<T>),
    /// DeepSeek-V3 q-LoRA: `q_b_proj(q_a_layernorm(q_a_proj(x)))`.
    LowRank { down: Linear<T>, norm: RmsNorm<T>, up: Linear<T> },
}

impl<T: Real> QueryProjection<T> {
    pub fn forward(&self, x: ArrayView2<T>) -> Array2<T> {
        match self {
            QueryProjection::Direct(w) => w.forward(x),
            QueryProjection::LowRank { down, norm, up } => up.forward(norm.forward(down.forward(x).view()).view()),
        }
    }
    fn out_dim(&self) -> usize {
        match self {
            QueryProjection::Direct(w) => w.out_dim(),
            QueryProjection::LowRank { up, .. } => up.out_dim(),
        }
    }
    fn in_dim(&self) -> usize {
        match self {
            QueryProjection::Direct(w) => w.in_dim(),
            QueryProjection::LowRank { down, .. } => down.in_dim(),
        }
    }
    /// The projection restricted to output rows `rows` (the low-rank down-projection stays whole).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        match self {
            QueryProjection::Direct(w) => QueryProjection::Direct(w.rows(rows)),
            QueryProjection::LowRank { down, norm, up } => QueryProjection::LowRank {
                down: down.clone(),
                norm: norm.clone(),
                up: up.rows(rows),
            },
        }
    }
    pub fn rounded<U: Real>(&self, r: DType) -> QueryProjection<U> {
        match self {
            QueryProjection::Direct(w) => QueryProjection::Direct(w.rounded(r)),
            QueryProjection::LowRank { down, norm, up } => QueryProjection::LowRank {
                down: down.rounded(r),
                norm: norm.rounded(r),
                up: up.rounded(r),
            },
        }
    }
}

/// Per-head queries after RoPE: no-rope part [s, H, d_n] and rope part [s, H, d_r].
#[derive(Clone, Debug, PartialEq)]
pub struct Queries<T> {
    pub nope: Array3<T>,
    pub rope: Array3<T>,
}

/// Weights of one MLA/GQLA attention layer (MLA is G = H).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentWeights<T> {
    dims: LatentDims,
    hidden: usize,
    pub(crate) query: QueryProjection<T>,
    /// `kv_a_proj_with_mqa`: [d_c + d_r, hidden]; rows ..d_c are W^{DKV}, rows d_c.. are W^{KR}.
    pub(crate) kv_a: Linear<T>,
    pub(crate) kv_norm: Option<RmsNorm<T>>,
    /// `kv_b_proj`: [G(d_n + d_v), d_c].
    pub(crate) kv_b: Array2<T>,
    pub(crate) o_proj: Linear<T>,
    rope: Rope,
    scale: f64,
    /// Keys older than this many positions are masked (Mistral-style); None: full causal.
    sliding_window: Option<usize>,
}

/// An MLA/GQLA layer's projections, by name (their shapes are checked by [`LatentWeights::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentProjections<T> {
    /// (Q): the query projection [H·(d_n + d_r), hidden], direct or low-rank.
    pub query: QueryProjection<T>,
    /// (L1), (L2): kv_a_proj_with_mqa [d_c + d_r, hidden], the latent then the rope key.
    pub kv_a: Linear<T>,
    /// The latent's RMSNorm (kv_a_layernorm [d_c]), if any.
    pub kv_norm: Option<RmsNorm<T>>,
    /// [W^UK_g; W^UV_g] per group: kv_b_proj [G·(d_n + d_v), d_c].
    pub kv_b: Array2<T>,
    /// (O): o_proj [hidden, H·d_v].
    pub o_proj: Linear<T>,
}

impl<T: Real> LatentWeights<T> {
    /// Checks every shape against `dims` once; `scale` None means 1/sqrt(d_n + d_r).
    pub fn new(dims: LatentDims, projections: LatentProjections<T>, rope: Rope, scale: Option<f64>) -> Result<Self> {
        let LatentProjections {
            query,
            kv_a,
            kv_norm,
            kv_b,
            o_proj,
        } = projections;
        let hidden = kv_a.in_dim();
        let (h, g) = (dims.h(), dims.g());
        let check = |what: &str, expected: Vec<usize>, got: Vec<usize>| -> Result<()> {
            if expected == got {
                Ok(())
            } else {
                Err(Error::ShapeMismatch {
                    what: what.into(),
                    expected,
                    got,
                })
            }
        };
        check(
            "query projection [H(d_n+d_r), hidden]",
            vec![h * dims.qk_dim(), hidden],
            vec![query.out_dim(), query.in_dim()],
        )?;
        check(
            "kv_a_proj_with_mqa [d_c+d_r, hidden]",
            vec![dims.d_c() + dims.d_r(), hidden],
            vec![kv_a.out_dim(), hidden],
        )?;
        if let Some(n) = &kv_norm {
            check("kv_a_layernorm [d_c]", vec![dims.d_c()], n.weight.shape().to_vec())?;
        }
        check(
            "kv_b_proj [G(d_n+d_v), d_c]",
            vec![g * (dims.d_n() + dims.d_v()), dims.d_c()],
            kv_b.shape().to_vec(),
        )?;
        check(
            "o_proj [hidden, H d_v]",
            vec![hidden, h * dims.d_v()],
            o_proj.weight.shape().to_vec(),
        )?;
        check("RoPE dim = d_r", vec![dims.d_r()], vec![rope.dim()])?;
        let scale = scale.unwrap_or_else(|| dims.default_scale());
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::SoftmaxScale { scale });
        }
        Ok(Self {
            dims,
            hidden,
            query,
            kv_a,
            kv_norm,
            kv_b,
            o_proj,
            rope,
            scale,
            sliding_window: None,
        })
    }

    pub fn dims(&self) -> LatentDims {
        self.dims
    }
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    pub fn rope(&self) -> &Rope {
        &self.rope
    }
    pub fn sliding_window(&self) -> Option<usize> {
        self.sliding_window
    }
    /// The same layer with a sliding attention window (query t sees keys t − w < u ≤ t).
    pub fn with_sliding_window(mut self, window: Option<usize>) -> Result<Self> {
        if window == Some(0) {
            return Err(GeometryError::NotPositive { name: "sliding_window" }.into());
        }
        self.sliding_window = window;
        Ok(self)
    }
    pub fn scale(&self) -> f64 {
        self.scale
    }
    pub fn query_projection(&self) -> &QueryProjection<T> {
        &self.query
    }
    pub fn kv_a(&self) -> &Linear<T> {
        &self.kv_a
    }
    pub fn kv_norm(&self) -> Option<&RmsNorm<T>> {
        self.kv_norm.as_ref()
    }
    pub fn kv_b(&self) -> ArrayView2<'_, T> {
        self.kv_b.view()
    }
    pub fn o_proj(&self) -> &Linear<T> {
        &self.o_proj
    }

    /// W^{UK}_g: [d_n, d_c].
    pub fn w_uk(&self, g: usize) -> ArrayView2<'_, T> {
        let r = g * (self.dims.d_n() + self.dims.d_v());
        self.kv_b.slice(s![r..r + self.dims.d_n(), ..])
    }
    /// [W^{UK}_g; W^{UV}_g]: [d_n + d_v, d_c], group g's rows of `kv_b_proj`.
    pub fn w_ukv(&self, g: usize) -> ArrayView2<'_, T> {
        let per = self.dims.d_n() + self.dims.d_v();
        self.kv_b.slice(s![g * per..(g + 1) * per, ..])
    }
    /// W^{UV}_g: [d_v, d_c].
    pub fn w_uv(&self, g: usize) -> ArrayView2<'_, T> {
        let r = g * (self.dims.d_n() + self.dims.d_v()) + self.dims.d_n();
        self.kv_b.slice(s![r..r + self.dims.d_v(), ..])
    }

    /// (L1) c_t = N(W^{DKV} x_t) for rows x [s, hidden]: returns [s, d_c].
    pub fn latent(&self, x: ArrayView2<T>) -> Array2<T> {
        self.normed_latent(self.kv_a.forward_rows(x, 0..self.dims.d_c()).view())
    }

    /// (L2) k^R_t = RoPE(W^{KR} x_t, t) for rows at positions start.. : returns [s, d_r].
    pub fn rope_key(&self, x: ArrayView2<T>, start: usize) -> Array2<T> {
        let d_c = self.dims.d_c();
        self.rotated_key(self.kv_a.forward_rows(x, d_c..d_c + self.dims.d_r()), start)
    }

    /// (L1) and (L2) from one product with `kv_a_proj_with_mqa`: ([s, d_c], [s, d_r]).
    pub fn latent_and_rope_key(&self, x: ArrayView2<T>, start: usize) -> (Array2<T>, Array2<T>) {
        let kv = self.kv_a.forward(x);
        let d_c = self.dims.d_c();
        let c = self.normed_latent(kv.slice(s![.., ..d_c]));
        (c, self.rotated_key(kv.slice(s![.., d_c..]).to_owned(), start))
    }

    /// N of (L1) on W^{DKV} x rows.
    fn normed_latent(&self, c: ArrayView2<T>) -> Array2<T> {
        match &self.kv_norm {
            Some(n) => n.forward(c),
            None => c.to_owned(),
        }
    }

    /// RoPE of (L2) on W^{KR} x rows at positions start..
    fn rotated_key(&self, mut k: Array2<T>, start: usize) -> Array2<T> {
        for (t, mut row) in k.axis_iter_mut(Axis(0)).enumerate() {
            self.rope.apply(row.view_mut(), start + t);
        }
        k
    }

    /// (Q) per-head queries for rows at positions start.., RoPE applied to q^R.
    pub fn queries(&self, x: ArrayView2<T>, start: usize) -> Queries<T> {
        let heads = self.query.out_dim() / self.dims.qk_dim();
        let q = self.query.forward(x);
        let q = q
            .to_shape((x.nrows(), heads, self.dims.qk_dim()))
            .expect("query rows reshape")
            .into_owned();
        let nope = q.slice(s![.., .., ..self.dims.d_n()]).to_owned();
        let mut rope = q.slice(s![.., .., self.dims.d_n()..]).to_owned();
        for (t, mut tok) in rope.axis_iter_mut(Axis(0)).enumerate() {
            for mut head in tok.axis_iter_mut(Axis(0)) {
                self.rope.apply(head.view_mut(), start + t);
            }
        }
        Queries { nope, rope }
    }

    /// (O) y = W^O [o_1; …; o_H] + b^O for o [s, H, d_v]: returns [s, hidden].
    pub fn output(&self, o: &Array3<T>) -> Array2<T> {
        let (s_q, h, d_v) = o.dim();
        let flat = o.to_shape((s_q, h * d_v)).expect("contiguous heads");
        self.o_proj.forward(flat.view())
    }

    /// The same weights under a new geometry, after a transform changed d_c (a truncating PCA):
    /// the shapes are checked again, as [`LatentWeights::new`] checks them.
    pub fn with_dims(self, dims: LatentDims) -> Result<Self> {
        let Self {
            query,
            kv_a,
            kv_norm,
            kv_b,
            o_proj,
            rope,
            scale,
            sliding_window,
            ..
        } = self;
        let projections = LatentProjections {
            query,
            kv_a,
            kv_norm,
            kv_b,
            o_proj,
        };
        Self::new(dims, projections, rope, Some(scale))?.with_sliding_window(sliding_window)
    }
    /// The latent's coordinates rescaled, c_j ← c_j / s_j, and the up-projections' columns by s_j:
    /// W^UKV c is unchanged, so this is the same layer (TransGQLA's balancing, T4). Refused under
    /// a latent RMSNorm, which does not commute with the rescaling.
    pub fn rescale_latent(&self, s: &[T]) -> Result<Self> {
        let d_c = self.dims.d_c();
        self.linear_latent("rescale_latent", s.len(), d_c)?;
        let mut out = self.clone();
        for (j, &sj) in s.iter().enumerate() {
            out.kv_a.weight.row_mut(j).mapv_inplace(|v| v / sj);
            if let Some(b) = out.kv_a.bias.as_mut() {
                b[j] /= sj;
            }
            out.kv_b.column_mut(j).mapv_inplace(|v| v * sj);
        }
        Ok(out)
    }
    /// The latent projected onto the orthonormal columns of `r` [d_c, d_c']: c ← rᵀ c and
    /// W^UKV ← W^UKV r, with d_c' = r's columns. The same layer for latents in r's span, a
    /// truncating PCA otherwise (TransGQLA's joint PCA, T5). Refused under a latent RMSNorm.
    pub fn project_latent(&self, r: ArrayView2<T>) -> Result<Self> {
        let d = self.dims;
        self.linear_latent("project_latent", r.nrows(), d.d_c())?;
        let mut out = self.clone();
        let latent_rows = r.t().dot(&self.kv_a.weight.slice(s![..d.d_c(), ..]));
        out.kv_a.weight =
            ndarray::concatenate(Axis(0), &[latent_rows.view(), self.kv_a.weight.slice(s![d.d_c().., ..])]).expect("the same columns");
        if let Some(b) = &self.kv_a.bias {
            let latent_b = r.t().dot(&b.slice(s![..d.d_c()]));
            out.kv_a.bias = Some(ndarray::concatenate(Axis(0), &[latent_b.view(), b.slice(s![d.d_c()..])]).expect("one axis"));
        }
        out.kv_b = self.kv_b.dot(&r);
        out.with_dims(LatentDims::new(LatentShape {
            d_c: r.ncols(),
            ..d.shape()
        })?)
    }
    /// A latent transform needs `len` = d_c coordinates and no latent RMSNorm.
    fn linear_latent(&self, what: &str, len: usize, d_c: usize) -> Result<()> {
        if len != d_c {
            return Err(Error::ShapeMismatch {
                what: format!("{what}: the latent's coordinates"),
                expected: vec![d_c],
                got: vec![len],
            });
        }
        if self.kv_norm.is_some() {
            return Err(Error::NonLinearLatent { what: what.to_string() });
        }
        Ok(())
    }
    /// Multiply the queries by `s` (q ← s·q): the weight and bias of the query projection's
    /// last linear map are scaled.
    pub fn scale_queries(&mut self, s: T) {
        let up = match &mut self.query {
            QueryProjection::Direct(l) => l,
            QueryProjection::LowRank { up, .. } => up,
        };
        up.weight.mapv_inplace(|v| v * s);
        if let Some(b) = up.bias.as_mut() {
            b.mapv_inplace(|v| v * s);
        }
    }
    /// The same weights with softmax scale `scale` (positive and finite, as in [`LatentWeights::new`]).
    pub fn with_scale(mut self, scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::SoftmaxScale { scale });
        }
        self.scale = scale;
        Ok(self)
    }

    /// Repeat each group's up-projection H/G times: the equivalent MLA layer (G = H).
    pub fn expand_groups_to_heads(&self) -> Self {
        let per = self.dims.d_n() + self.dims.d_v();
        let mut kv_b = Array2::zeros((self.dims.h() * per, self.dims.d_c()));
        for i in 0..self.dims.h() {
            let g = self.dims.group_of(i);
            kv_b.slice_mut(s![i * per..(i + 1) * per, ..])
                .assign(&self.kv_b.slice(s![g * per..(g + 1) * per, ..]));
        }
        Self {
            dims: self.dims.as_mla(),
            kv_b,
            ..self.clone()
        }
    }

    /// The same weights in another precision.
    pub fn cast<U: Real>(&self) -> LatentWeights<U> {
        self.rounded(DType::F64)
    }

    /// The weights in precision `U`, every parameter first rounded by `r` (bf16/f16 checkpoints).
    pub fn rounded<U: Real>(&self, r: DType) -> LatentWeights<U> {
        LatentWeights {
            dims: self.dims,
            hidden: self.hidden,
            query: self.query.rounded(r),
            kv_a: self.kv_a.rounded(r),
            kv_norm: self.kv_norm.as_ref().map(|n| n.rounded(r)),
            kv_b: crate::real::round_cast(&self.kv_b, r),
            o_proj: self.o_proj.rounded(r),
            rope: self.rope.clone(),
            scale: self.scale,
            sliding_window: self.sliding_window,
        }
    }

    /// A rank's view (TP): only `heads` of the query and W^O, only `groups` of kv_b, same dims
    /// except H and G. The output bias is kept only when `keep_output_bias` (added once after the
    /// all-reduce).
    pub(crate) fn shard(&self, groups: std::ops::Range<usize>, keep_output_bias: bool) -> Result<Self> {
        let d = self.dims;
        let hpg = d.heads_per_group();
        let heads = groups.start * hpg..groups.end * hpg;
        let per = d.d_n() + d.d_v();
        let dims = LatentDims::new(LatentShape {
            h: heads.len(),
            g: groups.len(),
            ..d.shape()
        })?;
        let o_w = self
            .o_proj
            .weight
            .slice(s![.., heads.start * d.d_v()..heads.end * d.d_v()])
            .to_owned();
        let o_b = if keep_output_bias { self.o_proj.bias.clone() } else { None };
        Ok(Self {
            dims,
            hidden: self.hidden,
            query: self.query.rows(heads.start * d.qk_dim()..heads.end * d.qk_dim()),
            kv_a: self.kv_a.clone(),
            kv_norm: self.kv_norm.clone(),
            kv_b: self.kv_b.slice(s![groups.start * per..groups.end * per, ..]).to_owned(),
            o_proj: Linear::new(o_w, o_b),
            rope: self.rope.clone(),
            scale: self.scale,
            sliding_window: self.sliding_window,
        })
    }
}
