"""The pytest plugin as a kernel author uses it: `pytest --gqla-profile FILE` on a test module
whose test functions take `gqla_case`, run in a subprocess as the author would run it."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET

import gqla

HERE = os.path.dirname(os.path.abspath(__file__))

# A module of kernels: the numpy GQA decode of test_package.py, and broken ones.
MODULE = textwrap.dedent(
    """
    import numpy as np
    import pytest
    from test_package import numpy_gqa_decode

    def test_numpy(gqla_case):
        return numpy_gqa_decode(gqla_case)

    @pytest.fixture
    def factor():
        return 1.05

    @pytest.mark.gqla(name="scaled-f16")
    def test_scaled(gqla_case, factor):
        o = numpy_gqa_decode(gqla_case)
        if gqla_case.dtype == "f16":
            o["out"] = (o["out"].astype(np.float32) * factor).astype(np.float16)
        return o

    def test_raises(gqla_case):
        if gqla_case.s_q == 2:
            raise ZeroDivisionError("kernel bug on s_q = 2")
        return numpy_gqa_decode(gqla_case)

    def test_poison_reader(gqla_case):
        o = numpy_gqa_decode(gqla_case)
        if gqla_case.poison == "garbage":
            o["out"] = o["out"] + np.float32(0)  # same values: bitwise equal, passes
            up = np.nextafter(o["lse"], np.float32(np.inf), dtype=np.float32)
            o["lse"] = np.where(np.isfinite(o["lse"]), up, o["lse"])  # an ulp, well inside the bound
        return o

    @pytest.mark.parametrize("wrong", [False, True])
    def test_variants(gqla_case, wrong):
        o = numpy_gqa_decode(gqla_case)
        return {k: np.zeros_like(v) for k, v in o.items()} if wrong else o

    def test_interrupts(gqla_case):
        raise KeyboardInterrupt("from the kernel")

    def test_unrelated():
        assert True
    """
)

PROFILE = {
    "operations": ["gqa.decode"],
    "dtypes": ["f32", "bf16", "f16"],
    "page_sizes": "any",
    "s_q": {"min": 1, "max": 4},
    "lse": {"dtype": "f32", "base": "e", "empty_row": "neg_inf"},
    "split_counts": "ignored",
    "out_empty_row": "zero",
}
# Cases of every kind the module's kernels need (s_q 1 and 2, f16, a poison twin) that meet
# gqa.decode's coverage core, so that a correct kernel is CONFORMANT.
FILTERS = [
    "gqa.decode:h=32;g=8;d=128;dv=128;sq=1;ctx=65,31;page=64;dtype=",
    "gqa.decode:h=32;g=8;d=128;dv=128;sq=2;ctx=0,17,pad,1,130;page=64;dtype=f16",
    "gqa.decode:h=32;g=8;d=128;dv=128;sq=2;ctx=4097,31;page=64;dtype=bf16;splits=7;",
]


def pytest_run(tmp, *args):
    with open(os.path.join(tmp, "profile.json"), "w") as f:
        json.dump(PROFILE, f)
    with open(os.path.join(tmp, "test_kernels.py"), "w") as f:
        f.write(MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), HERE]))
    filters = [a for f in FILTERS for a in ("--gqla-filter", f)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "gqla.pytest_plugin", "-p", "no:cacheprovider", "-rN",
         "--gqla-profile", "profile.json", "--gqla-seed", "7", *filters, *args, "test_kernels.py"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )


def junit_cases(path):
    cases = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        failure = tc.find("failure")
        cases[tc.get("name")] = None if failure is None else (failure.get("message", "") + (failure.text or ""))
    return cases


def test_each_case_is_an_item_judged_by_the_suite():
    with tempfile.TemporaryDirectory() as tmp:
        r = pytest_run(tmp, "--junitxml", "junit.xml", "--gqla-out", "certs")
        assert r.returncode == 1, r.stdout + r.stderr
        cases = junit_cases(os.path.join(tmp, "junit.xml"))
        selected = gqla.cases(PROFILE, filters=FILTERS, seed=7)
        item = lambda test, c: f"{test}[{c.id}]"  # noqa: E731
        numpy = {n: f for n, f in cases.items() if n.startswith("test_numpy[")}
        # Every selected case, then the certificate: all pass.
        assert set(numpy) == {item("test_numpy", c) for c in selected} | {"test_numpy[certificate]"}, numpy
        assert not any(numpy.values()), numpy
        report = json.load(open(os.path.join(tmp, "certs", "test_numpy", "report.json")))
        assert report["verdict"] == "CONFORMANT" and report["seed"] == 7, report["verdict"]
        # The f16 cases of a kernel 5% off fail with the bound they broke, in pytest's report.
        scaled = {n: f for n, f in cases.items() if n.startswith("test_scaled[") and f}
        f16 = {item("test_scaled", c) for c in selected if c.dtype == "f16"}
        assert set(scaled) == f16 | {"test_scaled[certificate]"}, scaled
        assert all("NUMERICAL_MISMATCH" in scaled[n] and "(bound " in scaled[n] for n in f16), scaled
        assert "NOT CONFORMANT" in scaled["test_scaled[certificate]"], scaled
        assert json.load(open(os.path.join(tmp, "certs", "scaled-f16", "report.json")))["kernel"]["name"] == "scaled-f16"
        # A kernel that raises fails with its own traceback.
        assert "ZeroDivisionError: kernel bug on s_q = 2" in r.stdout and 'raise ZeroDivisionError("kernel bug' in r.stdout, r.stdout
        raises = {n for n, f in cases.items() if n.startswith("test_raises[") and f}
        assert raises == {item("test_raises", c) for c in selected if c.s_q == 2} | {"test_raises[certificate]"}, raises
        # A twin whose LSE moved by an ulp: POISON_DEPENDENT on the twin.
        poison = {n: f for n, f in cases.items() if n.startswith("test_poison_reader[") and f}
        assert set(poison) == {
            n for n in cases if n.startswith("test_poison_reader[") and ("poison=garbage" in n or "certificate" in n)
        }, poison
        assert "POISON_DEPENDENT" in poison["test_poison_reader[certificate]"], poison
        assert cases["test_unrelated"] is None
        # A parametrized kernel is one kernel per variant: the wrong one fails alone.
        right = {n: f for n, f in cases.items() if n.startswith("test_variants[") and n.endswith("-False]")}
        wrong = {n: f for n, f in cases.items() if n.startswith("test_variants[") and n.endswith("-True]")}
        assert len(right) == len(wrong) == len(selected) + 1, (right, wrong)
        assert not any(right.values()) and all(wrong.values()), (right, wrong)
        assert "NOT CONFORMANT" in wrong["test_variants[certificate-True]"]
        # A KeyboardInterrupt from a kernel fails its items; the session goes on.
        interrupts = {n: f for n, f in cases.items() if n.startswith("test_interrupts[")}
        assert len(interrupts) == len(selected) + 1 and all(interrupts.values()), interrupts
        assert all("KeyboardInterrupt: from the kernel" in f for f in interrupts.values()), interrupts
        assert "gqla certificates" in r.stdout and "CONFORMANT — test_numpy" in r.stdout, r.stdout


def test_one_case_or_the_certificate_alone():
    with tempfile.TemporaryDirectory() as tmp:
        # -k picks items as usual: one case of one kernel.
        r = pytest_run(tmp, "-k", "test_numpy and 4097")
        long = [c for c in gqla.cases(PROFILE, filters=FILTERS, seed=7) if "4097" in c.id]
        assert r.returncode == 0 and f"{len(long)} passed" in r.stdout, r.stdout + r.stderr
        # The certificate item runs every case it needs itself.
        r = pytest_run(tmp, "-k", "test_numpy and certificate")
        assert r.returncode == 0 and "1 passed" in r.stdout and "CONFORMANT — test_numpy" in r.stdout, r.stdout


def test_a_missing_or_bad_profile_is_a_usage_error():
    with tempfile.TemporaryDirectory() as tmp:
        pytest_run(tmp)  # writes the files
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.environ.get("PYTHONPATH", ""), HERE]))
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "gqla.pytest_plugin", "-p", "no:cacheprovider", "test_kernels.py"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
        )
        # A collection error: pytest exits 2 (interrupted) and says why.
        assert r.returncode == 2 and "no gqla profile: pass --gqla-profile FILE" in r.stdout, r.stdout + r.stderr
        with open(os.path.join(tmp, "profile.json"), "w") as f:
            json.dump(dict(PROFILE, dtypes=["f8"]), f)
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "gqla.pytest_plugin", "-p", "no:cacheprovider",
             "--gqla-profile", "profile.json", "test_kernels.py"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
        )
        assert r.returncode == 2 and "profile field `dtypes" in r.stdout, r.stdout + r.stderr
