"""A NumPy/PyTorch reference interpreter for saved Core ML ML Programs, so a ``.mlpackage`` can be checked off macOS.

Core ML itself only runs on macOS, but coremltools can read a saved package back into a MIL ``Program`` on any
platform. This module executes that program's ``main`` function op by op:

* every op computes in float32 (PyTorch functional kernels where they exist, NumPy otherwise) and its result is
  then stored in the dtype the program declares for that output: an ``fp16`` output is rounded to float16, so
  precision loss and overflow to ``inf`` show up where they would on a device that honours the program's types;
* each op's output shape is checked against the shape the program declares, so a misread parameter fails loudly;
* an op type without a kernel in ``KERNELS`` raises ``UnsupportedOpError`` before anything runs: nothing is skipped.

Every run yields one ``OpRecord`` per op output (dtype, shape, max and mean ``|x|``, inf/NaN counts). Two runs can be
compared op by op with ``compare_runs`` (run both with ``trace=True``, which keeps a small fixed sample of every
output) and ``first_divergence`` names the first op whose error grows past a bound; ``fp16_headroom`` shows how close
each activation comes to the float16 limit. Full tensors are kept only for the var names passed in ``keep``.
"""

from __future__ import annotations

import contextvars
import difflib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

FP16_MAX = 65504.0  # largest finite float16
SAMPLE_SIZE = 256  # values kept per op output when tracing: enough to see error growth, small for any model
WEIGHTS_DIR = Path("Data/com.apple.CoreML/weights")  # where ct.convert(...).save() puts weight.bin in a package

_REQUIRED = object()


class MilProgramError(ValueError):
    """A package that cannot be read as an ML Program, or a program that cannot be executed."""


