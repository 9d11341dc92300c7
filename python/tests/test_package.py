"""The `gqla` package as a kernel author uses it: cases and references as data, a numpy kernel
certified in process, and each way a kernel can go wrong reaching the certificate as its own
status. Runs under pytest, or as a script (`python test_package.py`, what the workspace's tests
do with the Python the examples use)."""

import json
import os
import sys
import tempfile

import numpy as np

import gqla

PROFILE = {
    "operations": ["gqa.decode"],
    "dtypes": ["f32", "bf16", "f16"],
    "contiguous": True,
    "page_sizes": "any",
    "s_q": {"min": 1, "max": 4},
    "lse": {"dtype": "f32", "base": "e", "empty_row": "neg_inf"},
    "out_empty_row": "zero",
    "split_counts": "ignored",
    "scale": "input",
}
# One case (its twin, with `;poison=garbage` before the seed, does not match).
ONE = ["gqa.decode:h=32;g=8;d=128;dv=128;sq=1;ctx=65,31;page=64;dtype=bf16;seed="]


def numpy_gqa_decode(case):
    """Plain GQA decode in numpy, f32 accumulation: a kernel written from the spec alone."""
    x = case.inputs
    q, k, v = (x[n].astype(np.float32) for n in ("q", "k", "v"))
    lens, scale = x["seq_lens"], float(x["scale"])
    batch, s_q, heads, d = q.shape
    if "block_table" in x:  # paged: [pages, page, G*d] through the block table
        page = k.shape[1]
        rows = lambda c, b, n: c[x["block_table"][b, np.arange(n) // page], np.arange(n) % page]
    else:  # contiguous: [B, capacity, G*d]
        rows = lambda c, b, n: c[b, :n]
    groups = k.shape[-1] // d
    dv = v.shape[-1] // groups
    out = np.zeros((batch, s_q, heads, dv), np.float32)
    lse = np.full((batch, s_q, heads), -np.inf, np.float32)
    per_group = heads // groups
    for b in range(batch):
        kb = rows(k, b, lens[b]).reshape(lens[b], groups, d)
        vb = rows(v, b, lens[b]).reshape(lens[b], groups, dv)
        for j in range(s_q):
            n = max(0, int(lens[b]) - s_q + j + 1)
            if n == 0:
                continue
            qg = q[b, j].reshape(groups, per_group, d)
            scores = np.einsum("ghd,ngd->ghn", qg, kb[:n]) * np.float32(scale)
            m = scores.max(axis=-1, keepdims=True)
            p = np.exp(scores - m)
            total = p.sum(axis=-1, keepdims=True)
            out[b, j] = (np.einsum("ghn,ngv->ghv", p, vb[:n]) / total).reshape(heads, dv)
            lse[b, j] = (m + np.log(total)).reshape(heads)
    return {"out": out.astype(case.inputs["q"].dtype), "lse": lse}


def test_cases_are_data():
    cases = gqla.cases(PROFILE, ops=["gqa.decode"])
    assert len(cases) > 20
    c = cases[0]
    assert c.op == "gqa.decode" and c.dtype in ("f32", "bf16", "f16")
    assert isinstance(c.heads, int) and c.heads % c.groups == 0
    # The scale is the exact f32 the kernel gets as its `scale` input.
    assert np.float32(c.scale) == c.inputs["scale"][()] and np.float32(c.scale).view(np.uint32) == c.scale_bits
    assert c.inputs["q"].shape == (c.batch, c.s_q, c.heads, c.d_n)
    assert list(c.inputs["seq_lens"]) == c.seq_lens
    assert c.params["operation"] == "gqa.decode" and c.params["seq_lens"] == c.seq_lens, c.params
    ref = c.reference()
    for name, shape in c.output_shapes.items():
        assert ref.truth[name].shape == shape and ref.naive[name].shape == shape
    # The naive reference differs from the truth by rounding, no more.
    finite = np.isfinite(ref.truth["out"])
    assert 0 < np.abs(ref.naive["out"] - ref.truth["out"])[finite].max() < 0.1
    # Profiles narrow the cases: one dtype, paged caches only.
    narrow = gqla.cases(dict(PROFILE, dtypes=["f32"], contiguous=False), ops=["gqa.decode"])
    assert narrow and all(c.dtype == "f32" and c.page_size is not None for c in narrow)
    # One that selects nothing says so.
    try:
        gqla.cases(dict(PROFILE, operations=["gqla.decode.absorb"]), ops=["gqa.decode"])
    except ValueError as e:
        assert "the profile selects none of the" in str(e), e
    else:
        raise AssertionError("an empty selection was accepted")


def test_layouts_and_poison_read_as_the_profile_writes_them():
    profile = dict(PROFILE, operations=["gqla.decode.gqa"], rope_layouts=["once", "per_group"])
    cases = gqla.cases(profile, ops=["gqla.decode.gqa"])
    assert {c.rope_layout for c in cases} == {"once", "per_group"}
    assert {c.poison for c in cases} == {"nan", "garbage"}
    assert all(c.params["rope_layout"] == c.rope_layout for c in cases)


def test_a_numpy_kernel_is_conformant():
    with tempfile.TemporaryDirectory() as out:
        cert = gqla.certify(numpy_gqa_decode, PROFILE, ops=["gqa.decode"], seed=3, out=out, name="numpy-gqa")
        assert cert.conformant, cert.summary()
        assert cert.verdict_line.startswith("CONFORMANT — numpy-gqa (suite " + gqla.SUITE_VERSION)
        on_disk = json.load(open(os.path.join(out, "report.json")))
        assert on_disk["verdict"] == "CONFORMANT" and on_disk["seed_origin"] == "given_to_this_run"
        assert os.path.exists(os.path.join(out, "junit.xml")) and os.path.exists(os.path.join(out, "report.md"))
        assert all(f["judgement"] == "PRECISE" for f in cert.report["precision"])


def status_of(kernel):
    cert = gqla.certify(kernel, PROFILE, filters=ONE, seed=3)
    assert not cert.conformant
    statuses = {r["status"] for r in cert.failures}
    assert len(statuses) == 1, cert.summary()
    return statuses.pop(), cert.failures[0]


def test_each_failure_is_a_verdict_not_a_crash():
    def raises(case):
        raise ValueError("no kernel for " + case.dtype)

    status, r = status_of(raises)
    assert status == "RUNTIME_ERROR" and r["message"].startswith("ValueError: no kernel for "), r

    status, r = status_of(lambda case: {"out": np.zeros((1, 2), np.float32), "lse": np.zeros(3, np.float32)})
    assert status == "SHAPE_OR_DTYPE_MISMATCH" and "has shape [1, 2]" in r["detail"], r

    def ints(case):
        o = numpy_gqa_decode(case)
        return {"out": o["out"].astype(np.int64), "lse": o["lse"]}

    status, r = status_of(ints)
    assert status == "SHAPE_OR_DTYPE_MISMATCH" and "has dtype int64, expected a float dtype" in r["detail"], r

    status, r = status_of(lambda case: "not arrays")
    assert status == "SHAPE_OR_DTYPE_MISMATCH", r

    def writes(case):
        o = numpy_gqa_decode(case)
        case.inputs["k"][0] = 0
        return o

    status, r = status_of(writes)
    assert status == "INPUT_MUTATED" and "`k`" in r["detail"], r

    def nested(case):
        return gqla.certify(numpy_gqa_decode, PROFILE, filters=ONE, seed=3)

    status, r = status_of(nested)
    assert status == "RUNTIME_ERROR" and "already being certified" in r["message"], r

    def nan_rows(case):
        o = numpy_gqa_decode(case)
        o["out"][...] = np.nan
        return o

    status, _ = status_of(nan_rows)
    assert status == "NONFINITE_MISMATCH"


def test_outputs_in_order_and_from_torch():
    cert = gqla.certify(lambda c: tuple(numpy_gqa_decode(c).values()), PROFILE, filters=ONE, seed=4)
    assert cert.verdict == "PARTIAL" and not cert.failures, cert.summary()
    try:
        import torch
    except ImportError:
        return
    def in_torch(case):
        o = numpy_gqa_decode(case)
        t = case.torch()
        assert t["q"].dtype == {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[case.dtype]
        return {"out": torch.from_numpy(o["out"].astype(np.float32)).to(t["q"].dtype), "lse": torch.from_numpy(o["lse"])}

    cert = gqla.certify(in_torch, PROFILE, filters=ONE, seed=4)
    assert not cert.failures, cert.summary()


def test_bad_profiles_and_operations_are_errors():
    for bad, words in [
        (dict(PROFILE, dtypes=["f8"]), "dtypes"),
        (dict(PROFILE, s_q={"min": 3, "max": 1}), "s_q"),
    ]:
        try:
            gqla.cases(bad)
        except ValueError as e:
            assert words in str(e), e
        else:
            raise AssertionError(f"{bad} was accepted")
    try:
        gqla.certify(numpy_gqa_decode, PROFILE, ops=["gqa.prefill"])
    except ValueError as e:
        assert "unknown operation `gqa.prefill`" in str(e), e
    else:
        raise AssertionError("an unknown operation was accepted")


if __name__ == "__main__":
    tests = [f for name, f in sorted(globals().items()) if name.startswith("test_") and callable(f)]
    for t in tests:
        t()
        print("ok", t.__name__, flush=True)
    print(f"{len(tests)} passed")
    sys.exit(0)
