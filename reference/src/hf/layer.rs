//! One layer's attention weights from a checkpoint, as reference types in f64.

use super::config::{AttentionConfig, GqaConfig, LatentConfig, ModelConfig};
use super::tensors::TensorStore;
use crate::error::{Error, Result};
use crate::gqa::GqaWeights;
use crate::latent::{LatentWeights, QueryProjection};
use crate::linear::{Linear, RmsNorm};
use crate::rope::RopeStyle;
use std::path::Path;

/// A loaded attention layer.
#[derive(Clone, Debug)]
pub enum Layer {
    Gqa(GqaWeights<f64>),
    Latent(LatentWeights<f64>),
}

struct Loader<'a> {
    store: &'a TensorStore,
    prefix: String,
}

impl Loader<'_> {
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
pub fn load_layer(dir: &Path, layer: usize) -> Result<(ModelConfig, Layer)> {
    let config = ModelConfig::load(dir)?;
    if layer >= config.num_layers {
        return Err(Error::file(
            &config.path,
            format!("layer {layer} requested, but num_hidden_layers = {}", config.num_layers),
        ));
    }
    let store = TensorStore::open(dir)?;
    let l = Loader {
        store: &store,
        prefix: format!("model.layers.{layer}.self_attn"),
    };
    let loaded = match &config.attention {
        AttentionConfig::Gqa(c) => Layer::Gqa(gqa(&l, c, &config, layer)?),
        AttentionConfig::Latent(c) => Layer::Latent(latent(&l, c, &config)?),
    };
    Ok((config, loaded))
}

fn gqa(l: &Loader, c: &GqaConfig, config: &ModelConfig, layer: usize) -> Result<GqaWeights<f64>> {
    let hidden = config.hidden_size;
    let rope = c.rope.build(&config.path, RopeStyle::RotateHalf, c.dims.d())?;
    let (h, kv, d) = (c.dims.h(), c.dims.kv(), c.dims.d());
    let q = l.linear("q_proj", h * d, hidden, c.qkv_bias)?;
    let k = l.linear("k_proj", kv * d, hidden, c.qkv_bias)?;
    let v = l.linear("v_proj", kv * d, hidden, c.qkv_bias)?;
    let o = l.linear("o_proj", hidden, h * d, c.o_bias)?;
    GqaWeights::new(c.dims, q, k, v, o, rope, c.sliding_window[layer], None)
}

fn latent(l: &Loader, c: &LatentConfig, config: &ModelConfig) -> Result<LatentWeights<f64>> {
    let d = c.dims;
    let hidden = config.hidden_size;
    let style = if c.interleaved_rope {
        RopeStyle::Interleaved
    } else {
        RopeStyle::RotateHalf
    };
    let rope = c.rope.build(&config.path, style, d.d_r())?;
    let q_out = d.h() * d.qk_dim();
    let query = match c.q_lora_rank {
        None => QueryProjection::Direct(l.linear("q_proj", q_out, hidden, false)?),
        Some(r) => QueryProjection::LowRank {
            down: l.linear("q_a_proj", r, hidden, c.bias)?,
            norm: l.norm("q_a_layernorm", r, c.rms_norm_eps)?,
            up: l.linear("q_b_proj", q_out, r, false)?,
        },
    };
    let kv_a = l.linear("kv_a_proj_with_mqa", d.d_c() + d.d_r(), hidden, c.bias)?;
    let kv_norm = Some(l.norm("kv_a_layernorm", d.d_c(), c.rms_norm_eps)?);
    let kv_b = l.linear("kv_b_proj", d.g() * (d.d_n() + d.d_v()), d.d_c(), false)?.weight;
    let o = l.linear("o_proj", hidden, d.h() * d.d_v(), c.bias)?;
    let scale = d.default_scale() * c.rope.deepseek_softmax_factor();
    LatentWeights::new(d, query, kv_a, kv_norm, kv_b, o, rope, Some(scale))
}
