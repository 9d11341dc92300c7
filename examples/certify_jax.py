#!/usr/bin/env python3
"""Certify `jax.nn.dot_product_attention` (XLA implementation, CPU) as a decode kernel, in
process, with the `gqla` package (pip install ./python).

    python examples/certify_jax.py [--seed S | --seeds N] [--out DIR] [--filter PREFIX]

The adapter is `case.dense()` (each sequence's keys and values, padded, with the bottom-right
causal mask; `is_causal` would be top-left) in one call per case, with `return_residual=True`
for the LSE. JAX needs the value head as wide as the key head, so values are padded with zero
columns and the output sliced back (exact).

The profile is what JAX does, read from jax/_src/nn/functions.py:
- the LSE (the residual) is cast to the key dtype: `lse.dtype = storage`, natural log;
- a row with no visible key softmaxes logits all set to -0.7 * f32 max, so its output averages
  the values it was given (`out_empty_row` is `unspecified`) and its LSE is that sentinel,
  about -2.38e38, in f32 and bf16, and -inf once cast to f16 (past f16's range): the LSE's
  empty-row convention is declared per dtype;
- no KV split: requested split counts are `ignored`.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

import gqla

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


def jax_attention(case):
    d = case.dense()  # q [B, s_q, H, W], k/v [B, N, K, .], mask [B, 1, s_q, N]
    dv = d.v.shape[-1]
    v = np.zeros(d.k.shape, d.k.dtype)
    v[..., :dv] = d.v
    out, lse = jax.nn.dot_product_attention(
        jnp.asarray(d.q), jnp.asarray(d.k), jnp.asarray(v), mask=jnp.asarray(d.mask), scale=d.scale,
        implementation="xla", return_residual=True,
    )
    return {"out": out[..., :dv], "lse": lse}


if __name__ == "__main__":
    sys.exit(gqla.main(
        jax_attention,
        PROFILE,
        name="jax-dot-product-attention",
        version=jax.__version__,
        description=f"jax.nn.dot_product_attention (implementation='xla', return_residual=True) on "
        f"{jax.default_backend()} (examples/certify_jax.py)",
        environment={"jax": jax.__version__, "jaxlib": jax.lib.__version__, "backend": jax.default_backend()},
    ))
