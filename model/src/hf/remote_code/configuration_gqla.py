"""GQLA configurations for HF transformers (shipped by `gqla convert`; tested with 5.23.0).

One class per MLA family a conversion can write: DeepSeek-V3 (every converted GQA model, and
DeepSeek-V3 sources), DeepSeek-V2 and GLM-4.7-Flash (glm4_moe_lite) sources. Each is its
family's configuration with `num_key_value_heads` = G groups (G divides the query heads), plus
the keys `gqla convert` writes:

- gqla_decode_path: "absorb" (cache [c; k^R] per token, queries absorb W^UK_g, the output goes
  through W^UV_g) or "gqa" (cache k_g = W^UK_g c, v_g = W^UV_g c per group, plain GQA);
- gqla_latent_rms_norm: whether kv_a_layernorm exists (converted GQA models have none);
- gqla_rope_freqs: an explicit RoPE frequency table (converted GQA models);
- gqla_q_bias, gqla_kv_a_bias, gqla_o_bias: biases DeepSeek-V3 does not have, or has only together.
"""
from transformers.models.deepseek_v2.configuration_deepseek_v2 import DeepseekV2Config
from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
from transformers.models.glm4_moe_lite.configuration_glm4_moe_lite import Glm4MoeLiteConfig


def _check_path(path):
    if path not in ("absorb", "gqa"):
        raise ValueError(f"gqla_decode_path must be 'absorb' or 'gqa', got {path!r}")
    return path


class GqlaConfig(DeepseekV3Config):
    # The checkpoint layout is the family's (weight names, expert format), so the model type is too.
    model_type = "deepseek_v3"

    def __init__(self, gqla_decode_path="absorb", **kwargs):
        self.gqla_decode_path = _check_path(gqla_decode_path)
        super().__init__(**kwargs)


class GqlaDeepseekV2Config(DeepseekV2Config):
    model_type = "deepseek_v2"

    def __init__(self, gqla_decode_path="absorb", **kwargs):
        self.gqla_decode_path = _check_path(gqla_decode_path)
        super().__init__(**kwargs)


class GqlaGlm4MoeLiteConfig(Glm4MoeLiteConfig):
    model_type = "glm4_moe_lite"

    def __init__(self, gqla_decode_path="absorb", **kwargs):
        self.gqla_decode_path = _check_path(gqla_decode_path)
        super().__init__(**kwargs)
