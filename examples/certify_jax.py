#!/usr/bin/env python3
"""Certify `jax.nn.dot_product_attention` (XLA implementation, CPU) as a decode kernel.

    gqla vectors export --out pack
    python examples/certify_jax.py pack outputs
    gqla certify --kernel external:pack --outputs outputs

The adapter only converts layouts. Per case it gathers each sequence's live cache rows (through
the block table when paged) into a zero-padded batch [B, S, K, H]: the absorb path as one kv head
over [c; k^R] with the value c, the GQA path as G kv heads over [k_g; k^R]. JAX needs the value
head as wide as the key head, so values are padded with zero columns and the output sliced back
(exact). The mask is the definition's: key s is visible to new token j of sequence b when
s <= seq_lens[b] - s_q + j (bottom-right causal; `is_causal` is top-left). One call per case,
with `return_residual=True` for the LSE.

The profile is what JAX does, read from jax/_src/nn/functions.py:
- the LSE (the residual) is cast to the key dtype: `lse.dtype = storage`, natural log;
- a row with no visible key softmaxes logits all set to -0.7 * f32 max, so its output averages
  the values it was given (`out_empty_row` is `unspecified`) and its LSE is that sentinel,
  about -2.38e38, in f32 and bf16, and -inf once cast to f16 (past f16's range): the LSE's
  empty-row convention is declared per dtype;
- no KV split: requested split counts are `ignored`.
"""
import argparse
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.flax import load_file, save_file

F32_MAX = float(np.finfo(np.float32).max)

PROFILE = {
    "operations": ["gqla.decode.absorb", "gqla.decode.gqa", "gqa.decode"],
    "dtypes": ["f32", "bf16", "f16"],
    "contiguous": True,
    "page_sizes": "any",
    "s_q": {"min": 1, "max": 64},
    "split_counts": "ignored",
    "rope_layouts": ["once", "per_group"],
    "scale": "input",
    "out_empty_row": "unspecified",
    "lse": {
        "dtype": "storage",
        "base": "e",
        "empty_row": {"f32": {"finite": -0.7 * F32_MAX}, "bf16": {"finite": -0.7 * F32_MAX}, "f16": "neg_inf"},
    },
}


def live_rows(t, name, b, n, page):
    """The n cache rows of sequence b, [n, width] (numpy)."""
    cache = np.asarray(t[name])
    if page is not None:
        pages = np.asarray(t["block_table"])[b, : math.ceil(n / page)]
        return cache[pages].reshape(-1, cache.shape[-1])[:n]
    return cache[b, :n]


def keys_values(t, p, b, n):
    """Sequence b's keys [n, K, H] and values [n, K, dv]."""
    op, g, page = p["operation"], p["groups"], p["page_size"]
    if op == "gqla.decode.absorb":
        kv = live_rows(t, "kv", b, n, page)
        return kv[:, None, :], kv[:, None, : p["d_c"]]
    if op == "gqa.decode":
        return live_rows(t, "k", b, n, page).reshape(n, g, p["d_n"]), live_rows(t, "v", b, n, page).reshape(n, g, p["d_v"])
    v = live_rows(t, "v", b, n, page).reshape(n, g, p["d_v"])
    if p["rope_layout"] == "once":
        k_nope = live_rows(t, "k_nope", b, n, page).reshape(n, g, p["d_n"])
        k_rope = np.broadcast_to(live_rows(t, "k_rope", b, n, page)[:, None, :], (n, g, p["d_r"]))
        return np.concatenate([k_nope, k_rope], axis=-1), v
    return live_rows(t, "k", b, n, page).reshape(n, g, p["d_n"] + p["d_r"]), v


def run_case(t, p):
    q = t["q"]  # [B, s_q, H, width]
    lens, sq = p["seq_lens"], p["s_q"]
    batch, heads = len(lens), (1 if p["operation"] == "gqla.decode.absorb" else p["groups"])
    width = q.shape[-1]
    dv = p["d_c"] if p["operation"] == "gqla.decode.absorb" else p["d_v"]
    s = max(max(lens), 1)
    dtype = np.asarray(q[:1, :1, :1, :1]).dtype
    k = np.zeros((batch, s, heads, width), dtype)
    v = np.zeros((batch, s, heads, width), dtype)  # values padded to the key width
    for b, n in enumerate(lens):
        if n:
            kb, vb = keys_values(t, p, b, n)
            k[b, :n] = kb
            v[b, :n, :, :dv] = vb
    pos = np.arange(s)[None, None, None, :]
    last = np.array(lens)[:, None, None, None] - sq + np.arange(sq)[None, None, :, None]
    mask = (pos <= last) & (pos < np.array(lens)[:, None, None, None])  # [B, 1, s_q, S]
    out, lse = jax.nn.dot_product_attention(
        q, jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask), scale=float(t["scale"]),
        implementation="xla", return_residual=True,
    )
    return out[..., :dv], lse


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pack", help="a vector pack from `gqla vectors export`")
    ap.add_argument("outputs", help="where to write the outputs and kernel.json")
    args = ap.parse_args()
    os.makedirs(args.outputs, exist_ok=True)
    with open(os.path.join(args.pack, "manifest.json")) as f:
        manifest = json.load(f)
    done = 0
    for case in manifest["cases"]:
        p = case["params"]
        if p["operation"] not in PROFILE["operations"]:
            continue
        out, lse = run_case(load_file(os.path.join(args.pack, case["inputs"])), p)
        save_file({"out": out, "lse": lse}, os.path.join(args.outputs, case["outputs"]))
        done += 1
    kernel = {
        "name": "jax-dot-product-attention",
        "version": jax.__version__,
        "description": "jax.nn.dot_product_attention (implementation='xla', return_residual=True) on "
        + jax.default_backend() + " (examples/certify_jax.py)",
        "environment": {"jax": jax.__version__, "jaxlib": jax.lib.__version__, "backend": jax.default_backend()},
        "profile": PROFILE,
    }
    with open(os.path.join(args.outputs, "kernel.json"), "w") as f:
        json.dump(kernel, f, indent=2)
    print(f"wrote outputs for {done} cases")


if __name__ == "__main__":
    main()
