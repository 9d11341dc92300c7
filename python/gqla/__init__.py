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

import atexit
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import _native

__all__ = [
    "Case", "Certificate", "Dense", "Reference", "SUITE_VERSION", "Stability", "cases", "certify",
    "PackRunError", "cache_values", "certify_pack", "export_pack", "main", "run_pack", "stability", "tiled_values",
    "torch_tensor",
]

SUITE_VERSION: str = _native.SUITE_VERSION

# A kernel call that timed out goes on in its own thread; the interpreter must not finalize under
# it (its thread would unwind through the native module). At exit, wait for it a while; if it
# still runs, leave without finalizing, with a failing status.
_EXIT_WAIT = 60.0


@atexit.register
def _wait_for_kernels() -> None:
    deadline = time.monotonic() + _EXIT_WAIT
    while _native.in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    if _native.in_flight():
        sys.stderr.write(f"gqla: a kernel call that timed out still runs after {_EXIT_WAIT:.0f} s; exiting now (status 1)\n")
        sys.stderr.flush()
        os._exit(1)

# The parameters a case exposes, straight from the suite.
_PARAMETERS = (
    "id", "op", "dtype", "batch", "heads", "groups", "d_c", "d_n", "d_r", "d_v", "s_q",
    "seq_lens", "page_size", "scale", "scale_bits", "splits", "poison", "seed", "rope_layout",
)


def _bfloat16() -> np.dtype | None:
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _array(data, dtype: str, shape) -> np.ndarray:
    """Little-endian bytes as a numpy array: bf16 as ml_dtypes.bfloat16, or, without ml_dtypes,
    as float32 holding the same values exactly."""
    if dtype == "bf16":
        bf16 = _bfloat16()
        if bf16 is None:
            bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(shape)
        return np.frombuffer(data, dtype=bf16).reshape(shape)
    kind = {"f32": "<f4", "f16": "<f2", "f64": "<f8", "i32": "<i4", "u8": "u1"}[dtype]
    return np.frombuffer(data, dtype=kind).reshape(shape)


def torch_tensor(a: np.ndarray, device: str | None = None):
    """A numpy array as a torch tensor, without a copy on the CPU (bf16 through an int16 view)."""
    import torch

    t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if a.dtype.name == "bfloat16" else torch.from_numpy(a)
    return t.to(device) if device else t


def _names(values: Iterable[str] | str, what: str) -> list[str]:
    """A list of names; one name alone is a list of one (a string is not split into letters)."""
    if isinstance(values, str):
        return [values]
    names = list(values)
    if not all(isinstance(v, str) for v in names):
        raise TypeError(f"{what}: expected strings, got {names!r}")
    return names


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


