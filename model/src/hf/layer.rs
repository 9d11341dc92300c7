//! One layer's attention weights from a checkpoint, as reference types in f64.

use super::config::{AttentionConfig, GqaConfig, LatentConfig, ModelConfig};
use super::names::{self, MlpPath, MlpProj, Module};
use super::tensors::TensorStore;
use crate::transformer::{Attention, DecoderLayer, FeedForward, LmHead, Mlp, Moe};
use gqla_reference::error::{Error, Result};
use gqla_reference::gqa::{GqaProjections, GqaWeights};
use gqla_reference::latent::{LatentProjections, LatentWeights, QueryProjection};
use gqla_reference::linear::{Linear, RmsNorm};
use gqla_reference::rope::{Rope, RopeStyle};
use ndarray::Array2;
use std::path::Path;

/// Reads one layer's modules (paths from [`super::names`]) under its prefix.
struct Loader<'a> {
    store: &'a TensorStore,
    prefix: String,
}

impl Loader<'_> {
    fn module(&self, m: Module, out: usize, inp: usize, bias: bool) -> Result<Linear<f64>> {
        self.linear(m.path(), out, inp, bias)
    }
    fn module_norm(&self, m: Module, n: usize, eps: f64) -> Result<RmsNorm<f64>> {
        self.norm(m.path(), n, eps)
    }
    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear<f64>> {
        let w = self.store.get2(&format!("{}.{name}.weight", self.prefix), out, inp)?;
        let b = if bias {
            Some(self.store.get1(&format!("{}.{name}.bias", self.prefix), out)?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }
    fn norm(&self, name: &str, n: usize, eps: f64) -> Result<RmsNorm<f64>> {
        Ok(RmsNorm {
            weight: self.store.get1(&format!("{}.{name}.weight", self.prefix), n)?,
            eps,
        })
    }
}

/// Load layer `layer`'s self-attention from the checkpoint in `dir`.
pub fn load_layer(dir: &Path, layer: usize) -> Result<(ModelConfig, Attention<f64>)> {
    let ckpt = Checkpoint::open(dir)?;
    let loaded = ckpt.attention(layer)?;
    Ok((ckpt.config, loaded))
}

/// An open checkpoint: its config and its (memory-mapped) tensors, read one layer at a time.
pub struct Checkpoint {
    pub config: ModelConfig,
    pub store: TensorStore,
}

impl Checkpoint {
    /// An HF checkpoint directory, or a GGUF model file.
    pub fn open(dir: &Path) -> Result<Self> {
        let store = TensorStore::open(dir)?;
        let config = match store.gguf() {
            Some(g) => ModelConfig::parse(dir, g.config())?,
            None => ModelConfig::load(dir)?,
        };
        Ok(Self { config, store })
    }

    /// Embeddings of `ids` [T, hidden] read straight from the checkpoint, decoding only those
    /// rows of the table.
    pub fn embed_rows(&self, ids: &[u32]) -> Result<ndarray::Array2<f64>> {
        let rows: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        self.store
            .get_rows(names::EMBED_TOKENS, self.config.vocab_size, self.config.hidden_size, &rows)
    }

    /// The model's next-token logits [T, vocab] for token `ids` at positions 0..T, in f64: the
    /// embedding, every decoder layer, the final norm and the LM head.
    pub fn logits(&self, ids: &[u32]) -> Result<ndarray::Array2<f64>> {
        self.logits_in::<f64>(ids, &mut |_| {})
    }

    /// [`Checkpoint::logits`] computed in precision `T` (weights rounded to it); `on_layer` is
    /// called after each layer.
    pub fn logits_in<T: gqla_reference::Real>(&self, ids: &[u32], on_layer: &mut dyn FnMut(usize)) -> Result<ndarray::Array2<f64>> {
        let h = self.final_hidden_in::<T>(&[ids], on_layer)?;
        Ok(self.head()?.cast::<T>().logits(h[0].view()).mapv(|v| v.f64()))
    }

    /// The hidden states entering the final norm, [len, hidden] per sequence of `sequences` (each
    /// at positions 0..len), in precision `T`. Layer-outer: each layer is read and cast once for
    /// all sequences, and the embedding rows are gathered in one read.
    pub fn final_hidden_in<T: gqla_reference::Real>(
        &self,
        sequences: &[&[u32]],
        on_layer: &mut dyn FnMut(usize),
    ) -> Result<Vec<ndarray::Array2<T>>> {
        let all: Vec<u32> = sequences.concat();
        let embedded = self.embed_rows(&all)?;
        let mut start = 0;
        let mut hs: Vec<ndarray::Array2<T>> = sequences
            .iter()
            .map(|s| {
                let rows = start..start + s.len();
                start = rows.end;
                embedded.slice(ndarray::s![rows, ..]).mapv(T::of)
            })
            .collect();
        drop(embedded);
        for i in 0..self.config.num_layers {
            let layer = self.decoder_layer(i)?.cast::<T>();
            let views: Vec<_> = hs.iter().map(|h| h.view()).collect();
            hs = layer
                .forward_sequences(&layer.attention, &views)?
                .into_iter()
                .map(|t| t.output)
                .collect();
            on_layer(i);
        }
        Ok(hs)
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.config.num_layers {
            return Err(Error::file(
                &self.config.path,
                format!("layer {layer} requested, but num_hidden_layers = {}", self.config.num_layers),
            ));
        }
        Ok(())
    }

    /// Layer `layer`'s self-attention.
    pub fn attention(&self, layer: usize) -> Result<Attention<f64>> {
        self.check_layer(layer)?;
        let l = Loader {
            store: &self.store,
            prefix: names::layer(layer),
        };
        Ok(match &self.config.attention {
            AttentionConfig::Gqa(c) => Attention::Gqa(gqa(&l, c, &self.config, layer)?),
            AttentionConfig::Latent(c) => Attention::Latent(latent(&l, c, &self.config)?),
        })
    }

    /// Layer `layer` whole: norms, attention and (dense) MLP.
    pub fn decoder_layer(&self, layer: usize) -> Result<DecoderLayer<f64>> {
        let attention = self.attention(layer)?;
        let (hidden, inter, eps) = (self.config.hidden_size, self.config.intermediate_size, self.config.rms_norm_eps);
        let l = Loader {
            store: &self.store,
            prefix: names::layer(layer),
        };
        let mlp = |at: MlpPath, inter: usize| -> Result<Mlp<f64>> {
            Ok(Mlp {
                gate: l.linear(&MlpProj::Gate.path(at), inter, hidden, false)?,
                up: l.linear(&MlpProj::Up.path(at), inter, hidden, false)?,
                down: l.linear(&MlpProj::Down.path(at), hidden, inter, false)?,
            })
        };
        let feed_forward = match self.config.moe.as_ref().filter(|_| self.config.is_sparse(layer)) {
            None => FeedForward::Dense(mlp(MlpPath::Dense, inter)?),
            Some(m) => FeedForward::Moe(Moe {
                router: self.store.get2(&Module::Router.weight(layer), m.experts, hidden)?,
                selection_bias: if m.selection_bias {
                    Some(self.store.get1(&names::router_bias(layer), m.experts)?)
                } else {
                    None
                },
                routing: m.routing.clone(),
                experts: (0..m.experts)
                    .map(|e| mlp(MlpPath::Expert(e), m.moe_intermediate_size))
                    .collect::<Result<_>>()?,
                shared: if m.shared_experts > 0 {
                    Some(mlp(MlpPath::Shared, m.moe_intermediate_size * m.shared_experts)?)
                } else {
                    None
                },
            }),
        };
        Ok(DecoderLayer {
            input_norm: l.module_norm(Module::InputNorm, hidden, eps)?,
            attention,
            post_norm: l.module_norm(Module::PostAttentionNorm, hidden, eps)?,
            mlp: feed_forward,
        })
    }

    /// The token embedding table [vocab, hidden].
    pub fn embedding(&self) -> Result<Array2<f64>> {
        self.store
            .get2(names::EMBED_TOKENS, self.config.vocab_size, self.config.hidden_size)
    }

    /// The final norm and LM head (the embedding when tied).
    pub fn head(&self) -> Result<LmHead<f64>> {
        let (vocab, hidden) = (self.config.vocab_size, self.config.hidden_size);
        let name = if self.config.tie_word_embeddings {
            names::EMBED_TOKENS
        } else {
            names::LM_HEAD
        };
        Ok(LmHead {
            norm: RmsNorm {
                weight: self.store.get1(names::FINAL_NORM, hidden)?,
                eps: self.config.rms_norm_eps,
            },
            lm_head: Linear::new(self.store.get2(name, vocab, hidden)?, None),
        })
    }
}

fn gqa(l: &Loader, c: &GqaConfig, config: &ModelConfig, layer: usize) -> Result<GqaWeights<f64>> {
    let hidden = config.hidden_size;
    let rope = c.rope.build(&config.path, RopeStyle::RotateHalf, c.dims.d())?;
    let (h, kv, d) = (c.dims.h(), c.dims.kv(), c.dims.d());
    let q = l.module(Module::QProj, h * d, hidden, c.qkv_bias)?;
    let k = l.module(Module::KProj, kv * d, hidden, c.qkv_bias)?;
    let v = l.module(Module::VProj, kv * d, hidden, c.qkv_bias)?;
    let o = l.module(Module::OProj, hidden, h * d, c.o_bias)?;
    GqaWeights::new(c.dims, GqaProjections { q, k, v, o }, rope, c.sliding_window[layer], None)
}

fn latent(l: &Loader, c: &LatentConfig, config: &ModelConfig) -> Result<LatentWeights<f64>> {
    let d = c.dims;
    let hidden = config.hidden_size;
    let style = if c.interleaved_rope {
        RopeStyle::Interleaved
    } else {
        RopeStyle::RotateHalf
    };
    let rope = match &c.rope_freqs {
        Some(freqs) => Rope::new(style, freqs.clone())?,
        None => c.rope.build(&config.path, style, d.d_r())?,
    };
    let q_out = d.h() * d.qk_dim();
    let query = match c.q_lora_rank {
        None => QueryProjection::Direct(l.module(Module::QProj, q_out, hidden, c.q_bias)?),
        Some(r) => QueryProjection::LowRank {
            down: l.module(Module::QAProj, r, hidden, c.q_bias)?,
            norm: l.module_norm(Module::QANorm, r, c.rms_norm_eps)?,
            up: l.module(Module::QBProj, q_out, r, false)?,
        },
    };
    let kv_a = l.module(Module::KvAProj, d.d_c() + d.d_r(), hidden, c.kv_a_bias)?;
    let kv_norm = if c.latent_norm {
        Some(l.module_norm(Module::KvANorm, d.d_c(), c.rms_norm_eps)?)
    } else {
        None
    };
    let kv_b = l.module(Module::KvBProj, d.g() * (d.d_n() + d.d_v()), d.d_c(), false)?.weight;
    let o = l.module(Module::OProj, hidden, d.h() * d.d_v(), c.o_bias)?;
    let scale = d.default_scale() * c.rope.deepseek_softmax_factor();
    let projections = LatentProjections {
        query,
        kv_a,
        kv_norm,
        kv_b,
        o_proj: o,
    };
    LatentWeights::new(d, projections, rope, Some(scale))?.with_sliding_window(c.sliding_window)
}
