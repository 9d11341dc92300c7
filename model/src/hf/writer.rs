//! Writing a converted checkpoint in HF form: the DeepSeek-V3-layout tensor names of a layer,
//! config.json (GQLA or the stock layout), the tokenizer files, and the `trust_remote_code`
//! modeling code a GQLA output ships. The reader is [`crate::hf::config`] and
//! [`crate::hf::tensors`]; the conversion that drives both is [`crate::transgqla::checkpoint`].

use crate::hf::config::{AttentionConfig, ModelConfig};
use crate::hf::gqla_keys::{Conversion, DecodePathKey, GqlaKeys};
use crate::hf::names::{self, Module};
use crate::hf::names::{MlpPath, MlpProj};
use crate::hf::{Checkpoint, TensorStore};
use crate::transformer::{DecoderLayer, FeedForward, Mlp};
use gqla_files::tensors::{safetensors_dtype, RawTensor};
use gqla_reference::dtype::DType;
use gqla_reference::error::{Error, Result};
use gqla_reference::latent::{LatentWeights, QueryProjection};
use gqla_reference::linear::Linear;
use ndarray::{Array2, ArrayViewD};
use serde_json::{json, Value};
use std::path::Path;

/// The layout a conversion writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// GQLA: kv_b_proj per group (`num_key_value_heads` = G), exact; HF transformers loads it
    /// with the shipped `modeling_gqla.py` (`trust_remote_code`).
    #[default]
    Gqla,
    /// The stock DeepSeek-V3 layout ([`crate::transgqla::stock_mla`]): kv_b_proj repeated per head, a latent
    /// RMSNorm; unmodified transformers loads it. Approximate for GQA sources (the norm).
    Mla,
}

pub(crate) fn encode(dtype: DType, a: &Array2<f64>) -> RawTensor {
    RawTensor::encode(dtype, a.shape().to_vec(), a.iter().copied())
}

/// The DeepSeek-V3-layout tensors of layer `i` with its attention converted to `w`. Tensors not in
/// `changed` are copied byte for byte from the source when the output dtype is the stored one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_tensors(
    i: usize,
    source: &TensorStore,
    source_dtype: DType,
    layer: &DecoderLayer<f64>,
    w: &LatentWeights<f64>,
    dtype: DType,
    changed: &[Module],
) -> Result<Vec<(String, RawTensor)>> {
    fn push_linear<'a>(params: &mut Vec<(String, ArrayViewD<'a, f64>)>, name: &str, l: &'a Linear<f64>) {
        params.push((format!("{name}.weight"), l.weight.view().into_dyn()));
        if let Some(b) = &l.bias {
            params.push((format!("{name}.bias"), b.view().into_dyn()));
        }
    }
    let mut params: Vec<(String, ArrayViewD<f64>)> = Vec::new();
    let weight = |m: Module| format!("{}.weight", m.path());
    match w.query_projection() {
        QueryProjection::Direct(q) => push_linear(&mut params, Module::QProj.path(), q),
        QueryProjection::LowRank { down, norm, up } => {
            push_linear(&mut params, Module::QAProj.path(), down);
            params.push((weight(Module::QANorm), norm.weight.view().into_dyn()));
            push_linear(&mut params, Module::QBProj.path(), up);
        }
    }
    push_linear(&mut params, Module::KvAProj.path(), w.kv_a());
    if let Some(n) = w.kv_norm() {
        params.push((weight(Module::KvANorm), n.weight.view().into_dyn()));
    }
    params.push((weight(Module::KvBProj), w.kv_b().into_dyn()));
    push_linear(&mut params, Module::OProj.path(), w.o_proj());
    fn push_mlp<'a>(params: &mut Vec<(String, ArrayViewD<'a, f64>)>, at: MlpPath, m: &'a Mlp<f64>) {
        for (p, l) in MlpProj::ALL.into_iter().zip([&m.gate, &m.up, &m.down]) {
            params.push((format!("{}.weight", p.path(at)), l.weight.view().into_dyn()));
        }
    }
    match &layer.mlp {
        FeedForward::Dense(m) => push_mlp(&mut params, MlpPath::Dense, m),
        FeedForward::Moe(moe) => {
            params.push((weight(Module::Router), moe.router.view().into_dyn()));
            if let Some(b) = &moe.selection_bias {
                params.push((format!("{}.e_score_correction_bias", Module::Router.path()), b.view().into_dyn()));
            }
            for (e, m) in moe.experts.iter().enumerate() {
                push_mlp(&mut params, MlpPath::Expert(e), m);
            }
            if let Some(m) = &moe.shared {
                push_mlp(&mut params, MlpPath::Shared, m);
            }
        }
    }
    params.push((weight(Module::InputNorm), layer.input_norm.weight.view().into_dyn()));
    params.push((weight(Module::PostAttentionNorm), layer.post_norm.weight.view().into_dyn()));
    params
        .into_iter()
        .map(|(name, a)| {
            let full = format!("{}.{name}", names::layer(i));
            let unchanged = !changed.iter().any(|c| name.starts_with(&format!("{}.", c.path())));
            // Unchanged tensors keep their stored bytes when stored in the output dtype, or when stored
            // in a dtype of their own (e.g. an f32 router bias in a bf16 model).
            let keep =
                |t: &RawTensor| t.shape == a.shape() && (t.dtype == safetensors_dtype(dtype) || t.dtype != safetensors_dtype(source_dtype));
            let copied = if unchanged { source.raw(&full)?.filter(keep) } else { None };
            let tensor = copied.unwrap_or_else(|| RawTensor::encode(dtype, a.shape().to_vec(), a.iter().copied()));
            Ok((full, tensor))
        })
        .collect()
}

