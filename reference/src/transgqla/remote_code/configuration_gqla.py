"""GQLA configuration for HF transformers (shipped by `gqla convert`; tested with 5.23.0).

DeepSeek-V3's configuration with `num_key_value_heads` = G groups (G divides the query heads),
plus the keys `gqla convert` writes:

- gqla_decode_path: "absorb" (cache [c; k^R] per token, queries absorb W^UK_g, the output goes
  through W^UV_g) or "gqa" (cache k_g = W^UK_g c, v_g = W^UV_g c per group, plain GQA);
- gqla_latent_rms_norm: whether kv_a_layernorm exists (converted GQA models have none);
- gqla_rope_freqs: an explicit RoPE frequency table (converted GQA models);
- gqla_q_bias, gqla_kv_a_bias, gqla_o_bias: biases DeepSeek-V3 does not have, or has only together.
"""
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config


class GqlaConfig(DeepseekV3Config):
    # The checkpoint layout is DeepSeek-V3's (weight names, expert format), so the model type is too.
    model_type = "deepseek_v3"

    def __init__(self, gqla_decode_path="absorb", **kwargs):
        if gqla_decode_path not in ("absorb", "gqa"):
            raise ValueError(f"gqla_decode_path must be 'absorb' or 'gqa', got {gqla_decode_path!r}")
        self.gqla_decode_path = gqla_decode_path
        super().__init__(**kwargs)
