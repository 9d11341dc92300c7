//! HF `config.json` → validated model configuration.

use super::gqla_keys::GqlaKeys;
use super::key_ranges::key_range;
use gqla_reference::config::{GqaDims, LatentDims, LatentShape};
use gqla_reference::error::{Error, Result};
use gqla_reference::rope::{yarn_mscale, Rope, RopeScaling, RopeStyle};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The model families the reference reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ModelType {
    Llama,
    Qwen2,
    Mistral,
    DeepseekV2,
    DeepseekV3,
    /// GLM-4.7-Flash: DeepSeek-V3-style MLA and MoE under its own name.
    Glm4MoeLite,
}

impl ModelType {
    pub const ALL: [ModelType; 6] = [
        ModelType::Llama,
        ModelType::Qwen2,
        ModelType::Mistral,
        ModelType::DeepseekV2,
        ModelType::DeepseekV3,
        ModelType::Glm4MoeLite,
    ];

    /// The `model_type` of HF configs.
    pub fn hf_name(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Qwen2 => "qwen2",
            ModelType::Mistral => "mistral",
            ModelType::DeepseekV2 => "deepseek_v2",
            ModelType::DeepseekV3 => "deepseek_v3",
            ModelType::Glm4MoeLite => "glm4_moe_lite",
        }
    }
}

use gqla_reference::dtype::DType;

/// RoPE as the config describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// The frequency-table rule, or the name of a `rope_type` the reference cannot evaluate.
    pub scaling: std::result::Result<RopeScaling, String>,
}

impl RopeConfig {
    /// The RoPE of a vector of `dim`, or an error naming the unsupported type.
    pub fn build(&self, config: &Path, style: RopeStyle, dim: usize) -> Result<Rope> {
        let scaling = self.scaling.as_ref().map_err(|kind| {
            Error::file(
                config,
                format!("RoPE type `{kind}` is not supported (expected default, linear, llama3 or yarn): cannot evaluate this layer"),
            )
        })?;
        let (freqs, attention_factor) = scaling.table(dim, self.theta)?;
        Ok(Rope::new(style, freqs)?.with_attention_factor(attention_factor))
    }

    /// DeepSeek's softmax-scale correction under YaRN: mscale(factor, mscale_all_dim)².
    pub fn deepseek_softmax_factor(&self) -> f64 {
        match self.scaling {
            Ok(RopeScaling::Yarn {
                factor,
                mscale_all_dim: Some(a),
                ..
            }) if a != 0.0 => yarn_mscale(factor, a).powi(2),
            _ => 1.0,
        }
    }
}

/// A GQA layer's settings (LLaMA/Qwen2/Mistral).
#[derive(Clone, Debug, PartialEq)]
pub struct GqaConfig {
    pub dims: GqaDims,
    /// q/k/v projections carry a bias.
    pub qkv_bias: bool,
    /// o_proj carries a bias.
    pub o_bias: bool,
    pub rope: RopeConfig,
    /// Per-layer sliding window (None: full causal attention).
    pub sliding_window: Vec<Option<usize>>,
}

/// An MLA/GQLA layer's settings (DeepSeek-V2/V3 layout; G = num_key_value_heads).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentConfig {
    pub dims: LatentDims,
    pub q_lora_rank: Option<usize>,
    /// The query projection carries a bias: q_a_proj under q-LoRA when `attention_bias`, q_proj only
    /// when `gqla_q_bias` says so (a converted Qwen2).
    pub q_bias: bool,
    /// kv_a_proj_with_mqa carries a bias (`attention_bias`, or `gqla_kv_a_bias`).
    pub kv_a_bias: bool,
    /// o_proj carries a bias (`attention_bias`, or `gqla_o_bias`).
    pub o_bias: bool,
    pub interleaved_rope: bool,
    pub rope: RopeConfig,
    pub rms_norm_eps: f64,
    /// `gqla_latent_rms_norm` (default true, as in DeepSeek): whether kv_a_layernorm is applied.
    pub latent_norm: bool,
    /// `gqla_sliding_window`: a Mistral-style attention window carried over by conversion.
    pub sliding_window: Option<usize>,
    /// `gqla_rope_freqs`: an explicit frequency table θ_l (d_r/2 entries), overriding rope_theta.
    pub rope_freqs: Option<Vec<f64>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttentionConfig {
    Gqa(GqaConfig),
    Latent(LatentConfig),
}

