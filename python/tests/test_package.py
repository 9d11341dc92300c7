"""The `gqla` package as a kernel author uses it: cases and references as data, numpy kernels
certified in process, each way a kernel can go wrong reaching the certificate as its own status,
stability over seeds, and packs. Runs under pytest (tests/python_package.rs runs it with the
Python the examples use), or as a script."""

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


def test_cheats_and_careless_outputs_are_refused():
    # The references are for debugging: a kernel that asks for them gets RUNTIME_ERROR.
    status, r = status_of(lambda case: {k: v.astype(np.float32) for k, v in case.reference().truth.items()})
    assert status == "RUNTIME_ERROR" and "case.reference() is refused" in r["message"], r
    # A huge broadcast output is refused by its shape before anything is copied.
    def huge(case):
        o = numpy_gqa_decode(case)
        return {"out": np.broadcast_to(np.float32(0), (2**40,)), "lse": o["lse"]}

    status, r = status_of(huge)
    assert status == "SHAPE_OR_DTYPE_MISMATCH" and "[1099511627776]" in r["detail"], r
    # An output the definition does not have is refused, not ignored.
    status, r = status_of(lambda case: dict(numpy_gqa_decode(case), extra=np.zeros(3, np.float32)))
    assert status == "SHAPE_OR_DTYPE_MISMATCH" and "extra" in r["detail"], r
    # One name is a list of one, not its letters.
    assert len(gqla.cases(PROFILE, ops="gqa.decode", filters=ONE[0])) == 1


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


def test_inputs_as_jax_arrays():
    try:
        import jax.numpy as jnp
    except ImportError:
        return
    for case in gqla.cases(PROFILE, filters=["gqa.decode:h=32;g=8;d=128;dv=128;sq=1;ctx=65,31;page=64;dtype="], seed=4)[:3]:
        j = case.jax()
        for name, a in case.inputs.items():
            assert j[name].shape == a.shape and j[name].dtype == a.dtype, (name, j[name].dtype, a.dtype)
            assert np.asarray(j[name]).tobytes() == a.tobytes(), name


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


# Cases that meet every decode operation's coverage core (shared with tests/certify.rs).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "example-core.txt")) as f:
    CORE = [line.strip() for line in f if line.strip() and not line.startswith("#")]
DECODE = dict(
    PROFILE,
    operations=["gqla.decode.absorb", "gqla.decode.gqa", "gqa.decode"],
    rope_layouts=["once", "per_group"],
    s_q={"min": 1, "max": 64},
)