class UnsupportedOpError(MilProgramError):
    """The program uses an op type this interpreter has no kernel for."""


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_program(package: Path | str) -> Any:
    """Read a saved ``.mlpackage`` back as a MIL ``Program`` whose consts are NumPy arrays.

    Raises ``MilProgramError`` naming the path when the package is missing, unreadable, or not an ML Program.
    """
    pkg = Path(package)
    if not pkg.exists():
        raise MilProgramError(f"{pkg}: no such Core ML package")
    if not pkg.is_dir():
        raise MilProgramError(f"{pkg}: not an .mlpackage directory (ML Programs are saved as packages)")
    # Imported here so that importing this module stays cheap and quiet (coremltools logs on import).
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    try:
        spec = ct.utils.load_spec(str(pkg))
    except Exception as e:  # protobuf, manifest and I/O errors all mean the same thing to a caller
        raise MilProgramError(f"{pkg}: cannot read the model spec ({type(e).__name__}: {e})") from e
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise MilProgramError(f"{pkg}: holds a {kind or 'empty'} model, not an ML Program")
    try:
        return load_milproto(spec, spec.specificationVersion, str(pkg / WEIGHTS_DIR))
    except Exception as e:
        raise MilProgramError(f"{pkg}: cannot load the ML Program ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpRecord:
    """What one op output looked like: one record per output var (``split`` gives several), consts excluded."""

    op_name: str
    op_type: str
    var_name: str
    dtype: str  # the program's declared dtype: "fp16", "fp32", "int32", "bool", ...
    shape: tuple[int, ...]
    max_abs: float  # largest |x| ignoring NaN; inf when any value overflowed
    mean_abs: float  # mean |x| ignoring NaN
    inf_count: int
    nan_count: int
    sample: np.ndarray | None = None  # float64 values at fixed positions (trace=True), see compare_runs

    @property
    def finite(self) -> bool:
        return self.inf_count == 0 and self.nan_count == 0


@dataclass
class ProgramRun:
    """Outputs (declared dtypes, keyed by the function's output var names), per-op records and kept tensors."""

    outputs: dict[str, np.ndarray]
    ops: list[OpRecord]  # program order, one per op output
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # the vars named in run_program(keep=...)
    seconds: float = 0.0  # wall time of the op loop

    def record(self, var_name: str) -> OpRecord:
        for rec in self.ops:
            if rec.var_name == var_name:
                return rec
        raise KeyError(var_name)


# ---------------------------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------------------------


def _dtype_name(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def _np_dtype(var: Any) -> np.dtype:
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(var.dtype))


def _static_shape(var: Any) -> tuple[int, ...] | None:
    """The declared shape when every dimension is a plain integer (symbolic dims make it None)."""
    shape = tuple(var.shape)
    if all(isinstance(d, (int, np.integer)) for d in shape):
        return tuple(int(d) for d in shape)
    return None


# False only inside run_program(..., round_fp16=False): fp16 values then stay float32 (the program's arithmetic with
# fp16 weights but float32 activations), the baseline a trace measures activation rounding against.
_ROUND_FP16: contextvars.ContextVar[bool] = contextvars.ContextVar("round_fp16", default=True)


def _round_fp16(a: np.ndarray) -> np.ndarray:
    """Round float values to float16 and back: kept in float32 so consumers need no conversion."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    # torch's conversion rounds to nearest-even and overflows to inf without NumPy's RuntimeWarning
    return t.to(torch.float16).to(torch.float32).numpy()


def _store(value: Any, var: Any) -> Any:
    """A computed or constant value in the internal form for ``var``'s declared dtype.

    Floats are held as float32 arrays (fp16 ones already rounded to float16 values); others in their own dtype.
    """
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    if isinstance(value, str):
        return value
    target = _np_dtype(var)
    if target == np.float16:
        return _round_fp16(np.asarray(value)) if _ROUND_FP16.get() else np.array(value, dtype=np.float32)
    if target.kind == "f":
        return np.array(value, dtype=np.float32)  # a copy: blob-backed weights are read-only
    return np.array(value, dtype=target)


def _external(value: np.ndarray, var: Any) -> np.ndarray:
    """An internal value in the var's declared dtype, as a caller expects it (fp16 outputs come back as float16)."""
    target = _np_dtype(var)
    return value.astype(target) if value.dtype != target else value.copy()


_SAMPLE_INDEX_CACHE: dict[int, np.ndarray] = {}


def _sample_indices(size: int) -> np.ndarray:
    """The same flat positions for every tensor of a given size, so samples of two runs line up."""
    if size not in _SAMPLE_INDEX_CACHE:
        if size <= SAMPLE_SIZE:
            idx = np.arange(size)
        else:
            idx = np.sort(np.random.default_rng(0).choice(size, SAMPLE_SIZE, replace=False))
        _SAMPLE_INDEX_CACHE[size] = idx
    return _SAMPLE_INDEX_CACHE[size]


def _record(op: Any, var: Any, value: np.ndarray, trace: bool) -> OpRecord:
    t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    nan_count = inf_count = 0
    if t.numel() == 0:
        max_abs = mean_abs = 0.0
    else:
        # min/max and the L1 norm need no |x| temporary: stats stay cheap next to the op itself
        lo, hi = torch.aminmax(t)
        max_abs = max(-float(lo), float(hi))
        if math.isnan(max_abs):  # NaN poisons min/max and the norm: count it, then describe the rest
            isnan = torch.isnan(t)
            nan_count = int(isnan.sum())
            t = torch.where(isnan, torch.zeros((), dtype=t.dtype), t)
            lo, hi = torch.aminmax(t)
            max_abs = max(-float(lo), float(hi))
        if math.isinf(max_abs):
            inf_count = int(torch.isinf(t).sum())
        l1 = float(torch.linalg.vector_norm(t.reshape(-1), ord=1, dtype=torch.float64))
        mean_abs = l1 / max(t.numel() - nan_count, 1)
    sample = None
    if trace:
        flat = np.asarray(value).reshape(-1)
        sample = flat[_sample_indices(flat.size)].astype(np.float64)
    return OpRecord(op.name, op.op_type, var.name, _dtype_name(var), tuple(np.shape(value)), max_abs, mean_abs,
                    inf_count, nan_count, sample)


def _classify(op: Any, env: dict[str, Any]) -> None:
    """Core ML's classifier head: the top class's label and a label -> probability dict (not tensors: unrecorded)."""
    probabilities = np.asarray(env[op.inputs["probabilities"].name], dtype=np.float64).reshape(-1)
    classes = [str(c) for c in env[op.inputs["classes"].name]]
    if len(classes) != probabilities.size:
        raise MilProgramError(f"classify (op name '{op.name}'): {len(classes)} labels for {probabilities.size} "
                              "probabilities")
    label_var, probs_var = op.outputs
    env[label_var.name] = classes[int(np.argmax(probabilities))]
    env[probs_var.name] = dict(zip(classes, probabilities.tolist(), strict=True))


def _check_supported(ops: Iterable[Any]) -> None:
    for op in ops:
        if op.op_type not in ("const", "classify") and op.op_type not in KERNELS:
            raise UnsupportedOpError(f"unsupported MIL op '{op.op_type}' (op name '{op.name}')")


def _prepare_inputs(function: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Check names and shapes of the caller's inputs and convert each to the program's input dtype."""
    expected = dict(function.inputs)
    missing = sorted(set(expected) - set(inputs))
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        raise MilProgramError(f"program inputs are {sorted(expected)}; missing {missing}, unexpected {extra}")
    env: dict[str, Any] = {}
    for name, var in expected.items():
        value = np.asarray(inputs[name])
        declared = tuple(var.shape)
        fits = len(declared) == value.ndim and all(
            not isinstance(d, (int, np.integer)) or int(d) == s for d, s in zip(declared, value.shape, strict=True)
        )
        if not fits:
            raise MilProgramError(f"input '{name}' has shape {value.shape}, the program expects {declared}")
        env[name] = _store(value, var)
    return env


def run_program(program: Any, inputs: Mapping[str, np.ndarray], trace: bool = False, keep: Iterable[str] = (),
                function: str = "main", threads: int | None = 1, round_fp16: bool = True) -> ProgramRun:
    """Execute ``program``'s function op by op in program order.

    ``inputs`` are converted to the declared input dtypes (float32 into an fp16 input is rounded). ``trace=True``
    keeps ``SAMPLE_SIZE`` values of every op output in its record for ``compare_runs``; ``keep`` names vars whose
    full tensors are returned in ``ProgramRun.kept``. Other intermediates are freed after their last use.

    ``round_fp16=False`` keeps fp16 values in float32 (activation rounding off; weights stay as stored), the
    baseline for a per-op trace of an FP16 program.

    ``threads`` sets PyTorch's intra-op threads for the run (restored afterwards; None leaves them alone). One
    thread by default: results do not depend on the machine's core count, and on a 2-core machine shared with
    another busy process two-thread kernels were measured 10-80x slower than one thread (an L1 run: 5 s vs 0.15 s).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    rounding = _ROUND_FP16.set(round_fp16)
    try:
        return _run(program, inputs, trace, set(keep), function)
    finally:
        _ROUND_FP16.reset(rounding)
        torch.set_num_threads(previous)


def _run(program: Any, inputs: Mapping[str, np.ndarray], trace: bool, keep: set[str], function: str) -> ProgramRun:
    if function not in program.functions:
        raise MilProgramError(f"program has no function '{function}' (has {sorted(program.functions)})")
    fn = program.functions[function]
    ops = list(fn.operations)
    _check_supported(ops)  # control flow (cond, while_loop) has no kernel either, so nested blocks never run

    output_vars = list(fn.outputs)
    declared_names = set(fn.inputs) | {v.name for op in ops for v in op.outputs}
    unknown = sorted(keep - declared_names)
    if unknown:
        raise MilProgramError(f"keep names vars the program does not have: {unknown}")

    # A var is freed after the last op that reads it, unless it is an output or was asked for.
    pinned = keep | {v.name for v in output_vars}
    last_use: dict[str, int] = {}
    for i, op in enumerate(ops):
        for var in _input_vars(op):
            last_use[var.name] = i
    release: dict[int, list[str]] = {}
    for name, i in last_use.items():
        if name not in pinned:
            release.setdefault(i, []).append(name)

    start = time.perf_counter()
    env = _prepare_inputs(fn, inputs)
    records: list[OpRecord] = []
    for i, op in enumerate(ops):
        try:
            if op.op_type == "const":
                value = op.outputs[0].val
                dtype_kind = getattr(getattr(value, "dtype", None), "kind", "")
                is_labels = isinstance(value, (list, tuple)) or dtype_kind == "O"  # a classifier's class names
                env[op.outputs[0].name] = list(value) if is_labels else _store(value, op.outputs[0])
                continue
            if op.op_type == "classify":
                _classify(op, env)
                continue
            result = KERNELS[op.op_type](_Args(op, env))
        except MilProgramError:
            raise
        except Exception as e:
            raise MilProgramError(f"MIL op '{op.op_type}' (op name '{op.name}') failed: "
                                  f"{type(e).__name__}: {e}") from e
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        if len(results) != len(op.outputs):
            raise MilProgramError(f"MIL op '{op.op_type}' (op name '{op.name}') gave {len(results)} outputs, "
                                  f"the program declares {len(op.outputs)}")
        for var, value in zip(op.outputs, results, strict=True):
            value = _store(value, var)
            declared = _static_shape(var)
            if declared is not None and declared != value.shape:
                raise MilProgramError(f"MIL op '{op.op_type}' (op name '{op.name}') produced shape {value.shape} "
                                      f"for '{var.name}', the program declares {declared}")
            env[var.name] = value
            records.append(_record(op, var, value, trace))
        for name in release.get(i, ()):
            env.pop(name, None)
    seconds = time.perf_counter() - start

    outputs = {v.name: env[v.name] if isinstance(env[v.name], (str, dict)) else _external(env[v.name], v)
               for v in output_vars}
    all_vars = {**dict(fn.inputs), **{v.name: v for op in ops for v in op.outputs}}
    kept = {name: _external(env[name], all_vars[name]) for name in sorted(keep)}
    return ProgramRun(outputs, records, kept, seconds)


def _input_vars(op: Any) -> list[Any]:
    found = []
    for value in op.inputs.values():
        found.extend(value if isinstance(value, (list, tuple)) else [value])
    return found


# ---------------------------------------------------------------------------------------------------------------
# Comparing runs and FP16 headroom
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpDiff:
    """One op output of a candidate run against the matching output of a reference run (sampled positions)."""

    op_type: str
    op_name: str  # the reference program's op
    reference_var: str
    candidate_var: str
    reference_max_abs: float
    candidate_max_abs: float
    sample_max_err: float  # max |candidate - reference| over the SAMPLE_SIZE sampled positions
    rel_err: float  # sample_max_err / reference_max_abs: comparable across ops of very different scales


def _signature(rec: OpRecord) -> tuple[str, tuple[int, ...]]:
    return rec.op_type, rec.shape


def compare_runs(reference: ProgramRun, candidate: ProgramRun) -> list[OpDiff]:
    """Match the op outputs of two traced runs of the same model and measure how far the candidate drifts.

    Rule: casts are left out (they are dtype plumbing that FP16 conversion adds), and the remaining records are
    aligned by (op type, shape) sequence, not by name: FP16 conversion renames vars (``_cast_fp16`` suffixes, linear
    outputs named after the op). Both runs must come from ``run_program(..., trace=True)``.
    """
    ref = [r for r in reference.ops if r.op_type != "cast"]
    cand = [r for r in candidate.ops if r.op_type != "cast"]
    if any(r.sample is None for r in ref + cand):
        raise MilProgramError("compare_runs needs runs made with trace=True (records carry no samples)")
    matcher = difflib.SequenceMatcher(None, [_signature(r) for r in ref], [_signature(r) for r in cand],
                                      autojunk=False)
    diffs = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            r, c = ref[block.a + k], cand[block.b + k]
            with np.errstate(invalid="ignore"):
                err = float(np.max(np.abs(c.sample - r.sample))) if r.sample.size else 0.0
            scale = r.max_abs if r.max_abs > 0 else 1.0
            diffs.append(OpDiff(r.op_type, r.op_name, r.var_name, c.var_name, r.max_abs, c.max_abs, err,
                                err / scale))
    return diffs


def first_divergence(diffs: Sequence[OpDiff], rel_tol: float) -> OpDiff | None:
    """The first op (program order) whose sampled error exceeds ``rel_tol`` of its reference magnitude, or None.

    Non-finite errors (inf/NaN in the candidate) count as exceeding any tolerance.
    """
    for d in diffs:
        if not math.isfinite(d.rel_err) or d.rel_err > rel_tol:
            return d
    return None


@dataclass(frozen=True)
class Headroom:
    """How close one op output comes to the float16 limit: ``ratio`` = max |x| / 65504 (>= 1 means overflow)."""

    op_name: str
    op_type: str
    var_name: str
    dtype: str
    max_abs: float
    ratio: float
    inf_count: int
    nan_count: int

    @property
    def status(self) -> str:
        if self.nan_count:
            return "nan"
        if self.inf_count or self.ratio >= 1.0:
            return "overflow"
        return "ok"

    def describe(self) -> str:
        text = (f"{self.op_type} '{self.var_name}' ({self.dtype}): max |x| = {self.max_abs:.4g}, "
                f"{self.ratio:.2%} of the FP16 limit")
        if self.inf_count:
            text += f", {self.inf_count} inf values"
        if self.nan_count:
            text += f", {self.nan_count} NaN values"
        return text if self.status == "ok" else f"{self.status.upper()}: {text}"


def fp16_headroom(run: ProgramRun, limit: float = FP16_MAX) -> list[Headroom]:
    """Per floating-point op output, its largest magnitude against the float16 limit, in program order.

    Works on FP32 runs too: there it says which activations would overflow if the model were converted to FP16.
    Outputs with inf or NaN have status "overflow" / "nan"; sort by ``ratio`` for the riskiest ops.
    """
    rows = []
    for rec in run.ops:
        if rec.dtype not in ("fp16", "fp32", "fp64"):
            continue
        ratio = math.inf if rec.inf_count else rec.max_abs / limit
        rows.append(Headroom(rec.op_name, rec.op_type, rec.var_name, rec.dtype, rec.max_abs, ratio,
                             rec.inf_count, rec.nan_count))
    return rows


def overflowing(run: ProgramRun) -> list[Headroom]:
    """The op outputs of ``run`` that hold inf or NaN, or exceed the float16 range."""
    return [h for h in fp16_headroom(run) if h.status != "ok"]


# ---------------------------------------------------------------------------------------------------------------
# Kernels: one small function per op type, registered in KERNELS. Each receives the op's inputs through _Args and
# returns float32/int arrays (or torch tensors, or a list for multi-output ops); rounding to the declared output
# dtype happens in run_program, so kernels never care whether the program is FP16 or FP32.
# ---------------------------------------------------------------------------------------------------------------


class _Args:
    """An op's input values: params missing from ``op.inputs`` fall back to the op's documented defaults."""

    def __init__(self, op: Any, env: Mapping[str, Any]) -> None:
        self.op = op
        self._env = env

    def __contains__(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    def value(self, name: str, default: Any = _REQUIRED) -> Any:
        var = self.op.inputs.get(name)
        if var is None:
            if default is _REQUIRED:
                raise MilProgramError(f"MIL op '{self.op.op_type}' (op name '{self.op.name}') lacks input '{name}'")
            return default
        if isinstance(var, (list, tuple)):
            return [self._env[v.name] for v in var]
        return self._env[var.name]

    def tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.value(name)))

    def optional_tensor(self, name: str) -> torch.Tensor | None:
        return self.tensor(name) if name in self else None

    def ints(self, name: str, default: Any = _REQUIRED) -> list[int]:
        value = self.value(name, default)
        return [int(v) for v in np.asarray(value).reshape(-1)]

    def integer(self, name: str, default: Any = _REQUIRED) -> int:
        return int(np.asarray(self.value(name, default)).reshape(()))

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        return float(np.asarray(self.value(name, default)).reshape(()))

    def flag(self, name: str, default: Any = _REQUIRED) -> bool:
        return bool(np.asarray(self.value(name, default)).reshape(()))

    def text(self, name: str, default: Any = _REQUIRED) -> str:
        return str(self.value(name, default))


Kernel = Callable[[_Args], Any]
KERNELS: dict[str, Kernel] = {}


def kernel(*op_types: str) -> Callable[[Kernel], Kernel]:
    """Register a kernel for one or more MIL op types."""

    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            KERNELS[op_type] = fn
        return fn

    return register


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --- elementwise ---------------------------------------------------------------------------------------------

_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide,
    "maximum": np.maximum, "minimum": np.minimum, "pow": np.power,
}