/// A parsed and validated `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub path: PathBuf,
    pub model_type: ModelType,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub dtype: DType,
    pub attention: AttentionConfig,
    pub vocab_size: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Mixture-of-experts settings and which layers use them (None: all layers dense).
    pub moe: Option<MoeConfig>,
}

/// A DeepSeek/GLM mixture-of-experts block, as the config describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub experts: usize,
    pub moe_intermediate_size: usize,
    /// Shared experts' intermediate size is `moe_intermediate_size × shared_experts` (0: none).
    pub shared_experts: usize,
    pub routing: crate::transformer::Routing,
    /// The router has a selection-only bias (`e_score_correction_bias`).
    pub selection_bias: bool,
    /// Per layer: sparse (MoE) or dense.
    pub sparse: Vec<bool>,
}

impl ModelConfig {
    /// Whether layer `layer` is a mixture-of-experts layer.
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.sparse.get(layer).copied().unwrap_or(false))
    }
}

struct Json<'a> {
    path: &'a Path,
    v: &'a Value,
}

impl Json<'_> {
    fn err(&self, key: &str, expected: &str) -> Error {
        let got = self.v.get(key).map_or("nothing".to_string(), |v| v.to_string());
        Error::file(self.path, format!("config key `{key}`: expected {expected}, got {got}"))
    }
    /// An integer key, range-checked: no dimension reaches an allocation or a cast unchecked.
    fn usize(&self, key: &str) -> Result<usize> {
        let (lo, hi) = key_range(key);
        match self.v.get(key).and_then(Value::as_u64) {
            Some(x) if (lo..=hi).contains(&x) => Ok(x as usize),
            Some(_) => Err(self.err(key, &format!("an integer in {lo}..={hi}"))),
            None => Err(self.err(key, "a non-negative integer")),
        }
    }
    /// A small positive real (an epsilon): finite, in (0, 1].
    fn epsilon(&self, key: &str, default: f64) -> Result<f64> {
        let eps = self.f64_or(key, default)?;
        if !(eps.is_finite() && eps > 0.0 && eps <= 1.0) {
            return Err(self.err(key, "a finite number in (0, 1]"));
        }
        Ok(eps)
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, "a number")),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, "true or false")),
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.v.get(key).and_then(Value::as_str)
    }
}

