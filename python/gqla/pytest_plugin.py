"""pytest plugin: each case of the suite a test item, judged by the suite.

A test function that takes ``gqla_case`` is a kernel: it gets a :class:`gqla.Case` and returns
the kernel's outputs (a dict, or the arrays in ``case.output_shapes`` order); the plugin judges
them::

    import pytest

    @pytest.mark.gqla(ops=["gqa.decode"], name="my-kernel", version="1.2")  # optional
    def test_my_decode(gqla_case):
        return my_decode(gqla_case)

    pytest --gqla-profile profile.json tests/  [--gqla-seed S] [--gqla-out DIR] [--junitxml FILE]

Each case the profile selects is an item ``test_my_decode[<case id>]`` that fails with the
status, the bound the kernel broke and its figures (a kernel that raises fails with its own
traceback). A last item, ``test_my_decode[certificate]``, holds what is judged over cases: the
precision families (drawn again where BORDERLINE), the coverage core, twin comparisons. It runs
any case not run yet, and passes only when the certificate is CONFORMANT; ``--gqla-out`` writes
the certificate files (report.json, report.md, junit.xml) into DIR/<test name>. A test that is
also parametrized otherwise is one kernel per combination of its other parameters, each with its
own run and certificate, on the same seed. ``case.reference()`` is refused inside a kernel.

Installed with the package (an entry point); without installing, ``-p gqla.pytest_plugin``.
Each kernel draws a fresh seed unless ``--gqla-seed`` is given; the certificate item names it.
"""

from __future__ import annotations

import json
import os

import pytest

import gqla

CERTIFICATE = "certificate"


def pytest_addoption(parser):
    group = parser.getgroup("gqla", "GQLA conformance suite")
    group.addoption("--gqla-profile", metavar="FILE", help="the kernels' profile (JSON); a gqla marker's profile= wins")
    group.addoption("--gqla-seed", type=int, metavar="S", help="draw the cases from suite seed S (default: a fresh seed per kernel)")
    group.addoption("--gqla-out", metavar="DIR", help="write each kernel's certificate into DIR/<test name>")
    group.addoption("--gqla-filter", action="append", default=[], metavar="PREFIX", help="only the case ids with this prefix (repeatable)")
    group.addoption("--gqla-timeout", type=float, default=600.0, metavar="SECONDS", help="a case's time limit (default 600)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "gqla(profile=None, ops=None, name=None, version='', description='', environment=None): the kernel's declaration "
        "(profile: a dict, JSON text or a path; ops: the operations, default the profile's)",
    )
    config._gqla_verdicts = []


def pytest_report_header(config):
    seed = config.getoption("gqla_seed")
    return f"gqla: suite {gqla.SUITE_VERSION}, " + (f"seed {seed}" if seed is not None else "a fresh seed per kernel")


class _Kernel:
    """One test function's certification: a run per combination of its other parameters (a
    parametrized or fixture-parametrized test is one kernel per combination), all on one seed."""

    def __init__(self, name, text, ops, filters, seed, kw, timeout):
        self.name, self.args = name, (text, ops, filters, kw, timeout)
        self.first = self._new(seed)
        self.seed = self.first[0].seed
        self.runs = {}

    def _new(self, seed):
        text, ops, filters, kw, timeout = self.args
        return gqla._run(
            None, text, ops, filters, seed, self.name, kw.get("version", ""), kw.get("description", ""),
            timeout, kw.get("environment"),
        )

    def run(self, key):
        """The run of one combination of the other parameters (the first made at collection)."""
        if key not in self.runs:
            self.runs[key] = self.first if not self.runs else self._new(self.seed)
        return self.runs[key]


class _Slot:
    """One item's parameter: a case of a kernel's run, or its certificate."""

    def __init__(self, kernel, index=None, case_id=None):
        self.kernel, self.index, self.case_id = kernel, index, case_id

    def __repr__(self):
        return self.case_id or CERTIFICATE


def pytest_generate_tests(metafunc):
    if "gqla_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    marker = metafunc.definition.get_closest_marker("gqla")
    kw = dict(marker.kwargs) if marker else {}
    profile = kw.get("profile") or config.getoption("gqla_profile")
    where = metafunc.definition.nodeid
    if profile is None:
        raise pytest.UsageError(f"{where}: no gqla profile: pass --gqla-profile FILE or mark it @pytest.mark.gqla(profile=...)")
    try:
        text = gqla._profile_json(profile)
        ops = gqla._names(kw.get("ops") or json.loads(text).get("operations") or [], "ops")
        kernel = _Kernel(
            kw.get("name") or metafunc.function.__name__, text, ops, config.getoption("gqla_filter"),
            config.getoption("gqla_seed"), kw, config.getoption("gqla_timeout"),
        )
    except (OSError, ValueError, TypeError, OverflowError) as e:
        source = f"profile {profile}" if isinstance(profile, (str, os.PathLike)) and len(str(profile)) < 200 else "profile"
        raise pytest.UsageError(f"{where}: gqla {source}: {type(e).__name__}: {e}") from None
    slots = [
        _Slot(kernel, i, case.id)
        for i, (case, excluded) in enumerate(kernel.first[0].cases())
        if excluded is None
    ]
    slots.append(_Slot(kernel))
    metafunc.parametrize("gqla_case", slots, ids=[repr(s) for s in slots])


def _key(callspec):
    """The item's other parameters: which of the kernel's runs it belongs to."""
    return tuple((k, repr(v)) for k, v in sorted(callspec.params.items()) if k != "gqla_case")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    callspec = getattr(pyfuncitem, "callspec", None)
    slot = callspec.params.get("gqla_case") if callspec else None
    if not isinstance(slot, _Slot):
        return None
    key = _key(callspec)
    run, adapter = slot.kernel.run(key)
    args = {n: pyfuncitem.funcargs[n] for n in pyfuncitem._fixtureinfo.argnames}
    function = pyfuncitem.obj

    def kernel(case):
        return function(**dict(args, gqla_case=case))

    adapter.kernel = kernel
    if slot.index is None:
        label = slot.kernel.name + ("[" + "-".join(v for _, v in key) + "]" if key else "")
        _certificate(run, label, pyfuncitem.config)
    else:
        _case(run, adapter, slot.index)
    return True


def _case(run, adapter, index):
    adapter.error = None
    r = json.loads(run.call(index))
    if r["status"] == "PASS":
        return
    error = adapter.error
    # The kernel's own exception, with its traceback; a KeyboardInterrupt or SystemExit it
    # raised fails this item only (pytest would end the session on it).
    if r["status"] == "RUNTIME_ERROR" and isinstance(error, Exception):
        raise error
    pytest.fail(f"{r['status']} {r['id']}\n{gqla._cause(r)}", pytrace=False)


def _certificate(run, label, config):
    out = config.getoption("gqla_out")
    dest = None if out is None else os.path.join(out, "".join(c if c.isalnum() or c in "-_.[]" else "_" for c in label))
    try:
        cert = gqla._certify_run(run, dest)
    except (OSError, RuntimeError) as e:
        pytest.fail(f"gqla: {e}", pytrace=False)
    line = cert.verdict_line
    config._gqla_verdicts.append(f"{line} [seed {run.seed}: --gqla-seed {run.seed} draws the same cases]")
    if not cert.conformant:
        pytest.fail(f"{cert.summary()}\nseed {run.seed} ({run.origin}): rerun with --gqla-seed {run.seed}", pytrace=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    verdicts = getattr(config, "_gqla_verdicts", [])
    if verdicts:
        terminalreporter.section("gqla certificates")
        for v in verdicts:
            terminalreporter.write_line(v)
