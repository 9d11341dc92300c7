//! Whole decoder layers and the LM head, HF LLaMA/DeepSeek (dense) semantics, for calibration and
//! whole-model checks.
//!
//! - (D1) h ← h + Attn(RMSNorm_in(h));
//! - (D2) h ← h + F(u), u = RMSNorm_post(h), F a SwiGLU MLP W_down (silu(W_gate u) ⊙ W_up u) or a
//!   mixture of experts (D4);
//! - (D3) logits = W_lm RMSNorm_final(h);
//! - (D4) MoE (DeepSeek-V2/V3, GLM-4.7-Flash): s = σ(W_r u) (sigmoid, V3) or softmax(W_r u) (V2);
//!   experts chosen by top-k of s + b (b a selection-only bias), within the best `topk_group` of
//!   `n_group` groups (group score: sum of its top 2 (V3) or its max (V2)); weights
//!   w = `s[chosen]`, normalised when asked, times `routed_scaling_factor`;
//!   F(u) = Σ_k w_k E_k(u) + S(u), S the shared experts.

use gqla_reference::decode::DecodeOutput;
use gqla_reference::error::Result;
use gqla_reference::gqa::GqaWeights;
use gqla_reference::latent::LatentWeights;
use gqla_reference::linear::{Linear, RmsNorm};
use gqla_reference::prefill::prefill;
use gqla_reference::real::Real;
use ndarray::{Array1, Array2, ArrayView2};

/// A layer's self-attention, of either family.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer; the weights themselves are on the heap
pub enum Attention<T> {
    Gqa(GqaWeights<T>),
    Latent(LatentWeights<T>),
}

impl<T: Real> Attention<T> {
    pub fn cast<U: Real>(&self) -> Attention<U> {
        match self {
            Attention::Gqa(w) => Attention::Gqa(w.cast()),
            Attention::Latent(w) => Attention::Latent(w.cast()),
        }
    }

    /// Causal self-attention of x [T, hidden] at positions 0..T.
    pub fn prefill(&self, x: ArrayView2<T>) -> Result<DecodeOutput<T>> {
        match self {
            Attention::Gqa(w) => w.prefill(x),
            Attention::Latent(w) => prefill(w, x),
        }
    }
}

/// The SwiGLU MLP.
#[derive(Clone, Debug)]
pub struct Mlp<T> {
    pub gate: Linear<T>,
    pub up: Linear<T>,
    pub down: Linear<T>,
}

impl<T: Real> Mlp<T> {
    pub fn cast<U: Real>(&self) -> Mlp<U> {
        Mlp {
            gate: self.gate.cast(),
            up: self.up.cast(),
            down: self.down.cast(),
        }
    }

    /// W_down (silu(W_gate u) ⊙ W_up u), silu(z) = z / (1 + e^{−z}).
    pub fn forward(&self, u: ArrayView2<T>) -> Array2<T> {
        let mut g = self.gate.forward(u);
        g.mapv_inplace(|z| z / (T::one() + (-z).exp()));
        let a = g * self.up.forward(u);
        self.down.forward(a.view())
    }
}

/// How the router scores experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// softmax over experts (DeepSeek-V2).
    Softmax,
    /// Elementwise sigmoid (DeepSeek-V3, GLM-4.7-Flash).
    Sigmoid,
}

/// How a group of experts is scored for group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// No group limit (V2 `greedy`).
    None,
    /// The group's best expert (V2 `group_limited_greedy`).
    Max,
    /// The sum of the group's two best experts (V3).
    SumTop2,
}

/// Routing settings of a mixture-of-experts block.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub scoring: Scoring,
    pub group_score: GroupScore,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
}

/// A mixture of experts with shared experts.
#[derive(Clone, Debug)]
pub struct Moe<T> {
    pub router: Array2<T>,
    /// Added to the scores for expert selection only (V3 `e_score_correction_bias`).
    pub selection_bias: Option<Array1<T>>,
    pub routing: Routing,
    pub experts: Vec<Mlp<T>>,
    pub shared: Option<Mlp<T>>,
}