/// What the stock DeepSeek-V3 layout cannot express, refused before any work.
pub(crate) fn check_stock_mla(config: &ModelConfig, rope_dim: Option<usize>) -> Result<()> {
    let refuse = |why: String| {
        Error::file(
            &config.path,
            format!("the stock DeepSeek-V3 layout (emit mla): {why}; the GQLA layout (emit gqla) keeps it exactly"),
        )
    };
    if let AttentionConfig::Gqa(c) = &config.attention {
        if rope_dim.is_none() {
            return Err(refuse(format!(
                "the exact conversion keeps RoPE on every kv head's pairs (d_r = KV·D = {}), but DeepSeek-V3's rope key has one frequency per pair; give a rope dim d_r",
                c.dims.kv() * c.dims.d()
            )));
        }
        if c.qkv_bias {
            return Err(refuse("the source's q_proj has a bias, which DeepSeek-V3's q_proj lacks".into()));
        }
        if let Some(w) = c.sliding_window.iter().flatten().next() {
            return Err(refuse(format!("the source has a sliding window ({w}), which DeepSeek-V3 lacks")));
        }
        if !matches!(c.rope.scaling, Ok(gqla_reference::rope::RopeScaling::Default)) {
            return Err(refuse(format!(
                "the source's RoPE scaling ({}) is not carried into the stock config yet (only the default RoPE is)",
                match &c.rope.scaling {
                    Ok(s) => format!("{s:?}"),
                    Err(kind) => kind.clone(),
                }
            )));
        }
    }
    Ok(())
}