@kernel(*_BINARY)
def _binary(a: _Args) -> np.ndarray:
    """NumPy broadcasting on float32 (or int) operands."""
    x, y = np.asarray(a.value("x")), np.asarray(a.value("y"))
    with np.errstate(all="ignore"):  # inf/NaN are results to report, not warnings
        return np.asarray(_BINARY[a.op.op_type](x, y))


_UNARY = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "erf": torch.erf, "exp": torch.exp,
          "sqrt": torch.sqrt}


@kernel(*_UNARY)
def _unary(a: _Args) -> torch.Tensor:
    """Elementwise functions of ``x`` alone."""
    return _UNARY[a.op.op_type](a.tensor("x"))


@kernel("rsqrt")
def _rsqrt(a: _Args) -> torch.Tensor:
    """1 / sqrt(x + epsilon), epsilon defaulting to 1e-12."""
    return torch.rsqrt(a.tensor("x") + a.number("epsilon", 1e-12))


@kernel("gelu")
def _gelu(a: _Args) -> torch.Tensor:
    """EXACT: 0.5x(1 + erf(x/sqrt 2)); TANH_APPROXIMATION: 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)));
    SIGMOID_APPROXIMATION: x * sigmoid(1.702x)."""
    x, mode = a.tensor("x"), a.text("mode", "EXACT")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise MilProgramError(f"gelu op '{a.op.name}': unknown mode {mode!r}")


