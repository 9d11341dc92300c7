//! Whole decoder layers and the LM head, HF LLaMA/DeepSeek (dense) semantics, for calibration and
//! whole-model checks.
//!
//! - (D1) h ← h + Attn(RMSNorm_in(h));
//! - (D2) h ← h + W_down (silu(W_gate u) ⊙ W_up u), u = RMSNorm_post(h);
//! - (D3) logits = W_lm RMSNorm_final(h).

use crate::decode::DecodeOutput;
use crate::error::Result;
use crate::gqa::GqaWeights;
use crate::latent::LatentWeights;
use crate::linear::{Linear, RmsNorm};
use crate::prefill::prefill;
use crate::real::Real;
use ndarray::{Array1, Array2, ArrayView2};

/// A layer's self-attention, of either family.
#[derive(Clone, Debug)]
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
        Mlp { gate: self.gate.cast(), up: self.up.cast(), down: self.down.cast() }
    }

    /// W_down (silu(W_gate u) ⊙ W_up u), silu(z) = z / (1 + e^{−z}).
    pub fn forward(&self, u: ArrayView2<T>) -> Array2<T> {
        let mut g = self.gate.forward(u);
        g.mapv_inplace(|z| z / (T::one() + (-z).exp()));
        let a = g * self.up.forward(u);
        self.down.forward(a.view())
    }
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer<T> {
    pub input_norm: RmsNorm<T>,
    pub attention: Attention<T>,
    pub post_norm: RmsNorm<T>,
    pub mlp: Mlp<T>,
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
        DecoderLayer { input_norm: self.input_norm.cast(), attention: self.attention.cast(), post_norm: self.post_norm.cast(), mlp: self.mlp.cast() }
    }

    /// (D1), (D2) for hidden states h [T, hidden] at positions 0..T.
    pub fn forward(&self, h: ArrayView2<T>) -> Result<LayerTrace<T>> {
        self.forward_with(&self.attention, h)
    }

    /// The layer with its self-attention replaced by `attention` (a converted one), the rest shared.
    pub fn forward_with(&self, attention: &Attention<T>, h: ArrayView2<T>) -> Result<LayerTrace<T>> {
        let attention_input = self.input_norm.forward(h);
        let attention_output = attention.prefill(attention_input.view())?.y;
        let mid = &h + &attention_output;
        let output = &mid + &self.mlp.forward(self.post_norm.forward(mid.view()).view());
        Ok(LayerTrace {
            attention_input,
            attention_output,
            output,
        })
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
}

/// Embeddings of `ids` read straight from a checkpoint, decoding only those rows.
pub fn embed_rows(store: &crate::hf::TensorStore, config: &crate::hf::ModelConfig, ids: &[u32]) -> Result<Array2<f64>> {
    let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
    store.get_rows("model.embed_tokens.weight", config.vocab_size, config.hidden_size, &rows)
}

/// Rows of the embedding table for `ids`.
pub fn embed(table: &Array2<f64>, ids: &[u32]) -> Array2<f64> {
    table.select(ndarray::Axis(0), &ids.iter().map(|&i| i as usize).collect::<Vec<_>>())
}

/// Mean over rows of KL(p ‖ q) between softmax(logits_p) and softmax(logits_q), in nats.
pub fn mean_kl(logits_p: &Array2<f64>, logits_q: &Array2<f64>) -> f64 {
    let log_softmax = |row: ndarray::ArrayView1<f64>| -> Array1<f64> {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let z = row.mapv(|v| (v - m).exp()).sum().ln() + m;
        row.mapv(|v| v - z)
    };
    let n = logits_p.nrows();
    let total: f64 = (0..n)
        .map(|r| {
            let (lp, lq) = (log_softmax(logits_p.row(r)), log_softmax(logits_q.row(r)));
            lp.iter().zip(lq.iter()).map(|(a, b)| a.exp() * (a - b)).sum::<f64>()
        })
        .sum();
    total / n.max(1) as f64
}
