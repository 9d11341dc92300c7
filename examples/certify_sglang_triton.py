#!/usr/bin/env python3
"""Certify SGLang's Triton decode attention (`decode_attention_fwd`, from the sglang wheel) on
the CPU, under the Triton interpreter.

    gqla vectors export --out pack --filter gqla.decode --filter gqa.decode
    TRITON_INTERPRET=1 python examples/certify_sglang_triton.py pack outputs
    gqla certify --kernel external:pack --outputs outputs

The adapter only converts layouts, as SGLang's own token-level memory pool (page size 1) holds
them: every sequence's cache rows become token slots listed in kv_indices (through the block
table when paged), the GQA path's key is [k_g; k^R] per group, the absorb path's value is a view
of the first d_c columns of [c; k^R] (MLA's layout). The kernel runs unchanged.

Interpreter workaround: the Triton interpreter computes bf16 arithmetic wrongly (it multiplies
bf16 bit patterns as integers, triton-lang/triton#11584). bf16 inputs are therefore handed to
the kernel as f32 tensors holding the same (exactly representable) values. The kernel itself is
untouched, but on bf16 cases this certifies its logic (indexing, splits, masking, merge), not
its bf16 arithmetic, which only a GPU run shows. f16 and f32 run natively.

The profile, read from sglang/kernels/ops/attention/decode_attention.py:
- one new token per sequence (q is [batch, heads, dim]): s_q = 1;
- the final stage writes `o` only (the per-split LSE is a workspace): no LSE;
- an empty sequence gives e_sum = 0 and o = 0/0: out of an empty row is NaN;
- num_kv_splits is honoured (max_kv_splits at least 8, SGLang's default).
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("TRITON_INTERPRET", "1")
from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd  # noqa: E402

PROFILE = {
    "operations": ["gqla.decode.absorb", "gqla.decode.gqa", "gqa.decode"],
    "dtypes": ["f32", "bf16", "f16"],
    "contiguous": True,
    "page_sizes": "any",
    "s_q": {"min": 1, "max": 1},
    "split_counts": "honoured",
    "rope_layouts": ["once", "per_group"],
    "scale": "input",
    "out_empty_row": "nan",
    "lse": "none",
}


def slots(t, p):
    """kv_indptr and kv_indices: every cached token's slot, sequence by sequence."""
    lens, page = p["seq_lens"], p["page_size"]
    capacity = next(t[k] for k in ("kv", "k", "k_nope") if k in t).shape[1]  # contiguous: [B, capacity, w]
    indptr, indices = [0], []
    for b, n in enumerate(lens):
        for tok in range(n):
            if page is None:
                indices.append(b * capacity + tok)
            else:
                indices.append(int(t["block_table"][b, tok // page]) * page + tok % page)
        indptr.append(len(indices))
    return torch.tensor(indptr, dtype=torch.int32), torch.tensor(indices, dtype=torch.int32)


def flat(x):
    """A cache [B, capacity, w] or [num_pages, page, w] as token slots [slots, w]."""
    return x.reshape(-1, x.shape[-1])


def run_case(t, p):
    op, g = p["operation"], p["groups"]
    dtype = t["q"].dtype
    work = torch.float32 if dtype == torch.bfloat16 else dtype  # the interpreter workaround
    t = {k: (x.to(work) if x.is_floating_point() and k != "scale" else x) for k, x in t.items()}
    q = t["q"][:, 0].contiguous()  # [B, H, width]: s_q = 1
    if op == "gqla.decode.absorb":
        k = flat(t["kv"]).unsqueeze(1).contiguous()  # [slots, 1, d_c + d_r]
        v = k[..., : p["d_c"]]
    elif op == "gqa.decode":
        k = flat(t["k"]).view(-1, g, p["d_n"]).contiguous()
        v = flat(t["v"]).view(-1, g, p["d_v"]).contiguous()
    else:
        if p["rope_layout"] == "once":
            nope = flat(t["k_nope"]).view(-1, g, p["d_n"])
            rope = flat(t["k_rope"]).view(-1, 1, p["d_r"]).expand(-1, g, p["d_r"])
            k = torch.cat([nope, rope], dim=-1).contiguous()
        else:
            k = flat(t["k"]).view(-1, g, p["d_n"] + p["d_r"]).contiguous()
        v = flat(t["v"]).view(-1, g, p["d_v"]).contiguous()
    batch, heads, dv = q.shape[0], q.shape[1], v.shape[-1]
    indptr, indices = slots(t, p)
    requested = p["splits"]
    max_splits = max(requested or 8, 8)
    num_splits = torch.full((batch,), requested or 8, dtype=torch.int32)
    o = torch.empty(batch, heads, dv, dtype=work)
    logits = torch.empty(batch, heads, max_splits, dv, dtype=torch.float32)
    lse = torch.empty(batch, heads, max_splits, dtype=torch.float32)
    decode_attention_fwd(
        q, k, v, o, indptr, indices, logits, lse, num_splits, max_splits,
        float(t["scale"]), 1.0, 1.0, has_mla=(op == "gqla.decode.absorb"),
    )
    return o.unsqueeze(1)  # [B, 1, H, d_v]


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
        if p["operation"] not in PROFILE["operations"] or p["s_q"] != 1:
            continue
        out = run_case(load_file(os.path.join(args.pack, case["inputs"])), p)
        save_file({"out": out.contiguous()}, os.path.join(args.outputs, case["outputs"]))
        done += 1
    import sglang
    import triton

    kernel = {
        "name": "sglang-triton-decode-attention",
        "version": sglang.__version__,
        "description": "sglang.kernels.ops.attention.decode_attention.decode_attention_fwd under TRITON_INTERPRET=1 "
        "on the CPU; bf16 inputs handed over as f32 (triton#11584) (examples/certify_sglang_triton.py)",
        "environment": {"sglang": sglang.__version__, "triton": triton.__version__, "torch": torch.__version__, "device": "cpu (Triton interpreter)"},
        "profile": PROFILE,
    }
    with open(os.path.join(args.outputs, "kernel.json"), "w") as f:
        json.dump(kernel, f, indent=2)
    print(f"wrote outputs for {done} cases")


if __name__ == "__main__":
    main()