@kernel("identity")
def _identity(a: _Args) -> np.ndarray:
    return np.asarray(a.value("x")).copy()


@kernel("cast")
def _cast(a: _Args) -> np.ndarray:
    """The conversion happens when run_program stores the result in the declared dtype (float to int truncates)."""
    return np.asarray(a.value("x"))


# --- convolution and pooling -----------------------------------------------------------------------------------


def _spatial_pads(pad_type: str, in_sizes: Sequence[int], kernel_sizes: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int], custom: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim.

    valid: none; custom: ``pad[2i], pad[2i+1]``; same / same_lower: total ``max(0, (ceil(i/s) - 1)*s + k_eff - i)``
    so the output is ``ceil(i/s)``, the odd element going after (same) or before (same_lower).
    """
    pad_type = pad_type.lower()
    if pad_type == "valid":
        return [(0, 0)] * len(in_sizes)
    if pad_type == "custom":
        return [(int(custom[2 * d]), int(custom[2 * d + 1])) for d in range(len(in_sizes))]
    if pad_type in ("same", "same_lower"):
        pads = []
        for i, k, s, d in zip(in_sizes, kernel_sizes, strides, dilations, strict=True):
            k_eff = (k - 1) * d + 1
            total = max(0, (math.ceil(i / s) - 1) * s + k_eff - i)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if pad_type == "same" else (big, small))
        return pads
    raise MilProgramError(f"unknown pad_type {pad_type!r}")


def _pad(x: torch.Tensor, pads: Sequence[tuple[int, int]], value: float) -> torch.Tensor:
    if not any(p for pair in pads for p in pair):
        return x
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last dimension first
    return F.pad(x, flat, value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@kernel("conv")
def _conv(a: _Args) -> torch.Tensor:
    """Cross-correlation over [n, C_in, *d]; explicit (possibly asymmetric) padding first, then PyTorch's conv."""
    x, w, b = a.tensor("x"), a.tensor("weight"), a.optional_tensor("bias")
    nd = x.dim() - 2
    strides = a.ints("strides", [1] * nd)
    dilations = a.ints("dilations", [1] * nd)
    pads = _spatial_pads(a.text("pad_type", "valid"), x.shape[2:], w.shape[2:], strides, dilations,
                         a.ints("pad", [0] * 2 * nd))
    return _CONV[nd](_pad(x, pads, 0.0), w, b, stride=strides, dilation=dilations, groups=a.integer("groups", 1))


