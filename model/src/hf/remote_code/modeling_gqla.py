"""GQLA for HF transformers (shipped by `gqla convert`; tested with 5.23.0).

    model = AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)
    model.set_decode_path("gqa")   # or "absorb" (config.gqla_decode_path, the default)

GQLA is MLA whose key/value up-projections W^UK_g, W^UV_g belong to G groups of H/G query heads
(kv_b_proj holds G blocks). The same weights decode two ways, equal in exact arithmetic:

- absorb: the cache holds [c_t; k^R_t] (kv_lora_rank + qk_rope_head_dim per token, one copy for
  all heads); head i's query absorbs W^UK_g(i) and its output goes through W^UV_g(i);
- gqa: the cache holds k_g = [W^UK_g c_t; k^R_t] and v_g = W^UV_g c_t per group: plain GQA.

Both use the softmax scale 1/sqrt(qk_nope_head_dim + qk_rope_head_dim) (with YaRN's mscale).
Softmax runs in at least float32, and in float64 for float64 models.

The same attention is written over three MLA families, which differ only in how RoPE is applied:
GqlaForCausalLM (DeepSeek-V3 layout: converted GQA models and DeepSeek-V3 sources),
GqlaDeepseekV2ForCausalLM and GqlaGlm4MoeLiteForCausalLM. config.json's auto_map names the one.
"""
import torch
from torch import nn
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as ds2
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds3
from transformers.models.glm4_moe_lite import modeling_glm4_moe_lite as glm

from .configuration_gqla import GqlaConfig, GqlaDeepseekV2Config, GqlaGlm4MoeLiteConfig


