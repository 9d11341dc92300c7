#!/usr/bin/env python3
"""Certify SGLang's Triton decode attention (`decode_attention_fwd`, from the sglang wheel) on
the CPU, under the Triton interpreter, in process, with the `gqla` package (pip install ./python).

    TRITON_INTERPRET=1 python examples/certify_sglang_triton.py [--seed S] [--filter PREFIX] [--out DIR]

The adapter only converts layouts, as SGLang's own token-level memory pool (page size 1) holds
them: `case.slot_kv()` is the cache as per-slot keys and values ([k_g; k^R] per group; on the
absorb path [c; k^R] with the value a view of c, MLA's layout) and `case.kv_slots()` each
sequence's token slots (through the block table when paged). The kernel runs unchanged.

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
import os
import sys

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
import sglang  # noqa: E402
import triton  # noqa: E402
from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd  # noqa: E402

import gqla  # noqa: E402

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


def sglang_decode(case):
    k, v = (gqla.torch_tensor(x) for x in case.slot_kv())  # [slots, K, W], [slots, K, d_v]
    q = gqla.torch_tensor(case.inputs["q"])[:, 0]  # [B, H, W]: s_q = 1
    work = torch.float32 if q.dtype == torch.bfloat16 else q.dtype  # the interpreter workaround
    q, k, v = q.to(work).contiguous(), k.to(work).contiguous(), v.to(work)
    if case.op == "gqla.decode.absorb":
        v = k[..., : case.d_c]  # MLA: the value is a view of the key
    indptr, indices = (torch.from_numpy(x) for x in case.kv_slots())
    batch, heads, dv, splits = q.shape[0], q.shape[1], v.shape[-1], case.splits or 8
    o = torch.empty(batch, heads, dv, dtype=work)
    logits = torch.empty(batch, heads, max(splits, 8), dv, dtype=torch.float32)
    lse = torch.empty(batch, heads, max(splits, 8), dtype=torch.float32)
    num_splits = torch.full((batch,), splits, dtype=torch.int32)
    decode_attention_fwd(q, k, v, o, indptr, indices, logits, lse, num_splits, max(splits, 8),
                         case.scale, 1.0, 1.0, has_mla=case.op == "gqla.decode.absorb")
    return {"out": o.unsqueeze(1)}  # [B, 1, H, d_v]


if __name__ == "__main__":
    sys.exit(gqla.main(
        sglang_decode,
        PROFILE,
        name="sglang-triton-decode-attention",
        version=sglang.__version__,
        description="sglang.kernels.ops.attention.decode_attention.decode_attention_fwd under TRITON_INTERPRET=1 "
        "on the CPU; bf16 inputs handed over as f32 (triton#11584) (examples/certify_sglang_triton.py)",
        environment={"sglang": sglang.__version__, "triton": triton.__version__, "torch": torch.__version__,
                     "device": "cpu (Triton interpreter)"},
    ))
