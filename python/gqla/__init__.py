"""Certify attention kernels written in Python against the GQLA conformance suite.

The cases, their inputs, the f64 and naive references, the profile, the judge and the
certificates are the Rust suite's own (``gqla._native``); this module only turns tensors into
arrays and back::

    import gqla
    cert = gqla.certify(my_decode, profile={...}, ops=["gqla.decode.absorb"])
    assert cert.conformant, cert.summary()

``my_decode(case)`` gets a :class:`Case` (typed parameters, ``case.inputs`` as numpy arrays,
bf16 through ml_dtypes) and returns its outputs: a dict ``{"out": ..., "lse": ...}``, or the
arrays in the order of ``case.output_shapes``, as numpy, torch or JAX arrays of any float dtype.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import _native

__all__ = ["Case", "Certificate", "Reference", "SUITE_VERSION", "cases", "certify"]

SUITE_VERSION: str = _native.SUITE_VERSION

# The parameters a case exposes, straight from the suite.
_PARAMETERS = (
    "id", "op", "dtype", "batch", "heads", "groups", "d_c", "d_n", "d_r", "d_v", "s_q",
    "seq_lens", "page_size", "scale", "scale_bits", "splits", "poison", "seed", "rope_layout",
)


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"f32": np.float32, "f16": np.float16, "f64": np.float64, "i32": np.int32}[name])


def _profile_json(profile: Mapping[str, Any] | str | os.PathLike) -> str:
    """A profile as the suite reads it: a dict, JSON text, or a path to a JSON file."""
    if isinstance(profile, Mapping):
        return json.dumps(profile)
    if isinstance(profile, os.PathLike) or (isinstance(profile, str) and not profile.lstrip().startswith("{")):
        with open(profile, encoding="utf-8") as f:
            return f.read()
    return profile


@dataclass(frozen=True)
class Reference:
    """A case's references: ``truth`` the exact f64 result, ``naive`` the same-precision one whose
    error the tolerance compares a kernel's with; each a dict of float64 arrays by output name."""

    truth: dict[str, np.ndarray]
    naive: dict[str, np.ndarray]