@dataclass(frozen=True)
class Dense:
    """A decode case as dense attention (numpy, in the case dtype): ``q`` [B, s_q, H, W];
    ``k`` [B, N, K, W] and ``v`` [B, N, K, d_v] for K KV heads (the groups; 1 on the absorb path,
    whose keys are the cache rows [c; k^R] and values their first d_c columns), zero past each
    sequence's length; ``mask`` [B, 1, s_q, N], True where a query row sees the key; query head h
    reads KV head h // (H / K). ``out`` must come back as [B, s_q, H, d_v]."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray
    scale: float


def _e4m3_values(flavour: str = "e4m3fn") -> np.ndarray:
    """The value of every byte, as float32: e4m3fn (bias 7, no infinities, NaN at S.1111.111) or
    e4m3fnuz (bias 8, no infinities, no -0, NaN at 0x80 alone)."""
    bias = {"e4m3fn": 7, "e4m3fnuz": 8}[flavour]
    b = np.arange(256)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp, man = (b >> 3) & 0xF, b & 0x7
    value = sign * np.where(exp == 0, man / 8.0 * 2.0 ** (1 - bias), (1 + man / 8.0) * 2.0 ** (exp - float(bias)))
    nan = (b & 0x7F) == 0x7F if flavour == "e4m3fn" else b == 0x80
    return np.where(nan, np.nan, value).astype(np.float32)


def cache_values(case: "Case", name: str) -> np.ndarray:
    """Cache tensor `name` as values, the way a kernel that dequantises in f32 reads it: as stored
    for a cache in the case dtype; for `kv=fp8` each byte's value times its per-tensor scale
    (`k_scale`, or `v_scale` for `v`); for `kv=tiled`, :func:`tiled_values`."""
    fmt = case.params["kv_cache"]
    x = case.inputs[name]
    if fmt == "native":
        return x
    if "tiled" in fmt:
        return tiled_values(case)
    scale = np.float32(case.inputs["v_scale" if name == "v" else "k_scale"])
    return _e4m3_values(fmt["per_tensor"]["fp8"])[x] * scale


def tiled_values(case: "Case") -> np.ndarray:
    """A `kv=tiled` case's cache records [..., record bytes] dequantised as a kernel that
    multiplies in f32 does: [..., d_c + d_r] float32, each e4m3fn latent value times its tile's
    f32 scale, then the bf16 RoPE key (records nothing reads hold NaN)."""
    fmt = case.params["kv_cache"]
    if not isinstance(fmt, dict) or "tiled" not in fmt:
        raise ValueError(f"{case.id}: the cache holds values of the case dtype, not FP8 records")
    tile, d_c, d_r = fmt["tiled"]["tile"], case.d_c, case.d_r
    records = case.inputs["kv"]
    flat = records.reshape(-1, records.shape[-1])
    scales = flat[:, d_c : d_c + 4 * (d_c // tile)].copy().view("<f4")
    latent = _e4m3_values()[flat[:, :d_c]] * np.repeat(scales, tile, axis=1)
    bits = flat[:, d_c + 4 * (d_c // tile) :].copy().view("<u2").astype(np.uint32) << 16
    out = np.concatenate([latent, bits.view(np.float32)], axis=1)
    return out.reshape(records.shape[:-1] + (d_c + d_r,))


def _slot_kv(case: "Case") -> tuple[np.ndarray, np.ndarray]:
    x, op, g = case.inputs, case.op, case.groups
    if op not in ("gqla.decode.absorb", "gqla.decode.gqa", "gqa.decode"):
        raise ValueError(f"{case.id}: keys and values are for the decode operations")
    def flat(name):
        values = cache_values(case, name)
        return values.reshape(-1, values.shape[-1])

    if op == "gqla.decode.absorb":
        kv = flat("kv")[:, None, :]
        return kv, kv[..., : case.d_c]
    v = flat("v").reshape(-1, g, case.d_v)
    if op == "gqa.decode" or case.rope_layout == "per_group":
        return flat("k").reshape(-1, g, x["k"].shape[-1] // g), v
    nope = flat("k_nope").reshape(-1, g, case.d_n)
    rope = np.broadcast_to(flat("k_rope")[:, None, :], (nope.shape[0], g, case.d_r))
    return np.concatenate([nope, rope], axis=-1), v


def _dense(case: "Case") -> Dense:
    k, v = case.slot_kv()
    indptr, indices = case.kv_slots()
    lens, q = case.seq_lens, case.inputs["q"]
    n_max = max(max(lens), 1)
    dk = np.zeros((len(lens), n_max) + k.shape[1:], k.dtype)
    dv = np.zeros((len(lens), n_max) + v.shape[1:], v.dtype)
    for b, n in enumerate(lens):
        rows = indices[indptr[b] : indptr[b + 1]]
        dk[b, :n], dv[b, :n] = k[rows], v[rows]
    visible = np.asarray(case.visible).reshape(len(lens), 1, case.s_q, 1)
    mask = np.arange(n_max)[None, None, None, :] < visible
    return Dense(q, dk, dv, mask, case.scale)


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
            self._inputs = {name: _array(data, dtype, shape) for name, dtype, shape, data in tensors}
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
        return {name: torch_tensor(a, device) for name, a in self.inputs.items()}

    def jax(self) -> dict[str, Any]:
        """The inputs as JAX arrays: through DLPack without a copy where numpy can export the
        dtype and JAX accepts the buffer, copied otherwise (bf16, which numpy's DLPack lacks)."""
        import jax
        import jax.numpy as jnp

        def convert(a):
            try:
                return jax.dlpack.from_dlpack(a)
            except Exception:  # noqa: BLE001 - any refusal means a copy
                return jnp.asarray(a)

        return {name: convert(a) for name, a in self.inputs.items()}

    @property
    def visible(self) -> list[list[int]]:
        """Per sequence and query row, how many keys it sees: its sequence's first ones
        (bottom-right causal); 0 for a padding row."""
        return self._native.visible()

    def kv_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each sequence's cached tokens are, in the CSR form token-level kernels take
        (SGLang, FlashInfer): sequence b's tokens, in order, are slots
        ``indices[indptr[b]:indptr[b + 1]]`` of the cache viewed as [slots, width] (its first
        two axes flattened); through the block table when the cache is paged. int32 arrays."""
        lens, indptr, indices = self.seq_lens, [0], []
        first = next(n for n in ("kv", "k", "k_nope") if n in self.inputs)
        capacity = self.inputs[first].shape[1]  # contiguous [B, capacity, w]; paged [pages, page, w]
        for b, n in enumerate(lens):
            tok = np.arange(n)
            if self.page_size is None:
                indices.append(b * capacity + tok)
            else:
                table = self.inputs["block_table"][b]
                indices.append(table[tok // self.page_size].astype(np.int64) * self.page_size + tok % self.page_size)
            indptr.append(indptr[-1] + n)
        return np.asarray(indptr, np.int32), np.concatenate(indices).astype(np.int32)

    def slot_kv(self) -> tuple[np.ndarray, np.ndarray]:
        """A decode case's cache as keys [slots, K, W] and values [slots, K, d_v] of its K KV
        heads, every slot (those no sequence uses hold poison): the groups' [k_g; k^R] on the
        GQA path; on the absorb path one head, [c; k^R] as the key and c (a view) as the value
        (an FP8 cache dequantised first, as `cache_values` does)."""
        return _slot_kv(self)

    def dense(self) -> "Dense":
        """A decode case as plain dense attention, the form most libraries take: every query head
        attends to keys and values of its KV head, padded to the longest sequence, under a mask."""
        return _dense(self)

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
    return [Case(c) for c in _native.cases(_profile_json(profile), _names(ops, "ops"), _names(filters, "filters"), seed)]


def _to_numpy(x: Any) -> np.ndarray:
    """Any array (numpy, torch, JAX, or anything numpy reads) as a numpy array, on the CPU."""
    module = type(x).__module__
    if module.startswith("torch"):
        import torch

        x = x.detach().to("cpu")
        if x.dtype == torch.bfloat16:
            bf16 = _bfloat16()
            return x.float().numpy() if bf16 is None else x.view(torch.int16).numpy().view(bf16)
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
    expected = case.output_shapes
    unexpected = [str(n) for n, _ in items if n not in expected]
    if unexpected:
        return f"the kernel returned outputs {', '.join(unexpected)}, expected only {', '.join(expected)}"
    tensors = []
    for name, value in items:
        try:
            a = _to_numpy(value)
        except Exception as e:  # noqa: BLE001 - any failure to read it is the kernel's
            return f"output `{name}`: not an array ({type(value).__name__}: {e})"
        # Checked before any copy: a wrong (say broadcast, huge) array is refused as it is.
        if tuple(a.shape) != tuple(expected[name]):
            return f"output `{name}` has shape {list(a.shape)}, expected {list(expected[name])}"
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
        for f in self.report.get("precision", []):
            if f["judgement"] != "PRECISE" or f["borderline"]:
                num = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731 (an interval of one case is null)
                lines.append(
                    f"  precision {f['operation']} {f['tensor']} {f['dtype']}: {f['judgement']}, RMS error "
                    f"{num(f['ratio'])} of its bound ({f['confidence']:.1%} interval {num(f['low'])}-{num(f['high'])}, "
                    f"{f['cases']} cases + {f['draws']} further draws)"
                )
        return "\n".join(lines)


def _cause(r: Mapping[str, Any]) -> str:
    if r.get("status") == "TIMEOUT":
        return f"no result within the time limit ({r.get('seconds', 0):.3g} s)"
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


class _Adapter:
    """What the suite calls: the kernel on a :class:`Case`, its return value as tensors. The
    kernel's exception is kept (the pytest plugin re-raises it with its traceback)."""

    def __init__(self, kernel: Callable[[Case], Any]):
        self.kernel = kernel
        self.error: BaseException | None = None

    def __call__(self, native, tensors):
        case = Case(native, tensors)
        try:
            returned = self.kernel(case)
        except BaseException as e:
            self.error = e
            raise
        return _returned_tensors(case, returned)


def _kernel_name(kernel, name: str | None) -> str:
    """The certificate's name for a kernel: `name`, else the callable's own."""
    return name or getattr(kernel, "__name__", "python-kernel")


def _run(kernel, profile, ops, filters, seed, name, version, description, timeout, environment=None):
    adapter = _Adapter(kernel)
    run = _native.Run(
        adapter, _profile_json(profile), _kernel_name(kernel, name),
        _names(ops, "ops"), _names(filters, "filters"), seed, version, description, timeout, dict(environment or {}),
    )
    return run, adapter


def _certify_run(run, out) -> Certificate:
    """Every case of `run` not run yet (a case excluded by the profile calls no kernel), then its
    certificate, written to `out` when given."""
    for i in range(len(run)):
        run.call(i)
    text, line = run.finish(None if out is None else os.fspath(out))
    return Certificate(json.loads(text), line)


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
    environment: Mapping[str, str] | None = None,
) -> Certificate:
    """Certify `kernel` on the cases of `ops` (and id prefixes `filters`) as `profile` declares,
    on a fresh seed unless `seed` is given; the certificate files go to `out` when given. A kernel
    that raises gets RUNTIME_ERROR with the exception's last line; one that writes to its inputs,
    INPUT_MUTATED; one that returns other shapes or non-float arrays, SHAPE_OR_DTYPE_MISMATCH; one
    that takes longer than `timeout` seconds, TIMEOUT (and no later case runs)."""
    run, _ = _run(kernel, profile, ops, filters, seed, name, version, description, timeout, environment)
    return _certify_run(run, out)