def _pool_geometry(a: _Args, x: torch.Tensor) -> tuple[list[int], list[int], list[tuple[int, int]], list[int],
                                                        list[int]]:
    """kernel, strides, explicit pads, extra trailing room needed by ceil_mode windows, output sizes.

    Output size rule (MIL): floor((i + p - k)/s) + 1, or with ceil_mode floor((i + p - k + s - 1)/s) + 1, less one
    when that last window would start at or past ``i + p/2`` and ``p > 0`` (p = total padding).
    """
    nd = x.dim() - 2
    kernel_sizes = a.ints("kernel_sizes")
    strides = a.ints("strides", [1] * nd)
    in_sizes = list(x.shape[2:])
    pads = _spatial_pads(a.text("pad_type", "valid"), in_sizes, kernel_sizes, strides, [1] * nd,
                         a.ints("pad", [0] * 2 * nd))
    ceil_mode = a.flag("ceil_mode", False)
    extra, out_sizes = [], []
    for i, k, s, (before, after) in zip(in_sizes, kernel_sizes, strides, pads, strict=True):
        total = before + after
        if ceil_mode:
            out = (i + total - k + s - 1) // s + 1
            if (out - 1) * s >= i + total / 2 and total > 0:
                out -= 1
        else:
            out = (i + total - k) // s + 1
        out_sizes.append(out)
        extra.append(max(0, (out - 1) * s + k - (i + total)))
    return kernel_sizes, strides, pads, extra, out_sizes


def _crop(y: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    return y[(slice(None), slice(None), *(slice(0, n) for n in sizes))]


@kernel("max_pool")
def _max_pool(a: _Args) -> torch.Tensor:
    """Max over windows; padding and ceil_mode overhang never win (padded with -inf)."""
    x = a.tensor("x")
    k, s, pads, extra, out = _pool_geometry(a, x)
    padded = _pad(x, [(b, e + x_) for (b, e), x_ in zip(pads, extra, strict=True)], -math.inf)
    return _crop(_MAX_POOL[len(k)](padded, k, s), out)


@kernel("avg_pool")
def _avg_pool(a: _Args) -> torch.Tensor:
    """Mean over windows. The divisor counts the explicit padding unless exclude_padding_from_average; the room a
    ceil_mode window hangs past the padded input is never counted (PyTorch's rule)."""
    x = a.tensor("x")
    k, s, pads, extra, out = _pool_geometry(a, x)
    exclude = a.flag("exclude_padding_from_average", False)
    pool = _AVG_POOL[len(k)]
    full_pads = [(b, e + x_) for (b, e), x_ in zip(pads, extra, strict=True)]
    mean = _crop(pool(_pad(x, full_pads, 0.0), k, s), out)  # sum / prod(k) over every window
    # How many elements each window should be divided by: pool a ones mask over the counted region.
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    counted = ones if exclude else _pad(ones, pads, 1.0)
    mask_pads = full_pads if exclude else [(0, x_) for x_ in extra]
    window = math.prod(k)
    counts = torch.round(_crop(pool(_pad(counted, mask_pads, 0.0), k, s), out) * window)
    if bool((counts == window).all()):
        return mean
    return mean * (window / counts)


# --- linear algebra --------------------------------------------------------------------------------------------


@kernel("linear")
def _linear(a: _Args) -> Any:
    """x @ weight.T + bias, weight [D_out, D_in]."""
    x, w = a.value("x"), a.value("weight")
    if np.asarray(x).dtype.kind != "f":
        out = np.matmul(x, np.asarray(w).T)
        return out + a.value("bias") if "bias" in a else out
    return F.linear(a.tensor("x"), a.tensor("weight"), a.optional_tensor("bias"))


@kernel("matmul")
def _matmul(a: _Args) -> Any:
    """Batched matmul with NumPy broadcasting; transpose_x/y swap the last two dims of a rank >= 2 operand."""
    tx, ty = a.flag("transpose_x", False), a.flag("transpose_y", False)
    x, y = np.asarray(a.value("x")), np.asarray(a.value("y"))
    if tx and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if ty and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    if x.dtype.kind != "f":
        return np.matmul(x, y)
    return torch.matmul(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))