impl ModelConfig {
    /// Read and validate `config.json` (a file, or a directory holding one).
    pub fn load(path: &Path) -> Result<Self> {
        let path = if path.is_dir() {
            // Confined like the weights: a symlink may not lead out of the checkpoint.
            crate::hf::tensors::checkpoint_file(path, "config.json")?;
            path.join("config.json")
        } else if crate::hf::gguf::is_gguf(path) {
            return Self::parse(path, crate::hf::gguf::GgufModel::open(path)?.config());
        } else {
            path.to_path_buf()
        };
        let text = gqla_files::read_to_string(&path, gqla_files::Limit::CONFIG)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::file(&path, format!("config is not valid JSON: {e}")))?;
        Self::parse(&path, &v)
    }

    pub fn parse(path: &Path, v: &Value) -> Result<Self> {
        let j = Json { path, v };
        let given = j.str("model_type");
        let Some(model_type) = ModelType::ALL.into_iter().find(|t| given == Some(t.hf_name())) else {
            let names: Vec<&str> = ModelType::ALL.iter().map(|t| t.hf_name()).collect();
            return Err(j.err("model_type", &format!("one of {}", names.join(", "))));
        };
        let hidden_size = j.usize("hidden_size")?;
        let num_layers = j.usize("num_hidden_layers")?;
        let dtype = match j.str("dtype").or_else(|| j.str("torch_dtype")) {
            None => DType::Bf16,
            Some(name) => DType::from_hf_name(name).ok_or_else(|| j.err("dtype", "bfloat16, float16, float32 or float64"))?,
        };
        let rope = rope_config(&j)?;
        let h = j.usize("num_attention_heads")?;
        let cfg_err = |e: Error| match e {
            e
            @ (Error::File { .. } | Error::MissingTensor { .. } | Error::Shape { .. } | Error::Dtype { .. } | Error::NonFinite { .. }) => e,
            e => Error::file(path, e.to_string()),
        };
        let attention = match model_type {
            ModelType::Llama | ModelType::Qwen2 | ModelType::Mistral => {
                let kv = j.opt_usize("num_key_value_heads")?.unwrap_or(h);
                let d = match j.opt_usize("head_dim")? {
                    Some(d) => d,
                    None if h > 0 && hidden_size % h == 0 => hidden_size / h,
                    None => return Err(j.err("head_dim", "a head dim (hidden_size is not divisible by num_attention_heads)")),
                };
                let dims = GqaDims::new(h, kv, d).map_err(cfg_err)?;
                let (qkv_bias, o_bias) = match model_type {
                    ModelType::Llama => {
                        let b = j.bool_or("attention_bias", false)?;
                        (b, b)
                    }
                    ModelType::Qwen2 => (true, false),
                    _ => (false, false),
                };
                GqaConfig {
                    dims,
                    qkv_bias,
                    o_bias,
                    rope,
                    sliding_window: sliding_windows(&j, model_type, num_layers)?,
                }
                .into()
            }
            ModelType::DeepseekV2 | ModelType::DeepseekV3 | ModelType::Glm4MoeLite => {
                let g = j.opt_usize("num_key_value_heads")?.unwrap_or(h);
                let dims = LatentDims::new(LatentShape {
                    h,
                    g,
                    d_c: j.usize("kv_lora_rank")?,
                    d_n: j.usize("qk_nope_head_dim")?,
                    d_r: j.usize("qk_rope_head_dim")?,
                    d_v: j.usize("v_head_dim")?,
                })
                .map_err(cfg_err)?;
                let q_lora_rank = j.opt_usize("q_lora_rank")?;
                let attention_bias = j.bool_or("attention_bias", false)?;
                let keys = GqlaKeys::read(path, v)?;
                let interleaved_rope = match model_type {
                    ModelType::DeepseekV2 => true,
                    _ => j.bool_or("rope_interleave", true)?,
                };
                LatentConfig {
                    dims,
                    q_lora_rank,
                    q_bias: keys.gqla_q_bias.unwrap_or(attention_bias && q_lora_rank.is_some()),
                    kv_a_bias: keys.gqla_kv_a_bias.unwrap_or(attention_bias),
                    o_bias: keys.gqla_o_bias.unwrap_or(attention_bias),
                    interleaved_rope,
                    rope,
                    rms_norm_eps: j.epsilon("rms_norm_eps", 1e-6)?,
                    latent_norm: keys.gqla_latent_rms_norm.unwrap_or(true),
                    rope_freqs: rope_freqs(&j, keys.gqla_rope_freqs, dims.d_r())?,
                    sliding_window: gqla_sliding_window(&j, keys.gqla_sliding_window.flatten())?,
                }
                .into()
            }
        };
        let moe = moe_config(&j, model_type, num_layers)?;
        Ok(Self {
            path: path.to_path_buf(),
            model_type,
            hidden_size,
            num_layers,
            dtype,
            attention,
            vocab_size: j.usize("vocab_size")?,
            intermediate_size: j.opt_usize("intermediate_size")?.unwrap_or(0),
            rms_norm_eps: j.epsilon("rms_norm_eps", 1e-6)?,
            tie_word_embeddings: j.bool_or("tie_word_embeddings", false)?,
            moe,
        })
    }
}

impl From<GqaConfig> for AttentionConfig {
    fn from(c: GqaConfig) -> Self {
        AttentionConfig::Gqa(c)
    }
}
impl From<LatentConfig> for AttentionConfig {
    fn from(c: LatentConfig) -> Self {
        AttentionConfig::Latent(c)
    }
}