class Case:
    """One case of the suite as a kernel sees it: its parameters as attributes (``heads``,
    ``groups``, ``d_c``, ``s_q``, ``seq_lens``, ``page_size``, ``scale`` as the exact f32, ...), its
    inputs as arrays, and the shapes of the outputs it must return."""

    def __init__(self, native: Any, tensors: Sequence[tuple] | None = None):
        self._native = native
        self._tensors = tensors
        self._inputs: dict[str, np.ndarray] | None = None

    def __getattr__(self, name: str) -> Any:
        if name in _PARAMETERS:
            return getattr(self._native, name)
        raise AttributeError(name)

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The input tensors by name (definitions.json's tensor table), as numpy arrays: the
        floating-point ones in the case dtype (bf16 as ml_dtypes.bfloat16), indices as int32."""
        if self._inputs is None:
            tensors = self._tensors if self._tensors is not None else self._native.input_tensors()
            self._inputs = {
                name: np.frombuffer(data, dtype=_numpy_dtype(dtype)).reshape(shape)
                for name, dtype, shape, data in tensors
            }
        return self._inputs

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter as a vector pack's manifest lists it: an adapter written for packs
        reads the same dict."""
        return json.loads(self._native.params_json())

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """The outputs the kernel returns under its profile, with their shapes, in order."""
        return {name: tuple(shape) for name, shape in self._native.output_shapes()}

    def torch(self, device: str | None = None) -> dict[str, Any]:
        """The inputs as torch tensors: through DLPack without a copy on the CPU (bf16 through
        an int16 view), then moved to `device` if given."""
        import torch

        out = {}
        for name, a in self.inputs.items():
            if a.dtype.name == "bfloat16":
                t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
            else:
                t = torch.from_numpy(a)
            out[name] = t.to(device) if device else t
        return out

    def reference(self) -> Reference:
        """The exact and the naive same-precision results on this case's inputs."""
        truth, naive = {}, {}
        for name, (shape, t, n) in self._native.reference().items():
            truth[name] = np.frombuffer(t, dtype=np.float64).reshape(shape)
            naive[name] = np.frombuffer(n, dtype=np.float64).reshape(shape)
        return Reference(truth, naive)

    def __repr__(self) -> str:
        return f"<gqla.Case {self.id}>"


def cases(profile, ops: Iterable[str] = (), filters: Iterable[str] = (), seed: int = 0) -> list[Case]:
    """The cases `profile` selects among operations `ops` and id prefixes `filters`, drawn from
    suite seed `seed` (0: the published suite) as the profile declares them."""
    return [Case(c) for c in _native.cases(_profile_json(profile), list(ops), list(filters), seed)]


def _to_numpy(x: Any) -> np.ndarray:
    """Any array (numpy, torch, JAX, or anything numpy reads) as a numpy array, on the CPU."""
    module = type(x).__module__
    if module.startswith("torch"):
        import torch

        x = x.detach().to("cpu")
        if x.dtype == torch.bfloat16:
            import ml_dtypes

            return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()
    return np.asarray(x)


def _returned_tensors(case: Case, returned: Any) -> list[tuple] | str:
    """The kernel's return value as (name, dtype, shape, bytes), or why it is not one."""
    names = list(case.output_shapes)
    if isinstance(returned, Mapping):
        items = list(returned.items())
    elif isinstance(returned, (tuple, list)):
        if len(returned) != len(names):
            return f"the kernel returned {len(returned)} arrays, expected {len(names)}: {', '.join(names)}"
        items = list(zip(names, returned))
    else:
        items = [(names[0], returned)] if len(names) == 1 else None
        if items is None:
            return f"the kernel returned a {type(returned).__name__}, expected a dict of {', '.join(names)}"
    tensors = []
    for name, value in items:
        try:
            a = _to_numpy(value)
        except Exception as e:  # noqa: BLE001 - any failure to read it is the kernel's
            return f"output `{name}`: not an array ({type(value).__name__}: {e})"
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        tensors.append((str(name), a.dtype.name, list(a.shape), np.ascontiguousarray(a).tobytes()))
    return tensors


@dataclass(frozen=True)
class Certificate:
    """A certification's outcome: ``report`` is report.json's content (the same as `gqla certify`
    writes), ``verdict`` its verdict, ``conformant`` whether it is CONFORMANT."""

    report: dict[str, Any]
    verdict_line: str

    @property
    def verdict(self) -> str:
        return self.report["verdict"]

    @property
    def conformant(self) -> bool:
        return bool(self.report["conformant"])

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The cases that did not pass (further precision draws included)."""
        every = self.report["results"] + self.report["precision_draws"]
        return [r for r in every if r["status"] not in ("PASS", "NOT_SUPPORTED")]

    def summary(self) -> str:
        """The verdict line, then each failed case with its cause."""
        lines = [self.verdict_line]
        for r in self.failures:
            lines.append(f"  {r['status']} {r['id']}: {_cause(r)}")
        return "\n".join(lines)


def _cause(r: Mapping[str, Any]) -> str:
    for key in ("message", "detail", "reason"):
        if key in r:
            return str(r[key])
    checks = r.get("checks") or []
    return "; ".join(
        f"{c['tensor']}: max |error| {c['max_abs_err']:.3e} (bound {c['max_abs_bound']:.3e}), "
        f"1 - cos {c['one_minus_cos']:.3e} (bound {c['one_minus_cos_bound']:.3e}), "
        f"{c['special_mismatches']} special-value mismatches"
        for c in checks
    )


def certify(
    kernel: Callable[[Case], Any],
    profile,
    ops: Iterable[str] = (),
    filters: Iterable[str] = (),
    seed: int | None = None,
    name: str | None = None,
    out: str | os.PathLike | None = None,
    version: str = "",
    description: str = "",
    timeout: float = 600.0,
) -> Certificate:
    """Certify `kernel` on the cases of `ops` (and id prefixes `filters`) as `profile` declares,
    on a fresh seed unless `seed` is given; the certificate files go to `out` when given. A kernel
    that raises gets RUNTIME_ERROR with the exception's last line; one that writes to its inputs,
    INPUT_MUTATED; one that returns other shapes or non-float arrays, SHAPE_OR_DTYPE_MISMATCH."""

    def adapter(native, tensors):
        case = Case(native, tensors)
        return _returned_tensors(case, kernel(case))

    text, line = _native.certify(
        adapter,
        _profile_json(profile),
        name or getattr(kernel, "__name__", "python-kernel"),
        list(ops),
        list(filters),
        seed,
        None if out is None else os.fspath(out),
        version,
        description,
        timeout,
    )
    return Certificate(json.loads(text), line)