# --- normalisation and softmax ---------------------------------------------------------------------------------


@kernel("layer_norm")
def _layer_norm(a: _Args) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * gamma + beta over ``axes`` (default: all).

    gamma and beta have shape ``x.shape`` at the sorted axes; the variance is the population variance.
    """
    x = a.tensor("x")
    rank = x.dim()
    axes = sorted({_axis(ax, rank) for ax in a.ints("axes", list(range(rank)))})
    others = [d for d in range(rank) if d not in axes]
    perm = others + axes  # normalised dims last, so PyTorch's layer_norm (trailing dims) applies
    normalized = [x.shape[d] for d in axes]
    gamma, beta = a.optional_tensor("gamma"), a.optional_tensor("beta")
    gamma = gamma.reshape(normalized) if gamma is not None else None
    beta = beta.reshape(normalized) if beta is not None else None
    y = F.layer_norm(x.permute(perm), normalized, gamma, beta, a.number("epsilon", 1e-5))
    return y.permute([perm.index(d) for d in range(rank)])


@kernel("batch_norm")
def _batch_norm(a: _Args) -> torch.Tensor:
    """Per channel (axis 1): (x - mean) / sqrt(variance + eps) * gamma + beta."""
    return F.batch_norm(a.tensor("x"), a.tensor("mean"), a.tensor("variance"), a.optional_tensor("gamma"),
                        a.optional_tensor("beta"), training=False, eps=a.number("epsilon", 1e-5))


@kernel("softmax")
def _softmax(a: _Args) -> torch.Tensor:
    return torch.softmax(a.tensor("x"), dim=a.integer("axis", -1))


_REDUCE = {"reduce_mean": torch.mean, "reduce_sum": torch.sum, "reduce_max": torch.amax}
_REDUCE_NP = {"reduce_mean": np.mean, "reduce_sum": np.sum, "reduce_max": np.max}


@kernel(*_REDUCE)
def _reduce(a: _Args) -> Any:
    """Reduce over ``axes`` (default: all), dropping them unless keep_dims."""
    x = np.asarray(a.value("x"))
    axes = tuple(_axis(ax, x.ndim) for ax in a.ints("axes", list(range(x.ndim))))
    keep_dims = a.flag("keep_dims", False)
    if x.dtype.kind != "f":
        return _REDUCE_NP[a.op.op_type](x, axis=axes, keepdims=keep_dims)
    return _REDUCE[a.op.op_type](torch.from_numpy(np.ascontiguousarray(x)), dim=axes, keepdim=keep_dims)


# --- resizing --------------------------------------------------------------------------------------------------


def _grid_points(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """Where each output sample lies on the input axis (float64), by Core ML's rules for one spatial axis.

    The modes are resize_bilinear's sampling modes (upsample_bilinear maps its flags onto them). With
    ``spacing = Xin / Xout`` (the scale recomputed from the sizes, never the scale factor an op was given):

    * UNALIGN_CORNERS (half-pixel centres; PyTorch's ``align_corners=False``): ``i*spacing + 0.5*spacing - 0.5``
    * DEFAULT (asymmetric, TensorFlow's legacy rule): ``i * spacing``
    * STRICT_ALIGN_CORNERS (PyTorch's ``align_corners=True``): ``i * (Xin - 1) / (Xout - 1)``, 0 when Xout is 1
    * ALIGN_CORNERS: the same, but ``(Xin - 1) / 2`` when Xout is 1
    * OFFSET_CORNERS: ``0.5*delta + i*delta`` with ``delta = max(1, Xin - 1) / Xout``

    every point then clamped to [0, Xin - 1].
    """
    i = np.arange(size_out, dtype=np.float64)
    spacing = size_in / size_out
    if mode == "UNALIGN_CORNERS":
        points = i * spacing + 0.5 * spacing - 0.5
    elif mode == "DEFAULT":
        points = i * spacing
    elif mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            points = np.full(1, (size_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            points = i * (size_in - 1) / (size_out - 1)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        points = 0.5 * delta + i * delta
    else:
        raise MilProgramError(f"unknown bilinear sampling mode {mode!r}")
    return np.clip(points, 0.0, size_in - 1)


def _interpolate_axis(x: torch.Tensor, axis: int, points: np.ndarray) -> torch.Tensor:
    """Linear interpolation along ``axis`` at ``points``: ``x[i0] * (1 - f) + x[i1] * f``, i1 clamped to the edge."""
    lower = np.floor(points).astype(np.int64)
    upper = np.minimum(lower + 1, x.shape[axis] - 1)
    frac = torch.from_numpy((points - lower).astype(np.float32))
    shape = [1] * x.dim()
    shape[axis] = len(points)
    frac = frac.reshape(shape)
    low = torch.index_select(x, axis, torch.from_numpy(lower))
    high = torch.index_select(x, axis, torch.from_numpy(upper))
    return low + (high - low) * frac


def _bilinear(x: torch.Tensor, out_h: int, out_w: int, mode: str) -> torch.Tensor:
    """Separable bilinear resize of the last two dims (height, then width): the same weights as a 2x2 blend."""
    rows = _interpolate_axis(x, x.dim() - 2, _grid_points(x.shape[-2], out_h, mode))
    return _interpolate_axis(rows, x.dim() - 1, _grid_points(x.shape[-1], out_w, mode))


@kernel("upsample_bilinear")
def _upsample_bilinear(a: _Args) -> torch.Tensor:
    """Output size ``floor(H * scale_factor_height)`` x ``floor(W * scale_factor_width)``; the sampling grid comes
    from the sizes, not the factors (the op's ``recompute_scale_factor`` rule).

    align_corners (default True) picks STRICT_ALIGN_CORNERS; otherwise half_pixel_centers (iOS16; default
    ``not align_corners``) picks UNALIGN_CORNERS, and False the asymmetric DEFAULT grid.
    """
    x = a.tensor("x")
    out_h = math.floor(x.shape[-2] * a.number("scale_factor_height", 1.0))
    out_w = math.floor(x.shape[-1] * a.number("scale_factor_width", 1.0))
    align = a.flag("align_corners", True)
    half_pixel = a.flag("half_pixel_centers", not align)
    if align and half_pixel:
        raise MilProgramError(f"upsample_bilinear op '{a.op.name}': align_corners and half_pixel_centers are "
                              "mutually exclusive")
    mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    return _bilinear(x, out_h, out_w, mode)


@kernel("resize_bilinear")
def _resize_bilinear(a: _Args) -> torch.Tensor:
    """Resize the last two dims to target_size_height x target_size_width (default 1 x 1) by ``sampling_mode``."""
    x = a.tensor("x")
    return _bilinear(x, a.integer("target_size_height", 1), a.integer("target_size_width", 1),
                     a.text("sampling_mode", "DEFAULT"))


# --- shape and layout ------------------------------------------------------------------------------------------


@kernel("reshape")
def _reshape(a: _Args) -> np.ndarray:
    """0 copies the input's dim at that position (when the ranks match); one -1 is inferred."""
    x = np.asarray(a.value("x"))
    shape = a.ints("shape")
    if 0 in shape and len(shape) == x.ndim:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@kernel("transpose")
def _transpose(a: _Args) -> np.ndarray:
    return np.transpose(np.asarray(a.value("x")), a.ints("perm"))


@kernel("squeeze")
def _squeeze(a: _Args) -> np.ndarray:
    """Drop size-1 dims in ``axes`` (all of them by default); listed dims that are not 1 are kept (PyTorch rule)."""
    x = np.asarray(a.value("x"))
    if "axes" not in a:
        return np.squeeze(x)
    axes = {_axis(ax, x.ndim) for ax in a.ints("axes")}
    return np.squeeze(x, axis=tuple(ax for ax in axes if x.shape[ax] == 1))


@kernel("expand_dims")
def _expand_dims(a: _Args) -> np.ndarray:
    """Insert size-1 dims at ``axes``, counted in the output's rank."""
    x = np.asarray(a.value("x"))
    axes = a.ints("axes")
    out_rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(_axis(ax, out_rank) for ax in axes)))


@kernel("concat")
def _concat(a: _Args) -> np.ndarray:
    """Join along ``axis``; with interleave, output[i*n + j] along the axis is input j's element i."""
    values = [np.asarray(v) for v in a.value("values")]
    axis = _axis(a.integer("axis"), values[0].ndim)
    if not a.flag("interleave", False):
        return np.concatenate(values, axis=axis)
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


@kernel("split")
def _split(a: _Args) -> list[np.ndarray]:
    """Cut along ``axis`` by ``split_sizes``, or into ``num_splits`` equal parts."""
    x = np.asarray(a.value("x"))
    axis = _axis(a.integer("axis"), x.ndim)
    if "split_sizes" in a:
        sizes = a.ints("split_sizes")
    else:
        n = a.integer("num_splits")
        if x.shape[axis] % n:
            raise MilProgramError(f"split op '{a.op.name}': dim {x.shape[axis]} not divisible by {n}")
        sizes = [x.shape[axis] // n] * n
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


@kernel("slice_by_index")
def _slice_by_index(a: _Args) -> np.ndarray:
    """x[begin:end:stride] per dim (Python semantics); masks ignore begin/end; squeeze_mask indexes at begin."""
    x = np.asarray(a.value("x"))
    rank = x.ndim
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * rank)
    begin_mask = [bool(v) for v in np.asarray(a.value("begin_mask", [False] * rank)).reshape(-1)]
    end_mask = [bool(v) for v in np.asarray(a.value("end_mask", [False] * rank)).reshape(-1)]
    squeeze_mask = [bool(v) for v in np.asarray(a.value("squeeze_mask", [False] * rank)).reshape(-1)]
    index: list[Any] = []
    for d in range(rank):
        if squeeze_mask[d]:
            index.append(begin[d])
        else:
            index.append(slice(None if begin_mask[d] else begin[d], None if end_mask[d] else end[d], stride[d]))
    return np.ascontiguousarray(x[tuple(index)])


@kernel("slice_by_size")
def _slice_by_size(a: _Args) -> np.ndarray:
    """x[begin : begin + size] per dim; size -1 takes the rest of that dim."""
    x = np.asarray(a.value("x"))
    index = []
    for d, (b, n) in enumerate(zip(a.ints("begin"), a.ints("size"), strict=True)):
        b = _axis(b, x.shape[d])
        index.append(slice(b, x.shape[d] if n == -1 else b + n))
    return x[tuple(index)]


# --- compression and quantization ------------------------------------------------------------------------------
# Following coremltools' op definitions (ops/defs/iOS16/constexpr_ops.py, iOS17/quantization_ops.py,
# iOS18/compression.py) and the NumPy references they use for value inference (coremltools.optimize._utils):
# dequantizing is scale * (q - zero_point) with scale/zero_point broadcast along ``axis``; quantizing is
# clip(round(x / scale) + zero_point) into the output dtype's range, rounding half to even (np.around).


def _along(param: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """A scalar or a vector of per-``axis`` parameters, shaped to broadcast against a rank-``rank`` tensor."""
    param = np.asarray(param)
    if param.size == 1 and axis is None:
        return param.reshape(())  # a per-tensor parameter (saved packages hold scalars as one-element vectors)
    if param.ndim == 0 or param.ndim == rank:
        return param
    if param.ndim != 1 or axis is None:
        raise MilProgramError(f"a quantization parameter of shape {param.shape} needs an axis")
    shape = [1] * rank
    shape[_axis(axis, rank)] = param.shape[0]
    return param.reshape(shape)


def _optional_axis(a: _Args) -> int | None:
    return a.integer("axis") if "axis" in a else None


def _affine_dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                       axis: int | None) -> np.ndarray:
    values = np.asarray(q).astype(np.float32)
    if zero_point is not None:
        values = values - _along(np.asarray(zero_point).astype(np.float32), values.ndim, axis)
    return values * _along(np.asarray(scale).astype(np.float32), values.ndim, axis)


_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}


@kernel("quantize")
def _quantize(a: _Args) -> np.ndarray:
    """iOS17 quantize: clip(round_half_even(input / scale) + zero_point, dtype range), per tensor or per ``axis``."""
    dtype = a.text("output_dtype")
    if dtype not in _INT_RANGE:
        raise MilProgramError(f"quantize op '{a.op.name}': output_dtype {dtype!r} is not int8 or uint8")
    x = np.asarray(a.value("input"), dtype=np.float32)
    axis = _optional_axis(a)
    q = np.around(x / _along(np.asarray(a.value("scale"), dtype=np.float32), x.ndim, axis))
    if "zero_point" in a:
        q = q + _along(np.asarray(a.value("zero_point")).astype(np.float32), x.ndim, axis)
    low, high = _INT_RANGE[dtype]
    return np.clip(q, low, high).astype(dtype)


@kernel("dequantize")
def _dequantize(a: _Args) -> np.ndarray:
    """iOS17 dequantize: scale * (input - zero_point), per tensor or per ``axis``."""
    zero_point = a.value("zero_point") if "zero_point" in a else None
    return _affine_dequantize(a.value("input"), a.value("scale"), zero_point, _optional_axis(a))


@kernel("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(a: _Args) -> np.ndarray:
    """iOS16: scale * (quantized_data - zero_point), scale and zero_point scalars or vectors along ``axis``."""
    return _affine_dequantize(a.value("quantized_data"), a.value("scale"), a.value("zero_point"),
                              a.integer("axis"))


@kernel("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(a: _Args) -> np.ndarray:
    """iOS18: scale * (data - offset), scale/offset of data's rank, each entry covering a block of
    data.shape / scale.shape elements."""
    data = np.asarray(a.value("data")).astype(np.float32)
    scale = np.asarray(a.value("scale"), dtype=np.float32)
    offset = np.asarray(a.value("offset")).astype(np.float32) if "offset" in a else None
    if scale.ndim != data.ndim:
        raise MilProgramError(f"constexpr_blockwise_shift_scale op '{a.op.name}': scale rank {scale.ndim}, data "
                              f"rank {data.ndim}")
    for axis, (size, blocks) in enumerate(zip(data.shape, scale.shape, strict=True)):
        if size % blocks:
            raise MilProgramError(f"constexpr_blockwise_shift_scale op '{a.op.name}': {blocks} blocks do not divide "
                                  f"dim {axis} of size {size}")
        scale = np.repeat(scale, size // blocks, axis)
        if offset is not None:
            offset = np.repeat(offset, size // blocks, axis)
    return scale * (data - offset if offset is not None else data)


def _unpack_indices(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """iOS16 LUT indices: n-bit fields packed into bytes from the least significant bit up, row-major."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8).reshape(-1), bitorder="little")
    if bits.size < nbits * count:
        raise MilProgramError(f"{packed.size} bytes hold fewer than {count} {nbits}-bit indices")
    fields = bits[:nbits * count].reshape(count, nbits).astype(np.int64)
    return fields @ (1 << np.arange(nbits, dtype=np.int64))


@kernel("constexpr_lut_to_dense")
def _constexpr_lut_to_dense(a: _Args) -> np.ndarray:
    """iOS16: lut[indices] with the indices packed (log2 len(lut) bits each) and reshaped to ``shape``.
    iOS18: per-block tables, lut [*blocks, palette, vector]: each index picks from the table of its block (vector
    entries laid out along ``vector_axis``)."""
    lut = np.asarray(a.value("lut"))
    if "shape" in a:  # iOS16: one table, packed indices
        shape = a.ints("shape")
        nbits = int(math.log2(lut.shape[0]))
        return lut[_unpack_indices(a.value("indices"), nbits, math.prod(shape))].reshape(shape)
    indices = np.asarray(a.value("indices")).astype(np.int64)
    rank, (palette, vector) = indices.ndim, lut.shape[-2:]
    if vector > 1:
        axis = _axis(a.integer("vector_axis"), rank)
        indices = np.swapaxes(indices, -1, axis)
        lut = np.swapaxes(lut, -3, axis)
    table = np.zeros(indices.shape, dtype=np.int64)  # which table each index reads: its block's, row-major
    for d in range(rank):
        size, tables = indices.shape[d], lut.shape[d]
        if size % tables:
            raise MilProgramError(f"constexpr_lut_to_dense op '{a.op.name}': {tables} tables do not divide dim {d} "
                                  f"of size {size}")
        block = (np.arange(size) // (size // tables)).reshape([-1 if k == d else 1 for k in range(rank)])
        table = table * tables + block
    picked = lut.reshape(-1, palette, vector)[table, indices]  # (*indices.shape, vector)
    out = picked.reshape(*indices.shape[:-1], indices.shape[-1] * vector)
    return np.swapaxes(out, -1, _axis(a.integer("vector_axis"), rank)) if vector > 1 else out


SUPPORTED_OPS: tuple[str, ...] = ("const", *sorted(KERNELS))