def numpy_dense(case):
    """Dense attention in numpy on `case.dense()`: any decode operation in a dozen lines."""
    d = case.dense()
    q, k, v = (np.asarray(x, np.float32) for x in (d.q, d.k, d.v))
    b, s, h, w = q.shape
    kv = k.shape[2]
    scores = np.einsum("bskhw,bnkw->bkhsn", q.reshape(b, s, kv, h // kv, w), k) * np.float32(d.scale)
    scores = np.where(d.mask[:, :, None], scores, -np.inf)
    m = scores.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.exp(scores - m)
    total = p.sum(-1, keepdims=True)
    o = np.einsum("bkhsn,bnkv->bkhsv", p, v) / np.where(total > 0, total, 1)
    with np.errstate(divide="ignore"):  # an empty row's LSE is -inf
        lse = (m + np.log(total))[..., 0]
    out = o.transpose(0, 3, 1, 2, 4).reshape(b, s, h, -1)
    return {"out": out.astype(case.inputs["q"].dtype), "lse": lse.transpose(0, 3, 1, 2).reshape(b, s, h)}


def test_the_dense_view_certifies_every_decode_operation():
    cert = gqla.certify(numpy_dense, DECODE, filters=CORE, seed=12)
    assert cert.conformant, cert.summary()
    ops = {c["operation"]: c["must_pass"] for c in cert.report["coverage"]}
    assert all(ops[o] > 0 for o in DECODE["operations"]), ops
    # The token slots are the block table's, and the dense keys are the slots' keys.
    case = next(c for c in gqla.cases(DECODE, filters=CORE, seed=12) if c.page_size and c.op == "gqla.decode.gqa")
    indptr, indices = case.kv_slots()
    assert list(np.diff(indptr)) == case.seq_lens
    k, _ = case.slot_kv()
    d = case.dense()
    b = int(np.argmax(case.seq_lens))
    n = case.seq_lens[b]
    assert np.array_equal(np.asarray(d.k[b, :n], np.float32), np.asarray(k[indices[indptr[b] : indptr[b + 1]]], np.float32))
    assert d.mask[b, 0, -1].sum() == case.visible[b][-1] == n


# The FP8 tiled cases (suite 0.5): every one, with a profile that reads tiled records.
TILED = ["gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=65,31;page=64;dtype=bf16;kv=tiled"]
FP8 = dict(DECODE, operations=["gqla.decode.absorb"], fp8={"formats": ["tiled"], "scale_read": "arbitrary_f32"})


def test_fp8_tiled_caches_reach_a_kernel_as_bytes_and_certify():
    # Without an `fp8` entry, no tiled case is selected.
    assert not [c for c in gqla.cases(dict(DECODE, operations=["gqla.decode.absorb"])) if "kv=tiled" in c.id]
    cases = [c for c in gqla.cases(FP8, ops=["gqla.decode.absorb"], seed=5) if "kv=tiled" in c.id]
    assert len(cases) >= 8, [c.id for c in cases]
    case = cases[0]
    kv = case.inputs["kv"]
    assert kv.dtype == np.uint8 and kv.shape[-1] == 656, (kv.dtype, kv.shape)
    assert case.params["kv_cache"] == {"tiled": {"tile": 128, "scales": "pow2", "fp8": "e4m3fn"}}
    # The dequantised rows: finite where a sequence holds a key, powers of two times e4m3fn values.
    values = gqla.tiled_values(case)
    k, _ = case.slot_kv()
    indptr, indices = case.kv_slots()
    live = k[indices, 0]
    assert live.shape[-1] == 576 and np.isfinite(live).all(), live.shape
    assert np.array_equal(values.reshape(-1, 576)[indices], live)
    cert = gqla.certify(numpy_dense, FP8, ops=["gqla.decode.absorb"], filters=[c.id.split(";seed=")[0] for c in cases], seed=5)
    statuses = {r["status"] for r in cert.report["results"]}
    assert statuses == {"PASS"}, cert.summary()
    # A kernel that forgets the scales is caught on every tiled case.
    def no_scales(case):
        saved = case.params["kv_cache"]["tiled"]
        rec = case.inputs["kv"]
        d_c, tiles = case.d_c, case.d_c // saved["tile"]
        ones = np.ones(tiles, "<f4").view(np.uint8)
        forged = rec.copy()
        forged[..., d_c : d_c + 4 * tiles] = ones
        case.inputs["kv"] = forged
        try:
            return numpy_dense(case)
        finally:
            case.inputs["kv"] = rec
    cert = gqla.certify(no_scales, FP8, filters=TILED, seed=5)
    assert all(r["status"] != "PASS" for r in cert.report["results"]), cert.summary()


def test_per_tensor_fp8_caches_certify_on_both_paths():
    profile = dict(
        DECODE,
        operations=["gqla.decode.absorb", "gqla.decode.gqa"],
        fp8={"formats": ["per_tensor"], "flavours": ["e4m3fn", "e4m3fnuz"], "scale_read": "arbitrary_f32"},
    )
    cases = [c for c in gqla.cases(profile, seed=6) if "kv=fp8" in c.id]
    assert {c.op for c in cases} == {"gqla.decode.absorb", "gqla.decode.gqa"} and len(cases) >= 10, [c.id for c in cases]
    gqa = next(c for c in cases if c.op == "gqla.decode.gqa" and "e4m3fnuz" in c.id)
    assert gqa.inputs["v"].dtype == np.uint8 and float(gqa.inputs["v_scale"]) == np.float32(0.37)
    v = gqla.cache_values(gqa, "v")
    assert np.isnan(v).any() and np.isfinite(v[np.isfinite(v)]).all()
    filters = sorted({c.id.split(";seed=")[0].split(";poison=")[0] for c in cases})
    cert = gqla.certify(numpy_dense, profile, filters=filters, seed=6)
    statuses = {r["status"] for r in cert.report["results"]}
    assert statuses == {"PASS"}, cert.summary()
    # Through a pack: the caches travel as u8 bytes and the scales as f32 scalars.
    with tempfile.TemporaryDirectory() as tmp:
        pack, outs = os.path.join(tmp, "pack"), os.path.join(tmp, "outs")
        n = gqla.export_pack(pack, profile=profile, filters=filters, seed=6)
        manifest = json.load(open(os.path.join(pack, "manifest.json")))
        tensors = {t["name"]: t["dtype"] for c in manifest["cases"] if "kv=fp8" in c["id"] for t in c["input_tensors"]}
        assert tensors["v"] == "u8" and tensors["k_scale"] == "f32" and tensors["v_scale"] == "f32", tensors
        assert gqla.run_pack(numpy_dense, pack, outs, profile) == n
        cert = gqla.certify_pack(pack, outs)
        assert {r["status"] for r in cert.report["results"]} == {"PASS"}, cert.summary()
    # Without e4m3fnuz, its cases are left out by declaration.
    narrow = dict(profile, fp8=dict(profile["fp8"], flavours=["e4m3fn"]))
    cert = gqla.certify(numpy_dense, narrow, filters=filters, seed=6)
    left_out = [r for r in cert.report["results"] if r["status"] == "NOT_SUPPORTED"]
    assert left_out and all("e4m3fnuz" in r["id"] for r in left_out), cert.summary()


def test_filters_narrow_the_operations():
    cases = gqla.cases(PROFILE, ops=["gqa.decode"], filters=ONE)
    assert len(cases) == 1 and cases[0].id.startswith(ONE[0]), [c.id for c in cases]
    # A filter wider than an operation is that operation; one outside every operation is an error.
    assert len(gqla.cases(PROFILE, ops=["gqa.decode"], filters=["gqa"])) == len(gqla.cases(PROFILE, ops=["gqa.decode"]))
    try:
        gqla.cases(DECODE, ops=["gqa.decode"], filters=["gqla.decode.absorb:"])
    except ValueError as e:
        assert "selects none of the operations gqa.decode" in str(e), e
    else:
        raise AssertionError("a filter outside the operations was accepted")


def test_stability_over_fresh_seeds():
    with tempfile.TemporaryDirectory() as out:
        s = gqla.stability(numpy_gqa_decode, PROFILE, seeds=2, filters=ONE, out=out)
        assert s.stable and len(set(s.seeds)) == 2 and s.selected == 1, s.summary()
        assert os.path.exists(os.path.join(out, "seeds.md"))
        assert all(os.path.exists(os.path.join(out, f"seed-{seed}", "report.json")) for seed in s.seeds)
    calls = []

    def fails_later(case):  # right on the first seed's cases, wrong after
        calls.append(1)
        o = numpy_gqa_decode(case)
        if len(calls) > 2:
            o["out"] = o["out"] * 2
        return o

    s = gqla.stability(fails_later, PROFILE, seeds=2, filters=ONE)
    # It passed on the first seed only (each seed may add further precision draws of it).
    assert not s.stable and len(s.unstable) == 1 and 1 <= s.unstable[0][1] < s.unstable[0][2], s.summary()
    assert "0 of 1 cases passed on all 2 seeds" in s.summary(), s.summary()


def test_twins_are_compared_whatever_the_order():
    def reads_poison(case):
        o = numpy_gqa_decode(case)
        if case.poison == "garbage":  # a last-bit change: within every bound, but not the base's bits
            o["lse"] = np.where(np.isfinite(o["lse"]), np.nextafter(o["lse"], np.float32(np.inf)), o["lse"])
        return o

    run, _ = gqla._run(reads_poison, PROFILE, ["gqa.decode"], [], 3, "twin", "", "", 60.0)
    cases = [c for c, _ in run.cases()]
    twin = next(i for i, c in enumerate(cases) if c.poison == "garbage")
    base = next(i for i, c in enumerate(cases) if c.id == cases[twin].id.replace(";poison=garbage", ""))
    first = json.loads(run.call(twin))
    assert first["status"] == "PASS", first  # its base has not run yet
    assert json.loads(run.call(base))["status"] == "PASS"
    text, _ = run.finish()
    results = {r["id"]: r for r in json.loads(text)["results"]}
    assert results[cases[twin].id]["status"] == "POISON_DEPENDENT", results[cases[twin].id]


def test_a_timeout_stops_the_run():
    import time

    def hangs(case):
        time.sleep(3)
        return numpy_gqa_decode(case)

    cert = gqla.certify(hangs, PROFILE, filters=CORE[-5:-3], seed=3, timeout=0.5)
    statuses = [r["status"] for r in cert.report["results"] if r["status"] != "NOT_SUPPORTED"]
    assert statuses[0] == "TIMEOUT" and len(statuses) > 1, statuses
    assert all(s == "RUNTIME_ERROR" for s in statuses[1:]), statuses
    assert "timed out before it" in cert.failures[1]["message"], cert.failures[1]
    assert "no result within the time limit" in cert.summary(), cert.summary()


def test_ctrl_c_stops_a_run_while_the_kernel_runs():
    import signal
    import threading
    import time

    def slow(case):
        time.sleep(2)
        return numpy_gqa_decode(case)

    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        gqla.certify(slow, PROFILE, filters=ONE, seed=3, timeout=30)
    except KeyboardInterrupt:
        took = time.monotonic() - start
    else:
        raise AssertionError("the interrupt was lost")
    assert took < 1.5, took  # not after the kernel's 2 s
    while gqla._native.in_flight():  # its call goes on in its thread; let it end
        time.sleep(0.05)


def test_a_kernel_that_holds_the_interpreter_ends_the_process():
    import subprocess
    import textwrap

    script = textwrap.dedent(
        """
        import ctypes, gqla
        from test_package import PROFILE, ONE, numpy_gqa_decode
        def holds(case):
            ctypes.PyDLL(None).sleep(30)  # libc's sleep, the GIL held
            return numpy_gqa_decode(case)
        gqla.certify(holds, PROFILE, filters=ONE, seed=3, timeout=0.5)
        """
    )
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, GQLA_HELD_LIMIT_S="2", PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), here]))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=25)
    assert r.returncode == 124 and "has held the Python interpreter for 2 s" in r.stderr, (r.returncode, r.stderr)