/// RoPE base and type from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`.
fn rope_config(j: &Json) -> Result<RopeConfig> {
    let params = j.v.get("rope_parameters").filter(|v| v.is_object());
    let scaling = j.v.get("rope_scaling").filter(|v| v.is_object());
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(t) => t.as_f64().ok_or_else(|| j.err("rope_parameters", "a numeric rope_theta"))?,
        None => j.f64_or("rope_theta", 10000.0)?,
    };
    if !(theta.is_finite() && theta > 1.0) {
        return Err(j.err("rope_theta", "a finite base > 1"));
    }
    let p = params.or(scaling);
    let kind = p
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let key = if params.is_some() { "rope_parameters" } else { "rope_scaling" };
    let num = |name: &str| -> Result<Option<f64>> {
        match p.and_then(|p| p.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::file(j.path, format!("config key `{key}.{name}`: expected a number, got {v}"))),
        }
    };
    let positive = |name: &str, v: f64| -> Result<f64> {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(Error::file(
                j.path,
                format!("config key `{key}.{name}`: expected a finite number > 0, got {v}"),
            ))
        }
    };
    let need = |name: &str| -> Result<f64> {
        let v = num(name)?.ok_or_else(|| Error::file(j.path, format!("config key `{key}.{name}`: required for RoPE type `{kind}`")))?;
        positive(name, v)
    };
    let max_pos = j.opt_usize("max_position_embeddings")?.map(|m| m as f64);
    let original = || -> Result<f64> {
        num("original_max_position_embeddings")?.or(max_pos).ok_or_else(|| {
            Error::file(
                j.path,
                format!("config key `{key}.original_max_position_embeddings`: required for RoPE type `{kind}`"),
            )
        })
    };
    let scaling = match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear { factor: need("factor")? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position: original()?,
        }),
        "yarn" => {
            let original_max_position = original()?;
            let original_max_position = positive("original_max_position_embeddings", original_max_position)?;
            let factor = match num("factor")? {
                Some(f) => positive("factor", f)?,
                None => {
                    max_pos.ok_or_else(|| Error::file(j.path, "YaRN needs `factor` or `max_position_embeddings`"))? / original_max_position
                }
            };
            let truncate = p.and_then(|p| p.get("truncate")).and_then(Value::as_bool).unwrap_or(true);
            Ok(RopeScaling::Yarn {
                factor,
                original_max_position,
                beta_fast: num("beta_fast")?.filter(|b| *b != 0.0).unwrap_or(32.0),
                beta_slow: num("beta_slow")?.filter(|b| *b != 0.0).unwrap_or(1.0),
                mscale: num("mscale")?,
                mscale_all_dim: num("mscale_all_dim")?,
                attention_factor: num("attention_factor")?,
                truncate,
            })
        }
        other => Err(other.to_string()),
    };
    Ok(RopeConfig { theta, scaling })
}