class _GroupedLatentAttention:
    """GQLA attention; the first base of a family's attention class, which supplies `_rope`."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        g, h = config.num_key_value_heads, config.num_attention_heads
        if g < 1 or h % g:
            raise ValueError(f"num_key_value_heads {g} must divide num_attention_heads {h}")
        self.num_groups = g
        self.kv_b_proj = nn.Linear(config.kv_lora_rank, g * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        if not getattr(config, "gqla_latent_rms_norm", True):
            self.kv_a_layernorm = nn.Identity()
        if self.q_proj is not None and getattr(config, "gqla_q_bias", False):
            self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.qk_head_dim, bias=True)
        for name, key in (("kv_a_proj_with_mqa", "gqla_kv_a_bias"), ("o_proj", "gqla_o_bias")):
            lin = getattr(self, name)
            want = getattr(config, key, None)
            if want is not None and want != (lin.bias is not None):
                setattr(self, name, nn.Linear(lin.in_features, lin.out_features, bias=want))
        self.decode_path = getattr(config, "gqla_decode_path", "absorb")

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        b, s = hidden_states.shape[:-1]
        d_n, d_r, d_v, d_c = self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim, self.kv_lora_rank
        h, g = self.num_heads, self.num_groups
        if self.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        q = q.view(b, s, h, d_n + d_r).transpose(1, 2)
        q_nope, q_rot = torch.split(q, [d_n, d_r], dim=-1)
        c, k_rot = torch.split(self.kv_a_proj_with_mqa(hidden_states), [d_c, d_r], dim=-1)
        c = self.kv_a_layernorm(c).view(b, 1, s, d_c)
        k_rot = k_rot.view(b, 1, s, d_r)
        q_rot, k_rot = self._rope(q_rot, k_rot, position_embeddings)
        w = self.kv_b_proj.weight.view(g, d_n + d_v, d_c)
        w_uk, w_uv = w[:, :d_n, :], w[:, d_n:, :]
        if self.decode_path == "absorb":
            if past_key_values is not None:
                c, k_rot = past_key_values.update(c, k_rot, self.layer_idx)
            # Scores against the latent: q_i W^UK_g(i) · c_t + q^R_i · k^R_t.
            q_lat = torch.einsum("bgrsn,gnc->bgrsc", q_nope.reshape(b, g, h // g, s, d_n), w_uk).reshape(b, h, s, d_c)
            scores = q_lat @ c.transpose(2, 3) + q_rot @ k_rot.transpose(2, 3)
            probs = self._softmax(scores, attention_mask, q.dtype)
            o_lat = (probs @ c).reshape(b, g, h // g, s, d_c)
            out = torch.einsum("bgrsc,gvc->bgrsv", o_lat, w_uv).reshape(b, h, s, d_v)
        elif self.decode_path == "gqa":
            k = torch.cat([torch.einsum("bzsc,gnc->bgsn", c, w_uk), k_rot.expand(b, g, s, d_r)], dim=-1)
            v = torch.einsum("bzsc,gvc->bgsv", c, w_uv)
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, self.layer_idx)
            r = h // g
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
            probs = self._softmax(torch.cat([q_nope, q_rot], -1) @ k.transpose(2, 3), attention_mask, q.dtype)
            out = probs @ v
        else:
            raise ValueError(f"decode path must be 'absorb' or 'gqa', got {self.decode_path!r}")
        out = out.transpose(1, 2).reshape(b, s, h * d_v)
        return self.o_proj(out), probs

    def _softmax(self, scores, mask, dtype):
        scores = scores * self.scaling
        if mask is not None:
            mask = mask[..., : scores.shape[-1]]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return nn.functional.softmax(scores, dim=-1, dtype=torch.promote_types(dtype, torch.float32)).to(dtype)


def _cos_sin_rope(module):
    def rope(self, q_rot, k_rot, position_embeddings):
        cos, sin = position_embeddings
        if self.config.rope_interleave:
            return module.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
        return module.apply_rotary_pos_emb(q_rot, k_rot, cos, sin)

    return rope


class GqlaAttention(_GroupedLatentAttention, ds3.DeepseekV3Attention):
    _rope = _cos_sin_rope(ds3)


class GqlaGlm4MoeLiteAttention(_GroupedLatentAttention, glm.Glm4MoeLiteAttention):
    _rope = _cos_sin_rope(glm)


class GqlaDeepseekV2Attention(_GroupedLatentAttention, ds2.DeepseekV2Attention):
    def _rope(self, q_rot, k_rot, freqs_cis):
        # DeepSeek-V2 rotates interleaved pairs as complex numbers.
        return ds2.apply_rotary_emb(q_rot, k_rot, freqs_cis.to(q_rot.device))


class _GqlaCausalLM:
    """The first base of a family's causal LM: its attention replaced by GQLA's."""

    # The attention is written out here (both paths): HF's fused kernels see neither.
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False

    def __init__(self, config):
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = self.gqla_attention(config, i)
        freqs = getattr(config, "gqla_rope_freqs", None)
        if freqs is not None:
            rotary = self.model.rotary_emb
            table = torch.tensor(freqs, dtype=torch.float64).to(rotary.inv_freq.dtype)
            if table.shape != rotary.inv_freq.shape:
                raise ValueError(f"gqla_rope_freqs has {table.numel()} entries, expected {rotary.inv_freq.numel()}")
            rotary.register_buffer("inv_freq", table, persistent=False)
            rotary.original_inv_freq = table.clone()
        self.post_init()

    def set_decode_path(self, path):
        if path not in ("absorb", "gqa"):
            raise ValueError(f"decode path must be 'absorb' or 'gqa', got {path!r}")
        self.config.gqla_decode_path = path
        for layer in self.model.layers:
            layer.self_attn.decode_path = path


class GqlaForCausalLM(_GqlaCausalLM, ds3.DeepseekV3ForCausalLM):
    config_class = GqlaConfig
    gqla_attention = GqlaAttention


class GqlaDeepseekV2ForCausalLM(_GqlaCausalLM, ds2.DeepseekV2ForCausalLM):
    config_class = GqlaDeepseekV2Config
    gqla_attention = GqlaDeepseekV2Attention


class GqlaGlm4MoeLiteForCausalLM(_GqlaCausalLM, glm.Glm4MoeLiteForCausalLM):
    config_class = GqlaGlm4MoeLiteConfig
    gqla_attention = GqlaGlm4MoeLiteAttention