@dataclass(frozen=True)
class Stability:
    """Certifications on several fresh seeds (`gqla certify --seeds N`): ``stable`` when every
    case and precision family held on every seed; ``markdown`` is seeds.md."""

    stable: bool
    seeds: list[int]
    certificates: list[Certificate]
    selected: int
    unstable: list[tuple[str, int, int, str | None]]
    families: list[tuple[str, int, int, float, float]]
    markdown: str
    summary_text: str

    def summary(self) -> str:
        """What `gqla certify --seeds N` prints: passes on every seed, each unstable case, the
        families not PRECISE on every seed."""
        return self.summary_text


def stability(
    kernel: Callable[[Case], Any],
    profile,
    seeds: int,
    ops: Iterable[str] = (),
    filters: Iterable[str] = (),
    name: str | None = None,
    out: str | os.PathLike | None = None,
    version: str = "",
    description: str = "",
    timeout: float = 600.0,
    environment: Mapping[str, str] | None = None,
) -> Stability:
    """Certify `kernel` on `seeds` fresh seeds; per case, on how many it passed. With `out`, each
    seed's certificate goes to out/seed-S and the tally to out/seeds.md."""
    if seeds < 1:
        raise ValueError(f"seeds {seeds}: expected at least 1")
    tally, certificates = _native.Stability(), []
    for _ in range(seeds):
        run, _ = _run(kernel, profile, ops, filters, None, name, version, description, timeout, environment)
        dest = None if out is None else os.path.join(os.fspath(out), f"seed-{run.seed}")
        certificates.append(_certify_run(run, dest))
        tally.record(run)
    kernel_name = _kernel_name(kernel, name)
    markdown = tally.markdown(kernel_name, "fresh draws by this certification")
    if out is not None:
        _write_text(os.path.join(os.fspath(out), "seeds.md"), markdown)
    selected, unstable, families = tally.tally()
    return Stability(
        tally.stable, tally.seeds, certificates, selected, unstable, families, markdown, tally.summary(kernel_name)
    )


