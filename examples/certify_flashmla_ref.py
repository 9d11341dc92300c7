#!/usr/bin/env python3
"""Certify FlashMLA's own PyTorch reference for dense MLA decode, with its own FP8 dequantiser, on
the CPU: the functions used unchanged from a FlashMLA checkout at a pinned commit.

    python examples/certify_flashmla_ref.py --flashmla DIR [--seed S | --seeds N] [--out DIR]
    python examples/certify_flashmla_ref.py --flashmla DIR --pack PACK --outputs DIR   # over a pack

DIR is FlashMLA at commit 9241ae3ef9bac614dd25e45e507e089f888280e0; the files used are checked
against their sha256 below. From it:
- tests/quant.py `dequantize_k_cache(..., FP8KVCacheLayout.V32_FP8Sparse)`: DeepSeek-V3.2's
  656-byte record (512 e4m3fn, 4 f32 scales, 64 bf16) to a bf16 cache;
- tests/test_flash_mla_dense_decoding.py `reference_torch`: the dense decode reference its CUDA
  kernel is tested against. Importing that module imports the `flash_mla` CUDA extension, which
  this reference never calls; on a machine without it an empty module stands in.

The honest profile, read from that code:
- bf16 only, paged caches (the reference walks a block table), any s_q (bottom-right causal);
- the scale is not an input: it divides by sqrt(query width), 1/sqrt(576) = 1/24;
- an empty row gives out 0 and lse +inf; lse is f32, natural log;
- FP8: the tiled record with 128-wide tiles, read as powers of two (the record FlashMLA writes;
  its dequantiser stores fp8 × s in bf16, exact only for such scales).
"""
import argparse
import hashlib
import os
import sys
import types

import numpy as np
import torch

import gqla

COMMIT = "9241ae3ef9bac614dd25e45e507e089f888280e0"
SHA256 = {
    "tests/quant.py": "84604c879bc69e715de334978b0d00a84d1d5feb3ed1a9407b504959f1368114",
    "tests/test_flash_mla_dense_decoding.py": "a05b7a666ebdefd2247db18f52fa5b35e71f48b6313c2827b3067b8d3c4447c8",
    "tests/kernelkit/__init__.py": "43b138adcd3c970cfdc8c66b85aa9bfc8711ecf1bcb7d2a2769ebc5b82ed2026",
    "tests/kernelkit/bench.py": "e1bbccdc230f0860766ebc3b7aaf7839cc0376078c4d114a735f998f6c80e857",
    "tests/kernelkit/compare.py": "999f5c2e1d31d2f95e46566847cab80a63cbd9d950e8c32b8e25306173c63a89",
    "tests/kernelkit/generate.py": "6b3dcc2d33c67f2978e14219df0cd4e430a9c357ac983e66010930f2457e37a4",
    "tests/kernelkit/precision.py": "7afb845736ea6830d966826289ad8eef35ae53fb260555a18ccfff41ed962dc1",
    "tests/kernelkit/utils.py": "5bcded340c5b232770c6985798bf928c814ea20a6e4692c2740e03663313e48d",
}

PROFILE = {
    "operations": ["gqla.decode.absorb"],
    "dtypes": ["bf16"],
    "page_sizes": "any",
    "s_q": {"min": 1, "max": 64},
    "split_counts": "ignored",
    "scale": {"fixed": 1.0 / 24.0},
    "out_empty_row": "zero",
    "lse": {"dtype": "f32", "base": "e", "empty_row": "pos_inf"},
    "fp8": {"formats": ["tiled"], "tiles": [128], "scale_read": "pow2"},
}


def load_flashmla(root: str):
    """FlashMLA's quant and dense decode test modules, after checking every file used."""
    for path, want in SHA256.items():
        with open(os.path.join(root, path), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != want:
            sys.exit(f"{path}: sha256 {got}, expected {want} (FlashMLA at {COMMIT})")
    sys.path.insert(0, os.path.join(root, "tests"))
    if "flash_mla" not in sys.modules:
        try:
            import flash_mla  # noqa: F401
        except ImportError:
            sys.modules["flash_mla"] = types.ModuleType("flash_mla")
    import quant
    import test_flash_mla_dense_decoding as dense

    return quant, dense


def flashmla_reference(case, quant, dense):
    x = case.inputs
    q = gqla.torch_tensor(x["q"])
    kv = x["kv"]
    if case.params["kv_cache"] == "native":
        blocked_k = gqla.torch_tensor(kv).unsqueeze(2)
    else:
        records = torch.from_numpy(np.ascontiguousarray(kv)).view(torch.float8_e4m3fn)
        blocked_k = quant.dequantize_k_cache(records.unsqueeze(2), quant.FP8KVCacheLayout.V32_FP8Sparse)
    seqlens = torch.from_numpy(np.asarray(x["seq_lens"], np.int32))
    table = torch.from_numpy(np.asarray(x["block_table"], np.int32))
    out, lse = dense.reference_torch(seqlens, table, q, blocked_k, case.d_c, is_causal=True)
    return {"out": out, "lse": lse.transpose(1, 2)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--flashmla", required=True)
    a, rest = ap.parse_known_args()
    quant, dense = load_flashmla(a.flashmla)
    sys.exit(gqla.main(
        lambda case: flashmla_reference(case, quant, dense),
        PROFILE,
        name="flashmla-torch-ref",
        version=f"FlashMLA {COMMIT[:7]}, torch {torch.__version__}",
        description="FlashMLA's tests: quant.dequantize_k_cache (V32_FP8Sparse) + "
        "test_flash_mla_dense_decoding.reference_torch, unchanged, on the CPU (examples/certify_flashmla_ref.py)",
        environment={"flashmla_commit": COMMIT, "torch": torch.__version__, "device": "cpu"},
        argv=rest,
    ))