impl<T: Real> Moe<T> {
    /// The experts and weights token u is routed to (D4).
    pub fn route(&self, u: ndarray::ArrayView1<T>) -> Vec<(usize, T)> {
        let r = &self.routing;
        let logits = self.router.dot(&u);
        let scores: Array1<T> = match r.scoring {
            Scoring::Sigmoid => logits.mapv(|z| T::one() / (T::one() + (-z).exp())),
            Scoring::Softmax => {
                let m = logits.fold(T::neg_infinity(), |a, &b| a.max(b));
                let e = logits.mapv(|z| (z - m).exp());
                let z = e.sum();
                e.mapv(|v| v / z)
            }
        };
        let mut choice = match &self.selection_bias {
            Some(b) => &scores + b,
            None => scores.clone(),
        };
        let n = choice.len();
        if r.group_score != GroupScore::None && r.n_group > 1 {
            let per = n / r.n_group;
            let group_scores: Vec<T> = (0..r.n_group)
                .map(|g| {
                    let mut v: Vec<T> = choice.slice(ndarray::s![g * per..(g + 1) * per]).to_vec();
                    v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
                    match r.group_score {
                        GroupScore::Max => v[0],
                        _ => v.iter().take(2).copied().sum(),
                    }
                })
                .collect();
            let kept = top_indices(&group_scores, r.topk_group);
            for g in (0..r.n_group).filter(|g| !kept.contains(g)) {
                choice.slice_mut(ndarray::s![g * per..(g + 1) * per]).fill(T::neg_infinity());
            }
        }
        let chosen = top_indices(choice.as_slice().expect("contiguous"), r.top_k);
        let mut weights: Vec<T> = chosen.iter().map(|&e| scores[e]).collect();
        if r.norm_topk_prob {
            let z = weights.iter().copied().sum::<T>() + T::of(1e-20);
            weights.iter_mut().for_each(|w| *w /= z);
        }
        chosen
            .into_iter()
            .zip(weights)
            .map(|(e, w)| (e, w * T::of(r.routed_scaling_factor)))
            .collect()
    }

    /// F(u) for rows u [T, hidden].
    pub fn forward(&self, u: ArrayView2<T>) -> Array2<T> {
        let mut out = match &self.shared {
            Some(s) => s.forward(u),
            None => Array2::zeros(u.raw_dim()),
        };
        for (t, row) in u.outer_iter().enumerate() {
            for (e, w) in self.route(row) {
                let y = self.experts[e].forward(row.insert_axis(ndarray::Axis(0)));
                out.row_mut(t).scaled_add(w, &y.row(0));
            }
        }
        out
    }

    pub fn cast<U: Real>(&self) -> Moe<U> {
        Moe {
            router: self.router.mapv(|v| U::of(v.f64())),
            selection_bias: self.selection_bias.as_ref().map(|b| b.mapv(|v| U::of(v.f64()))),
            routing: self.routing.clone(),
            experts: self.experts.iter().map(Mlp::cast).collect(),
            shared: self.shared.as_ref().map(Mlp::cast),
        }
    }
}