/// The kept RoPE frequencies must be the ones a stock reader derives from `rope_theta` and
/// `qk_rope_head_dim` (the DeepSeek layout has no frequency table): true when FreqFold keeps
/// evenly spaced frequencies.
pub(crate) fn check_stock_rope(config: &ModelConfig, w: &LatentWeights<f64>) -> Result<()> {
    let AttentionConfig::Gqa(c) = &config.attention else {
        return Ok(());
    };
    let stock = c.rope.build(&config.path, w.rope().style(), w.dims().d_r())?;
    let same = stock.freqs().len() == w.rope().freqs().len()
        && stock
            .freqs()
            .iter()
            .zip(w.rope().freqs())
            .all(|(a, b)| (a - b).abs() <= 1e-12 * a.abs());
    if !same {
        return Err(Error::file(
            &config.path,
            format!(
                "the stock DeepSeek-V3 layout (emit mla): the kept RoPE frequencies (first {:?}) are not the stock rope_theta^(-2j/{}), one per pair evenly spaced: this FreqFold keeps others; pick a FreqFold that is a multiple of D/d_r, or the GQLA layout (emit gqla)",
                &w.rope().freqs()[..w.rope().freqs().len().min(3)],
                w.dims().d_r(),
            ),
        ));
    }
    Ok(())
}

/// The converted model's config.json: for an MLA source its own config with G groups; for a GQA
/// source a DeepSeek-V3-layout config (all layers dense) with the explicit RoPE table.
pub(crate) fn output_config(src: &ModelConfig, w: &LatentWeights<f64>, dtype: DType, emit: Emit, freqfold: usize) -> Result<Value> {
    if let AttentionConfig::Latent(_) = &src.attention {
        let text = gqla_files::read_to_string(&src.path, gqla_files::Limit::CONFIG)?;
        let mut v: Value = serde_json::from_str(&text).map_err(|e| Error::file(&src.path, format!("not valid JSON: {e}")))?;
        v["num_key_value_heads"] = json!(w.dims().g());
        v["dtype"] = json!(dtype.hf_name());
        if v.get("torch_dtype").is_some() {
            v["torch_dtype"] = json!(dtype.hf_name());
        }
        GqlaKeys {
            gqla_source_model_type: Some(src.model_type.hf_name().into()),
            gqla_conversion: Some(Conversion::GroupPca),
            gqla_latent_rms_norm: Some(w.kv_norm().is_some()),
            ..GqlaKeys::default()
        }
        .write_into(&mut v);
        add_remote_code(&mut v, src, emit);
        return Ok(v);
    }
    let d = w.dims();
    let q_bias = matches!(w.query_projection(), QueryProjection::Direct(l) if l.bias.is_some());
    let (kv_a_bias, o_bias) = (w.kv_a().bias.is_some(), w.o_proj().bias.is_some());
    let mut v = json!({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": src.hidden_size,
        "intermediate_size": src.intermediate_size,
        "num_hidden_layers": src.num_layers,
        "num_attention_heads": d.h(),
        "num_key_value_heads": d.g(),
        "kv_lora_rank": d.d_c(),
        "q_lora_rank": null,
        "qk_nope_head_dim": d.d_n(),
        "qk_rope_head_dim": d.d_r(),
        "v_head_dim": d.d_v(),
        "rope_interleave": true,
        "rope_theta": match &src.attention { AttentionConfig::Gqa(c) => c.rope.theta, AttentionConfig::Latent(c) => c.rope.theta },
        "first_k_dense_replace": src.num_layers,
        "hidden_act": "silu",
        "rms_norm_eps": src.rms_norm_eps,
        "vocab_size": src.vocab_size,
        "tie_word_embeddings": src.tie_word_embeddings,
        "attention_bias": kv_a_bias || o_bias,
        "dtype": dtype.hf_name(),
    });
    GqlaKeys {
        gqla_latent_rms_norm: Some(w.kv_norm().is_some()),
        // The stock layout's reader derives the same table from rope_theta (checked per layer).
        gqla_rope_freqs: (emit != Emit::Mla).then(|| w.rope().freqs().to_vec()),
        gqla_q_bias: Some(q_bias),
        gqla_kv_a_bias: Some(kv_a_bias),
        gqla_o_bias: Some(o_bias),
        gqla_source_model_type: Some(src.model_type.hf_name().into()),
        gqla_conversion: Some(Conversion::Transgqla),
        gqla_sliding_window: Some(w.sliding_window().map(|n| n as u64)),
        gqla_freqfold: Some(freqfold),
        gqla_decode_path: None,
    }
    .write_into(&mut v);
    add_remote_code(&mut v, src, emit);
    Ok(v)
}