def test_packs_from_python():
    profile = dict(PROFILE, dtypes=["f32", "bf16"])
    gqa_core = [f for f in CORE if f.startswith("gqa.decode:")]
    with tempfile.TemporaryDirectory() as tmp:
        pack, outs = os.path.join(tmp, "pack"), os.path.join(tmp, "outs")
        n = gqla.export_pack(pack, profile=profile, filters=gqa_core, seed=11)
        assert n == len(gqla.cases(profile, filters=gqa_core, seed=11)), n
        ran = gqla.run_pack(numpy_gqa_decode, pack, outs, profile, name="numpy-gqa", version="1")
        assert ran == n
        cert = gqla.certify_pack(pack, outs, out=os.path.join(tmp, "cert"))
        assert cert.conformant, cert.summary()
        assert cert.report["seed_origin"] == "chosen_by_exporter" and cert.report["kernel"]["name"] == "numpy-gqa"
        # Outputs changed after the run are judged as they are.
        manifest = json.load(open(os.path.join(pack, "manifest.json")))
        first = manifest["cases"][0]
        zeros = [(t["name"], "f32", t["shape"], bytes(4 * int(np.prod(t["shape"])))) for t in first["output_tensors"]]
        gqla._native.write_outputs(os.path.join(outs, first["outputs"]), zeros)
        cert = gqla.certify_pack(pack, outs)
        assert not cert.conformant and cert.failures[0]["id"] == first["id"], cert.summary()
        # A pack drawn for another profile is refused, naming the manifest.
        try:
            gqla.certify_pack(pack, outs, profile=dict(profile, dtypes=["f32"]))
        except ValueError as e:
            assert "manifest.json: the pack was drawn for another profile" in str(e), e
        else:
            raise AssertionError("a pack for another profile was certified")
        # A kernel that raises on some cases: the others are written, and the error names them.
        partial = os.path.join(tmp, "partial")

        def fails_on_f32(case):
            if case.dtype == "f32":
                raise ValueError("no f32 kernel")
            return numpy_gqa_decode(case)

        try:
            gqla.run_pack(fails_on_f32, pack, partial, profile)
        except gqla.PackRunError as e:
            failed = e.failed
            assert failed and all("dtype=f32" in c for c in failed) and e.ran == n - len(failed), e
        else:
            raise AssertionError("a kernel that raised was not reported")
        cert = gqla.certify_pack(pack, partial)
        assert {r["status"] for r in cert.failures} == {"RUNTIME_ERROR"} and len(cert.failures) == len(failed)
        try:
            gqla.run_pack(numpy_gqa_decode, pack, outs, dict(profile, dtypes=["f32"]))
        except ValueError as e:
            assert "drawn for another profile" in str(e), e
        else:
            raise AssertionError("a pack for another profile was run")
        # A pack whose inputs this package would not draw (another build exported it) is refused
        # before the kernel runs on other inputs than the pack's.
        forged = dict(manifest)
        forged["cases"] = [dict(c, inputs_sha256="0" * 64) if i == 0 else c for i, c in enumerate(manifest["cases"])]
        json.dump(forged, open(os.path.join(pack, "manifest.json"), "w"))
        try:
            gqla.run_pack(numpy_gqa_decode, pack, os.path.join(tmp, "other"), profile)
        except ValueError as e:
            assert "draws inputs with SHA-256" in str(e) and "another build" in str(e), e
        else:
            raise AssertionError("a pack of another build was run")


if __name__ == "__main__":
    tests = [f for name, f in sorted(globals().items()) if name.startswith("test_") and callable(f)]
    for t in tests:
        t()
        print("ok", t.__name__, flush=True)
    print(f"{len(tests)} passed")
    sys.exit(0)