/// Indices of the `k` largest values (ties: lower index first).
fn top_indices<T: Real>(v: &[T], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// A layer's feed-forward block.
#[derive(Clone, Debug)]
pub enum FeedForward<T> {
    Dense(Mlp<T>),
    Moe(Moe<T>),
}

impl<T: Real> FeedForward<T> {
    pub fn forward(&self, u: ArrayView2<T>) -> Array2<T> {
        match self {
            FeedForward::Dense(m) => m.forward(u),
            FeedForward::Moe(m) => m.forward(u),
        }
    }
    pub fn cast<U: Real>(&self) -> FeedForward<U> {
        match self {
            FeedForward::Dense(m) => FeedForward::Dense(m.cast()),
            FeedForward::Moe(m) => FeedForward::Moe(m.cast()),
        }
    }
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer<T> {
    pub input_norm: RmsNorm<T>,
    pub attention: Attention<T>,
    pub post_norm: RmsNorm<T>,
    pub mlp: FeedForward<T>,
}

/// A layer's output and what reached its attention.
#[derive(Clone, Debug)]
pub struct LayerTrace<T> {
    /// RMSNorm_in(h): the hidden states entering self-attention.
    pub attention_input: Array2<T>,
    /// The self-attention output.
    pub attention_output: Array2<T>,
    /// The layer's output hidden states.
    pub output: Array2<T>,
}

impl<T: Real> DecoderLayer<T> {
    /// The layer in another precision (f32 for fast calibration passes).
    pub fn cast<U: Real>(&self) -> DecoderLayer<U> {
        DecoderLayer {
            input_norm: self.input_norm.cast(),
            attention: self.attention.cast(),
            post_norm: self.post_norm.cast(),
            mlp: self.mlp.cast(),
        }
    }

    /// (D1), (D2) for hidden states h [T, hidden] at positions 0..T.
    pub fn forward(&self, h: ArrayView2<T>) -> Result<LayerTrace<T>> {
        self.forward_with(&self.attention, h)
    }

    /// The layer with its self-attention replaced by `attention` (a converted one), the rest shared.
    pub fn forward_with(&self, attention: &Attention<T>, h: ArrayView2<T>) -> Result<LayerTrace<T>> {
        Ok(self.forward_sequences(attention, &[h])?.pop().expect("one sequence"))
    }

    /// Several independent sequences (each at positions 0..L): attention per sequence, the
    /// position-free norm and feed-forward on all rows at once (one GEMM instead of one per sequence).
    pub fn forward_sequences(&self, attention: &Attention<T>, hs: &[ArrayView2<T>]) -> Result<Vec<LayerTrace<T>>> {
        let mut parts = Vec::with_capacity(hs.len());
        for h in hs {
            let attention_input = self.input_norm.forward(*h);
            let attention_output = attention.prefill(attention_input.view())?.y;
            parts.push((attention_input, attention_output));
        }
        let mids: Vec<Array2<T>> = hs.iter().zip(&parts).map(|(h, (_, ao))| h + ao).collect();
        let stacked =
            ndarray::concatenate(ndarray::Axis(0), &mids.iter().map(|m| m.view()).collect::<Vec<_>>()).expect("rows share the hidden size");
        let out = &stacked + &self.mlp.forward(self.post_norm.forward(stacked.view()).view());
        let mut start = 0;
        Ok(parts
            .into_iter()
            .zip(hs)
            .map(|((attention_input, attention_output), h)| {
                let rows = start..start + h.nrows();
                start = rows.end;
                LayerTrace {
                    attention_input,
                    attention_output,
                    output: out.slice(ndarray::s![rows, ..]).to_owned(),
                }
            })
            .collect())
    }
}

/// The final norm and LM head (D3).
#[derive(Clone, Debug)]
pub struct LmHead<T> {
    pub norm: RmsNorm<T>,
    pub lm_head: Linear<T>,
}

impl<T: Real> LmHead<T> {
    pub fn logits(&self, h: ArrayView2<T>) -> Array2<T> {
        self.lm_head.forward(self.norm.forward(h).view())
    }
    pub fn cast<U: Real>(&self) -> LmHead<U> {
        LmHead {
            norm: self.norm.cast(),
            lm_head: self.lm_head.cast(),
        }
    }
}

/// Rows of the embedding table for `ids`.
pub fn embed(table: &Array2<f64>, ids: &[u32]) -> Array2<f64> {
    table.select(ndarray::Axis(0), &ids.iter().map(|&i| i as usize).collect::<Vec<_>>())
}