/// MoE settings with HF's per-family defaults: V2 softmax routing (greedy or group-limited), V3 and
/// GLM sigmoid routing with a selection bias and top-2 group scores. Sparse layers: from
/// `first_k_dense_replace` on (V2/V3), or `mlp_layer_types` (GLM).
fn moe_config(j: &Json, model_type: ModelType, layers: usize) -> Result<Option<MoeConfig>> {
    use crate::transformer::{GroupScore, Routing, Scoring};
    let v2 = match model_type {
        ModelType::DeepseekV2 => true,
        ModelType::DeepseekV3 | ModelType::Glm4MoeLite => false,
        _ => return Ok(None),
    };
    let experts = j.opt_usize("n_routed_experts")?.unwrap_or(0);
    if experts == 0 {
        return Ok(None);
    }
    let sparse: Vec<bool> = match (model_type, j.v.get("mlp_layer_types").and_then(Value::as_array)) {
        (ModelType::Glm4MoeLite, Some(types)) => {
            if types.len() != layers {
                return Err(j.err("mlp_layer_types", &format!("{layers} entries")));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sparse") => Ok(true),
                    Some("dense") => Ok(false),
                    _ => Err(j.err("mlp_layer_types", "dense or sparse")),
                })
                .collect::<Result<_>>()?
        }
        (ModelType::Glm4MoeLite, None) => (0..layers).map(|l| l > 0).collect(),
        _ => {
            let first = j.opt_usize("first_k_dense_replace")?.unwrap_or(if v2 { 0 } else { 3 });
            (0..layers).map(|l| l >= first).collect()
        }
    };
    let n_group = j.opt_usize("n_group")?.unwrap_or(if v2 { 1 } else { 8 }).max(1);
    let topk_group = j.opt_usize("topk_group")?.unwrap_or(if v2 { 1 } else { 4 });
    let group_score = match (v2, j.str("topk_method")) {
        (true, None | Some("greedy")) => GroupScore::None,
        (true, Some("group_limited_greedy")) => GroupScore::Max,
        (true, Some(_)) => return Err(j.err("topk_method", "greedy or group_limited_greedy")),
        (false, _) => GroupScore::SumTop2,
    };
    if !experts.is_multiple_of(n_group) || topk_group > n_group {
        return Err(j.err(
            "n_group",
            &format!("a divisor of n_routed_experts = {experts} with topk_group ≤ n_group"),
        ));
    }
    let top_k = j.usize("num_experts_per_tok")?;
    if top_k == 0 || top_k > experts {
        return Err(j.err("num_experts_per_tok", &format!("between 1 and n_routed_experts = {experts}")));
    }
    let routing = Routing {
        scoring: if v2 { Scoring::Softmax } else { Scoring::Sigmoid },
        group_score,
        top_k,
        n_group,
        topk_group,
        // HF's DeepSeek-V2 code never normalises the top-k weights.
        norm_topk_prob: if v2 { false } else { j.bool_or("norm_topk_prob", true)? },
        routed_scaling_factor: j.f64_or("routed_scaling_factor", if v2 { 1.0 } else { 2.5 })?,
    };
    Ok(Some(MoeConfig {
        experts,
        moe_intermediate_size: j.usize("moe_intermediate_size")?,
        shared_experts: j.opt_usize("n_shared_experts")?.unwrap_or(if v2 { 2 } else { 1 }),
        routing,
        selection_bias: !v2,
        sparse,
    }))
}

/// `gqla_rope_freqs`: d_r/2 finite positive frequencies, when present.
fn rope_freqs(j: &Json, freqs: Option<Vec<f64>>, d_r: usize) -> Result<Option<Vec<f64>>> {
    let Some(freqs) = freqs else {
        return Ok(None);
    };
    if freqs.len() != d_r / 2 || !freqs.iter().all(|f| f.is_finite() && *f > 0.0) {
        return Err(j.err("gqla_rope_freqs", &format!("an array of {} positive frequencies (d_r/2)", d_r / 2)));
    }
    Ok(Some(freqs))
}

/// `gqla_sliding_window`, within the ceiling every window key has.
fn gqla_sliding_window(j: &Json, window: Option<u64>) -> Result<Option<usize>> {
    let (lo, hi) = key_range("gqla_sliding_window");
    match window {
        None => Ok(None),
        Some(w) if (lo..=hi).contains(&w) => Ok(Some(w as usize)),
        Some(_) => Err(j.err("gqla_sliding_window", &format!("an integer in {lo}..={hi}"))),
    }
}

/// Per-layer sliding windows: `layer_types` when given, else Mistral's `sliding_window`, else
/// Qwen2's `use_sliding_window` from `max_window_layers` on.
fn sliding_windows(j: &Json, model_type: ModelType, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = j.opt_usize("sliding_window")?;
    if let Some(types) = j.v.get("layer_types").and_then(Value::as_array) {
        if types.len() != layers {
            return Err(j.err("layer_types", &format!("{layers} entries")));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => window
                    .map(Some)
                    .ok_or_else(|| j.err("sliding_window", "a window for sliding_attention layers")),
                _ => Err(j.err("layer_types", "full_attention or sliding_attention")),
            })
            .collect();
    }
    Ok(match model_type {
        ModelType::Mistral => vec![window; layers],
        ModelType::Qwen2 if j.bool_or("use_sliding_window", false)? => {
            let from = j.opt_usize("max_window_layers")?.unwrap_or(0);
            (0..layers).map(|l| if l >= from { window } else { None }).collect()
        }
        _ => vec![None; layers],
    })
}