def _write_text(path: str, text: str) -> None:
    """Write a file whole: to a temporary name beside it, then renamed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def export_pack(dir, profile=None, ops: Iterable[str] = (), filters: Iterable[str] = (), seed: int = 0) -> int:
    """Write a vector pack (`gqla vectors export`) of the cases `ops` and `filters` select, drawn
    for `profile` when given, into `dir` (absent or empty); returns how many cases it holds."""
    p = None if profile is None else _profile_json(profile)
    return _native.export_pack(os.fspath(dir), p, _names(ops, "ops"), _names(filters, "filters"), seed)


def run_pack(
    kernel: Callable[[Case], Any],
    pack,
    outputs=None,
    profile=None,
    name: str | None = None,
    version: str = "",
    description: str = "",
    environment: Mapping[str, str] | None = None,
) -> int:
    """Run a Python kernel over a vector pack, as a pack kernel in any language does: its outputs
    for every case its profile selects, and kernel.json with the profile, written into `outputs`
    (default: the pack), for `gqla certify --kernel external:PACK --outputs OUTPUTS` or
    :func:`certify_pack` (on this machine or another). Returns how many cases ran; a case whose
    kernel call raises is left without outputs, and :class:`PackRunError` says which after the
    rest ran. As with a pack kernel in any language, nothing here times the kernel or audits its
    inputs: certify in process for that."""
    outputs = os.fspath(outputs if outputs is not None else pack)
    if profile is None:
        raise ValueError("run_pack needs the kernel's profile (kernel.json declares it)")
    text = _profile_json(profile)
    listed = _native.pack_cases(os.fspath(pack), text)
    os.makedirs(outputs, exist_ok=True)
    ran, failed = 0, []
    for native, file, excluded in listed:
        if excluded is not None:
            continue
        case = Case(native)
        try:
            tensors = _returned_tensors(case, kernel(case))
        except Exception as e:  # noqa: BLE001 - the kernel's failure is this case's
            tensors = f"{type(e).__name__}: {e}"
        if isinstance(tensors, str):
            # No outputs file: certifying the pack says RUNTIME_ERROR for this case.
            failed.append(case.id)
            sys.stderr.write(f"gqla.run_pack: {case.id}: {tensors}; no outputs written\n")
            continue
        _native.write_outputs(os.path.join(outputs, file), tensors)
        ran += 1
    info = {
        "name": _kernel_name(kernel, name),
        "version": version,
        "description": description,
        "environment": dict(environment or {}),
        "profile": json.loads(text),
    }
    _write_text(os.path.join(outputs, "kernel.json"), json.dumps(info, indent=2) + "\n")
    if failed:
        raise PackRunError(ran, failed)
    return ran


class PackRunError(RuntimeError):
    """Some cases of a pack had no outputs (the kernel raised or returned no tensors); the
    others, and kernel.json, were written."""

    def __init__(self, ran: int, failed: list[str]):
        super().__init__(f"{len(failed)} case(s) without outputs (first: {failed[0]}); {ran} written")
        self.ran, self.failed = ran, failed


def certify_pack(pack, outputs=None, profile=None, filters: Iterable[str] = (), seed: int | None = None, out=None) -> Certificate:
    """Certify the outputs written for a vector pack (`gqla certify --kernel external:PACK`),
    judged by `profile` when given, else by the outputs' kernel.json; the certificate files go to
    `out` when given. A pack drawn for another profile or seed, or with changed inputs, is a
    ValueError."""
    text, line = _native.certify_pack(
        os.fspath(pack),
        None if outputs is None else os.fspath(outputs),
        None if profile is None else _profile_json(profile),
        _names(filters, "filters"),
        seed,
        None if out is None else os.fspath(out),
    )
    return Certificate(json.loads(text), line)


def main(
    kernel: Callable[[Case], Any],
    profile,
    name: str,
    version: str = "",
    description: str = "",
    environment: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """A kernel script's command line, so that certifying a kernel is one call::

        python my_kernel.py [--seed S | --seeds N] [--op OP] [--filter PREFIX] [--out DIR]
        python my_kernel.py --pack PACK [--outputs DIR]     # run over a vector pack instead

    Prints the verdict (and each failure) and returns the exit status: 0 when CONFORMANT (or
    stable on every seed, or the pack's outputs written), 1 otherwise, 2 for bad arguments or
    input."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog=name, description=f"Certify {name} against the GQLA conformance suite.")
    ap.add_argument("--seed", type=int, help="draw the cases from suite seed S (default: a fresh one)")
    ap.add_argument("--seeds", type=int, help="certify on N fresh seeds and tally per case (stability)")
    ap.add_argument("--op", action="append", default=[], help="an operation (default: the profile's)")
    ap.add_argument("--filter", action="append", default=[], help="only case ids with this prefix")
    ap.add_argument("--out", help="write the certificate files here")
    ap.add_argument("--timeout", type=float, default=600.0, help="a case's time limit in seconds")
    ap.add_argument("--pack", help="run over this vector pack, writing outputs and kernel.json")
    ap.add_argument("--outputs", help="with --pack: where the outputs go (default: the pack)")
    a = ap.parse_args(argv)
    if a.seed is not None and a.seeds is not None:
        ap.error("--seed and --seeds conflict")
    try:
        text = _profile_json(profile)
        ops = a.op or json.loads(text).get("operations") or []
        if a.pack:
            n = run_pack(kernel, a.pack, a.outputs, text, name, version, description, environment)
            print(f"{name}: wrote outputs for {n} cases of {a.pack}")
            return 0
        if a.seeds is not None:
            s = stability(kernel, text, a.seeds, ops, a.filter, name, a.out, version, description, a.timeout, environment)
            print(s.summary())
            return 0 if s.stable else 1
        cert = certify(kernel, text, ops, a.filter, a.seed, name, a.out, version, description, a.timeout, environment)
    except PackRunError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, OverflowError, RuntimeError, AttributeError) as e:
        print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(cert.summary())
    return 0 if cert.conformant else 1