/// HF's `trust_remote_code` entry points for the GQLA layout (the stock layout needs none). The
/// shipped code extends DeepSeek-V3's modeling, so only DeepSeek-V3-type outputs get them (GQA
/// sources, DeepSeek-V3 sources); DeepSeek-V2 and GLM sources load with examples/hf_load_gqla.py.
/// Name the shipped GQLA classes for the output's family in `auto_map` (GQLA layout only: the
/// stock layout needs no code of ours).
fn add_remote_code(v: &mut Value, source: &ModelConfig, emit: Emit) {
    if emit != Emit::Gqla {
        return;
    }
    if let Some((config, model)) = remote_classes(source) {
        v["auto_map"] = json!({
            "AutoConfig": format!("configuration_gqla.{config}"),
            "AutoModelForCausalLM": format!("modeling_gqla.{model}"),
        });
        GqlaKeys {
            gqla_decode_path: Some(DecodePathKey::Absorb),
            ..GqlaKeys::default()
        }
        .write_into(v);
    }
}

/// The source's tokenizer files beside the converted weights, so that the output is a whole model:
/// copied from an HF directory, or for a GGUF file the tokenizer its metadata gives, as
/// tokenizer.json (skipped when the file embeds none).
pub(crate) fn copy_tokenizer(ckpt: &Checkpoint, out: &Path) -> Result<()> {
    if let Some(g) = ckpt.store.gguf() {
        if let Ok(tok) = g.tokenizer() {
            let json = tok
                .to_string(false)
                .map_err(|e| Error::file(g.path(), format!("cannot serialize the embedded tokenizer: {e}")))?;
            gqla_files::write_file(&out.join("tokenizer.json"), json.as_bytes())?;
        }
        return Ok(());
    }
    let Some(dir) = ckpt.config.path.parent() else { return Ok(()) };
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        if let Some(src) = crate::hf::tensors::checkpoint_file(dir, name)? {
            let bytes = gqla_files::read_file(&src, gqla_files::Limit::INDEX)?;
            gqla_files::write_file(&out.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// The configuration and model classes of `modeling_gqla.py` for a conversion of `source`: its
/// output is DeepSeek-V3-shaped for GQA sources, and in the source's own family for MLA ones.
pub(crate) fn remote_classes(source: &ModelConfig) -> Option<(&'static str, &'static str)> {
    use crate::hf::config::ModelType;
    match (&source.attention, source.model_type) {
        (AttentionConfig::Gqa(_), _) | (AttentionConfig::Latent(_), ModelType::DeepseekV3) => Some(("GqlaConfig", "GqlaForCausalLM")),
        (AttentionConfig::Latent(_), ModelType::DeepseekV2) => Some(("GqlaDeepseekV2Config", "GqlaDeepseekV2ForCausalLM")),
        (AttentionConfig::Latent(_), ModelType::Glm4MoeLite) => Some(("GqlaGlm4MoeLiteConfig", "GqlaGlm4MoeLiteForCausalLM")),
        (AttentionConfig::Latent(_), ModelType::Llama | ModelType::Qwen2 | ModelType::Mistral) => None,
    }
}

/// The modeling code a GQLA output ships for HF transformers (`trust_remote_code=True`).
pub const REMOTE_CODE: [(&str, &str); 2] = [
    ("configuration_gqla.py", include_str!("remote_code/configuration_gqla.py")),
    ("modeling_gqla.py", include_str!("remote_code/modeling_gqla.py")),
];

pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize") + "\n";
    gqla_files::write_file(path, text.as_bytes())
}
