//! Random HF LLaMA checkpoints of any geometry, for tests and benchmarks.

use super::names::{self, MlpPath, MlpProj, Module};
use gqla_files::tensors::{write_tensors, RawTensor};
use gqla_reference::dtype::DType;
use gqla_reference::error::{Error, Result};
use gqla_reference::random::Sampler;
use std::path::Path;

/// The shape of a LLaMA model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaGeometry {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub layers: usize,
}

impl LlamaGeometry {
    /// LLaMA-3-8B's attention geometry (hidden 4096, 32/8 heads, head dim 128, MLP 14336) with
    /// `layers` layers and a small vocabulary.
    pub fn llama3_8b(layers: usize) -> Self {
        Self {
            hidden: 4096,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 14336,
            vocab: 1024,
            layers,
        }
    }
}

/// Write a random bf16 LLaMA checkpoint (config.json + model.safetensors) to `dir`. Projections
/// have unit-variance outputs; queries are scaled so that logits are far from uniform.
pub fn write_random_llama(dir: &Path, g: LlamaGeometry, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    let mut s = Sampler::new(seed);
    let mut tensors: Vec<(String, RawTensor)> = Vec::new();
    let mut mat = |name: String, rows: usize, cols: usize, gain: f64| {
        let w = s.normal((rows, cols), gain / (cols as f64).sqrt());
        tensors.push((name, RawTensor::encode(DType::Bf16, vec![rows, cols], w.iter().copied())));
    };
    mat(names::EMBED_TOKENS.into(), g.vocab, g.hidden, (g.hidden as f64).sqrt());
    mat(names::LM_HEAD.into(), g.vocab, g.hidden, 1.0);
    for l in 0..g.layers {
        mat(Module::QProj.weight(l), g.heads * g.head_dim, g.hidden, 3.0);
        mat(Module::KProj.weight(l), g.kv_heads * g.head_dim, g.hidden, 1.0);
        mat(Module::VProj.weight(l), g.kv_heads * g.head_dim, g.hidden, 1.0);
        mat(Module::OProj.weight(l), g.hidden, g.heads * g.head_dim, 1.0);
        let mlp = |p: MlpProj| format!("{}.{}.weight", names::layer(l), p.path(MlpPath::Dense));
        mat(mlp(MlpProj::Gate), g.intermediate, g.hidden, 1.0);
        mat(mlp(MlpProj::Up), g.intermediate, g.hidden, 1.0);
        mat(mlp(MlpProj::Down), g.hidden, g.intermediate, 1.0);
    }
    let ones = |n: usize| RawTensor::encode(DType::Bf16, vec![n], std::iter::repeat_n(1.0, n));
    tensors.push((names::FINAL_NORM.into(), ones(g.hidden)));
    for l in 0..g.layers {
        tensors.push((Module::InputNorm.weight(l), ones(g.hidden)));
        tensors.push((Module::PostAttentionNorm.weight(l), ones(g.hidden)));
    }
    write_tensors(&dir.join("model.safetensors"), tensors.iter().map(|(n, t)| (n.as_str(), t)), None)?;
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": g.hidden, "intermediate_size": g.intermediate, "num_hidden_layers": g.layers,
        "num_attention_heads": g.heads, "num_key_value_heads": g.kv_heads, "head_dim": g.head_dim, "vocab_size": g.vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192, "torch_dtype": "bfloat16",
        "tie_word_embeddings": false
    });
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).map_err(|e| Error::file(&path, format!("cannot write: {e}")))
}
