//! The values each integer config key may take, for config.json and for the GGUF metadata that
//! becomes it: ceilings far above any released model and far below an overflowing size.

/// The values an integer config key may take. Ceilings lie far above any released model (the
/// largest have ~10^5 hidden units, 10^6 vocabulary entries and a few hundred layers) and far
/// below what would overflow a size computation.
pub fn key_range(key: &str) -> (u64, u64) {
    match key {
        "num_hidden_layers" | "num_attention_heads" | "num_key_value_heads" | "n_routed_experts" | "num_experts_per_tok" => (1, 1 << 12),
        "vocab_size" => (1, 1 << 24),
        "hidden_size" | "intermediate_size" | "moe_intermediate_size" => (1, 1 << 20),
        "head_dim" | "kv_lora_rank" | "q_lora_rank" | "qk_nope_head_dim" | "v_head_dim" => (1, 1 << 16),
        "qk_rope_head_dim" => (0, 1 << 16),
        "max_position_embeddings" | "sliding_window" | "gqla_sliding_window" => (1, 1 << 40),
        _ => (0, 1 << 20),
    }
}
