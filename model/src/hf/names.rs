//! HF's tensor names, spelled once: the model-level tensors, and each decoder layer's modules
//! under `model.layers.{i}`. A module's parameters are `{module}.weight` (and `{module}.bias`).

/// The token embedding table [vocab, hidden].
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// The final RMSNorm's weight.
pub const FINAL_NORM: &str = "model.norm.weight";
/// The LM head [vocab, hidden] (absent when tied to the embedding).
pub const LM_HEAD: &str = "lm_head.weight";

/// Layer `i`'s prefix.
pub fn layer(i: usize) -> String {
    format!("model.layers.{i}")
}

/// A module of a decoder layer (its path under the layer's prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Module {
    InputNorm,
    PostAttentionNorm,
    /// GQA, and latent attention without a query low-rank.
    QProj,
    KProj,
    VProj,
    OProj,
    /// The query low-rank (DeepSeek-V2/V3): down, norm, up.
    QAProj,
    QANorm,
    QBProj,
    /// (L1), (L2): the latent and the shared rope key in one product.
    KvAProj,
    KvANorm,
    /// The key/value up-projections (per group in GQLA).
    KvBProj,
    /// The MoE router, `mlp.gate` (its selection bias is `mlp.gate.e_score_correction_bias`).
    Router,
}

impl Module {
    pub fn path(self) -> &'static str {
        match self {
            Module::InputNorm => "input_layernorm",
            Module::PostAttentionNorm => "post_attention_layernorm",
            Module::QProj => "self_attn.q_proj",
            Module::KProj => "self_attn.k_proj",
            Module::VProj => "self_attn.v_proj",
            Module::OProj => "self_attn.o_proj",
            Module::QAProj => "self_attn.q_a_proj",
            Module::QANorm => "self_attn.q_a_layernorm",
            Module::QBProj => "self_attn.q_b_proj",
            Module::KvAProj => "self_attn.kv_a_proj_with_mqa",
            Module::KvANorm => "self_attn.kv_a_layernorm",
            Module::KvBProj => "self_attn.kv_b_proj",
            Module::Router => "mlp.gate",
        }
    }

    /// `{module}.weight` under layer `i`.
    pub fn weight(self, i: usize) -> String {
        format!("{}.{}.weight", layer(i), self.path())
    }
}

/// The MoE router's selection bias under layer `i`.
pub fn router_bias(i: usize) -> String {
    format!("{}.{}.e_score_correction_bias", layer(i), Module::Router.path())
}

/// Which MLP of a layer: the dense one, a routed expert, or the shared experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpPath {
    Dense,
    Expert(usize),
    Shared,
}

impl MlpPath {
    /// The MLP's path under the layer's prefix.
    pub fn path(self) -> String {
        match self {
            MlpPath::Dense => "mlp".into(),
            MlpPath::Expert(e) => format!("mlp.experts.{e}"),
            MlpPath::Shared => "mlp.shared_experts".into(),
        }
    }
}

/// An MLP's three projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpProj {
    Gate,
    Up,
    Down,
}

impl MlpProj {
    pub const ALL: [MlpProj; 3] = [MlpProj::Gate, MlpProj::Up, MlpProj::Down];
    pub fn name(self) -> &'static str {
        match self {
            MlpProj::Gate => "gate_proj",
            MlpProj::Up => "up_proj",
            MlpProj::Down => "down_proj",
        }
    }
    /// The projection's path under the layer's prefix, e.g. `mlp.experts.3.up_proj`.
    pub fn path(self, mlp: MlpPath) -> String {
        format!("{}.{}", mlp.path(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hf_names() {
        assert_eq!(Module::KvBProj.weight(3), "model.layers.3.self_attn.kv_b_proj.weight");
        assert_eq!(Module::InputNorm.weight(0), "model.layers.0.input_layernorm.weight");
        assert_eq!(router_bias(1), "model.layers.1.mlp.gate.e_score_correction_bias");
        assert_eq!(MlpProj::Up.path(MlpPath::Expert(3)), "mlp.experts.3.up_proj");
        assert_eq!(MlpProj::Down.path(MlpPath::Dense), "mlp.down_proj");
        assert_eq!(MlpProj::Gate.path(MlpPath::Shared), "mlp.shared_experts.gate_proj");
    }
}
