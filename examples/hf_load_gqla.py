#!/usr/bin/env python3
"""Load a GQLA checkpoint written by `gqla convert` into HF transformers (tested with 5.23.0).

Stock transformers builds DeepSeek-V3's kv_b_proj with one block per query head; a GQLA checkpoint
holds one block per group (num_key_value_heads = G < H). HF's attention code already repeats
groups over heads (repeat_kv), so only the module sizes need patching. Converted GQA checkpoints
may also carry an explicit RoPE frequency table (gqla_rope_freqs), no latent RMSNorm
(gqla_latent_rms_norm: false) and per-projection biases (gqla_q_bias, gqla_kv_a_bias, gqla_o_bias);
this loader honours those too.

    from hf_load_gqla import load_gqla
    model = load_gqla("converted/", dtype=torch.bfloat16)

Run as a script to check a conversion end to end:

    python examples/hf_load_gqla.py CONVERTED_DIR SOURCE_DIR [--tokens 12]

which prints the relative difference between HF's logits for the converted and the source model
(float64; exact conversions agree to about 1e-12 when the RoPE/RMSNorm/softmax float32 upcasts are
evaluated in float64, about 1e-6 otherwise).
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file


def load_gqla(path, dtype=torch.float32):
    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    if raw.get("gqla_sliding_window"):
        raise NotImplementedError(f"{path}: gqla_sliding_window={raw['gqla_sliding_window']}: HF's DeepSeek-V3 attention has no sliding window")
    config = transformers.AutoConfig.from_pretrained(path)
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"  # grouped_mm has no float64
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    g = config.num_key_value_heads
    for layer in model.model.layers:
        a = layer.self_attn
        a.kv_b_proj = torch.nn.Linear(config.kv_lora_rank, g * (config.qk_nope_head_dim + config.v_head_dim), bias=False, dtype=dtype)
        if raw.get("gqla_latent_rms_norm", True) is False:
            a.kv_a_layernorm = torch.nn.Identity()
        if a.q_proj is not None and raw.get("gqla_q_bias", False):
            a.q_proj = torch.nn.Linear(a.q_proj.in_features, a.q_proj.out_features, bias=True, dtype=dtype)
        for name, key in (("kv_a_proj_with_mqa", "gqla_kv_a_bias"), ("o_proj", "gqla_o_bias")):
            lin = getattr(a, name)
            want = raw.get(key, lin.bias is not None)
            if want != (lin.bias is not None):
                setattr(a, name, torch.nn.Linear(lin.in_features, lin.out_features, bias=want, dtype=dtype))
    if "gqla_rope_freqs" in raw:
        rotary = model.model.rotary_emb
        freqs = torch.tensor(raw["gqla_rope_freqs"], dtype=torch.float64)
        rotary.register_buffer("inv_freq", freqs.to(rotary.inv_freq.dtype), persistent=False)
        rotary.original_inv_freq = rotary.inv_freq
    state = {}
    index = os.path.join(path, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    for f in files:
        state.update(load_file(os.path.join(path, f)))
    state = fuse_experts(state)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    # Buffers HF recomputes (rotary inv_freq) and tied heads may be reported missing; weights may not.
    missing = [m for m in missing if not m.endswith("inv_freq") and not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{path}: missing {missing}, unexpected {unexpected}")
    return model.eval()


def fuse_experts(state):
    """Per-expert tensors (as checkpoints store them) to transformers 5's fused expert parameters:
    experts.gate_up_proj [E, 2I, hidden] (gate rows first) and experts.down_proj [E, hidden, I]."""
    import re
    pat = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    groups = {}
    out = {}
    for k, v in state.items():
        m = pat.match(k)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = v
        else:
            out[k] = v
    for prefix, experts in groups.items():
        order = sorted(experts)
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]]) for e in order])
        out[f"{prefix}.down_proj"] = torch.stack([experts[e]["down_proj"] for e in order])
    return out


def main():
    import argparse
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
    p = argparse.ArgumentParser()
    p.add_argument("converted")
    p.add_argument("source")
    p.add_argument("--tokens", type=int, default=12)
    a = p.parse_args()
    import make_hf_fixtures as fx  # float64 evaluation of HF's float32 upcasts
    conv = load_gqla(a.converted, torch.float64)
    src = transformers.AutoModelForCausalLM.from_pretrained(a.source, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager")
    fx.check_rope(src)
    raw = json.load(open(os.path.join(a.converted, "config.json")))
    for mod in conv.modules():
        if type(mod).__name__.endswith("RotaryEmbedding"):
            table = raw.get("gqla_rope_freqs")
            mod.inv_freq64 = torch.tensor(table, dtype=torch.float64) if table else fx.f64_rope_table(conv.config.rope_parameters, mod.inv_freq.numel() * 2)[0]
    fx.patch_f64(src)
    fx.patch_f64(conv)
    ids = torch.randint(0, conv.config.vocab_size, (1, a.tokens), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lc, ls = conv(input_ids=ids).logits, src(input_ids=ids).logits
    print(f"HF logits, converted vs source: rel diff {((lc - ls).norm() / ls.norm()).item():.3e}")


if __name__ == "__main__":
    main()
