#!/usr/bin/env python3
"""Load a `gqla convert` output in HF transformers as a user would, with no patch, and check it.

    python examples/hf_check_gqla.py CONVERTED --load remote [--against SOURCE] [--ids 1,2,3]
    python examples/hf_check_gqla.py CONVERTED --load stock  [--against OTHER]  [--ids 1,2,3]

--load remote: AutoModelForCausalLM.from_pretrained(CONVERTED, trust_remote_code=True), the
  default GQLA output with its modeling_gqla.py, run on both decode paths (absorb and gqa).
--load stock: AutoModelForCausalLM.from_pretrained(CONVERTED), no remote code: the stock
  DeepSeek-V3 layout of `--emit mla`.

Prints one JSON line per decode path: the relative difference of the float64 logits from the
--against model's (an HF directory, loaded the same way as CONVERTED when it holds
modeling_gqla.py, else stock), the difference between cached token-by-token decoding and the full
forward, and with --ids the log-softmax rows on those token ids. Loading must be strict: a missing
or unexpected weight is an error. float64 evaluation patches HF's float32 upcasts in RoPE and
RMSNorm (fixtures/make_hf_fixtures.py), as the other HF checks do.
"""
import argparse
import json
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import make_hf_fixtures as fx  # noqa: E402  (float64 evaluation of HF's float32 upcasts)


def load(path, remote):
    kwargs = dict(dtype=torch.float64, output_loading_info=True)
    if remote:
        kwargs["trust_remote_code"] = True
    else:
        kwargs.update(attn_implementation="eager", experts_implementation="eager")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    bad = {k: [n for n in v if not n.endswith("inv_freq")] for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        raise SystemExit(f"{path}: loading was not strict: {bad}")
    raw = json.load(open(os.path.join(path, "config.json")))
    for mod in model.modules():
        if type(mod).__name__.endswith("RotaryEmbedding"):
            table = raw.get("gqla_rope_freqs")
            mod.inv_freq64 = torch.tensor(table, dtype=torch.float64) if table else fx.f64_rope_table(model.config.rope_parameters, mod.inv_freq.numel() * 2)[0]
    fx.patch_f64(model)
    return model.eval()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def cached_logits(model, ids, split):
    """The logits of the last len(ids) - split positions, decoded one token at a time with the cache."""
    out = model(input_ids=ids[:, :split], use_cache=True)
    past, rows = out.past_key_values, []
    for t in range(split, ids.shape[1]):
        out = model(input_ids=ids[:, t : t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        rows.append(out.logits[:, -1])
    return torch.stack(rows, dim=1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("converted")
    p.add_argument("--load", choices=["remote", "stock"], required=True)
    p.add_argument("--against")
    p.add_argument("--ids", help="comma-separated token ids whose log-softmax rows are printed")
    p.add_argument("--tokens", type=int, default=12)
    a = p.parse_args()
    remote = a.load == "remote"
    model = load(a.converted, remote)
    if remote:
        with open(os.path.join(a.converted, "config.json")) as f:
            want = json.load(f)["auto_map"]["AutoModelForCausalLM"].split(".")[-1]
        got = type(model)
        if got.__name__ != want or not got.__module__.endswith("modeling_gqla"):
            raise SystemExit(f"{a.converted}: expected {want} from modeling_gqla.py (auto_map), got {got.__module__}.{got.__name__}")
    if not remote and type(model).__module__.split(".")[:2] != ["transformers", "models"]:
        raise SystemExit(f"{a.converted}: expected a stock transformers class, got {type(model)}")
    other = None
    if a.against:
        other = load(a.against, os.path.exists(os.path.join(a.against, "modeling_gqla.py")))
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (1, a.tokens), generator=gen)
    probe = torch.tensor([[int(t) for t in a.ids.split(",")]]) if a.ids else None
    with torch.no_grad():
        ref = other(input_ids=ids).logits if other is not None else None
        for path in ["absorb", "gqa"] if remote else ["stock"]:
            if remote:
                model.set_decode_path(path)
            full = model(input_ids=ids).logits
            split = a.tokens - 3
            line = {
                "path": path,
                "cached_vs_full": rel(cached_logits(model, ids, split), full[:, split:]),
            }
            if ref is not None:
                line["vs_against"] = rel(full, ref)
            if probe is not None:
                line["logprobs"] = torch.log_softmax(model(input_ids=probe).logits[0], dim=-1).tolist()
            print(json.dumps(line))


if __name__ == "__main__":
    main()
