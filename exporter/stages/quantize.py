"""The quantize stage: an integer model that keeps the float model's predictions, at the least speed cost.

The rule (after Q-HyViT's finding that a few layers of hybrid vision transformers carry most of the
quantization error): measure each node group's error alone, then keep the most sensitive groups in float until
the gate holds.

1. Every group quantized (but the recipe's ``keep_float``): if it passes the gate on the selection inputs, done.
2. Sensitivity: each group quantized alone, everything else float; its error is the logits' worst cosine
   distance from the float reference on the selection inputs (and how many top-1 classes it flips).
3. The k most sensitive groups back in float, for k = 1, 2, 4, ... until the gate holds, then the smallest
   such k by bisection. "The gate" here is the recipe's, tightened: the selection inputs must stay within
   ``selection_margin`` of its cosine error, so that the choice keeps headroom on inputs it was not made on.
   Every candidate tried is kept as a point of the error/speed trade-off, its speed measured
   against the float model interleaved, call for call, in this process.

The target supplies the quantizer (``Target.quantizer``: it knows its format) and its parity runner; this stage
knows neither. The selection inputs are held out from calibration, and the gate's inputs (the validate stage's)
are held out from both, so the choice is not judged on the inputs that made it.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from efexport.exporter.errors import ParityError, RecipeError
from efexport.exporter.recipe_sections import QuantizationSection, Tolerances
from efexport.validate.parity import compare_outputs

SPEED_ROUNDS = 15  # interleaved calls per model when a candidate is timed (the chosen one gets 3x more)


class Quantizer(Protocol):
    groups: tuple[str, ...]  # node groups in graph order: "stem", "stages/2/blocks/3", "head", ...
    nodes: dict[str, list[str]]  # group -> its nodes

    def build(self, float_groups: frozenset[str], path: Path) -> None: ...  # write a candidate to path

    def describe(self) -> dict: ...  # format, tool, weight and activation types, calibration method


@dataclass(frozen=True)
class Candidate:
    float_groups: tuple[str, ...]
    min_cosine: float
    top1_agreement: float
    passed: bool
    speedup: float | None = None  # float model's median call time / this one's, interleaved


@dataclass(frozen=True)
class SensitivityRow:
    group: str
    nodes: int
    min_cosine: float  # on the selection inputs, this group alone quantized
    top1_agreement: float


@dataclass
class QuantizationResult:
    quantizer: dict
    calibration: dict
    groups: int
    keep_float: list[str]  # from the recipe
    float_groups: list[str]  # what the chosen model keeps in float (keep_float included)
    selection: dict  # the chosen candidate on the selection inputs: min_cosine, top1_agreement, speedup
    sensitivity: list[SensitivityRow] = field(default_factory=list)
    tradeoff: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Trial:
    """Builds and runs candidates: outputs on the selection inputs, and speed against the float model."""

    def __init__(self, quantizer: Quantizer, open_runner: Callable[[Path], Callable[[np.ndarray], np.ndarray]],
                 float_model: Path, inputs: np.ndarray, reference: np.ndarray, tolerances: Tolerances,
                 workdir: Path) -> None:
        self.quantizer, self.open_runner = quantizer, open_runner
        self.inputs, self.reference, self.tolerances = inputs, reference, tolerances
        self.workdir = workdir
        self.float_runner = open_runner(float_model)
        self.suffix = float_model.suffix  # .onnx, .mlpackage, ...
        # a reference execution (an interpreter) computes what a device would, but its speed says nothing
        self.timed = getattr(self.float_runner, "is_deployment_runtime", True)
        self.built = 0

    def build(self, float_groups: frozenset[str]) -> Path:
        self.built += 1
        path = self.workdir / f"candidate-{self.built}{self.suffix}"
        self.quantizer.build(float_groups, path)
        return path

    def measure(self, float_groups: frozenset[str], timed: bool) -> tuple[Candidate, Path]:
        path = self.build(float_groups)
        runner = self.open_runner(path)
        report = compare_outputs(runner(self.inputs), self.reference, ("image",) * len(self.inputs),
                                 self.tolerances)
        speedup = self.speedup(runner) if timed and self.timed else None
        ordered = tuple(g for g in self.quantizer.groups if g in float_groups)
        return Candidate(ordered, report.min_cosine, report.top1_agreement, report.passed, speedup), path

    def speedup(self, runner: Callable[[np.ndarray], np.ndarray], rounds: int = SPEED_ROUNDS) -> float | None:
        """Median call time of the float model over this one's, batch 1, calls alternating between the two (None
        on a reference execution, whose speed is not a device's)."""
        if not self.timed:
            return None
        one = self.inputs[:1]
        for _ in range(3):
            self.float_runner(one), runner(one)
        times: dict[str, list[float]] = {"float": [], "int": []}
        for _ in range(rounds):
            for name, run in (("float", self.float_runner), ("int", runner)):
                start = time.perf_counter()
                run(one)
                times[name].append(time.perf_counter() - start)
        return round(statistics.median(times["float"]) / statistics.median(times["int"]), 3)


def _remove(path: Path) -> None:
    """A candidate: a file (.onnx) or a package directory (.mlpackage)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _move(path: Path, out: Path) -> None:
    """The chosen candidate into the float model's place in the staging directory."""
    _remove(out)
    shutil.move(path, out)


def _sensitivity(trial: _Trial, quantizer: Quantizer, candidates: list[str]) -> list[SensitivityRow]:
    rows = []
    every = frozenset(quantizer.groups)
    for group in candidates:
        measured, path = trial.measure(every - {group}, timed=False)
        _remove(path)
        rows.append(SensitivityRow(group, len(quantizer.nodes[group]), measured.min_cosine,
                                   measured.top1_agreement))
    return sorted(rows, key=lambda row: (row.min_cosine, row.top1_agreement))


def select_quantization(quantizer: Quantizer, open_runner: Callable[[Path], Callable[[np.ndarray], np.ndarray]],
                        float_model: Path, selection: np.ndarray, reference: np.ndarray, tolerances: Tolerances,
                        settings: QuantizationSection, workdir: Path, out: Path) -> QuantizationResult:
    """Chooses what stays in float (see the module docstring), writes the chosen model to ``out``, and returns
    the record of how it was chosen. Raises ParityError when no candidate within ``max_float_groups`` passes."""
    unknown = [g for g in settings.keep_float if g not in quantizer.groups]
    if unknown:
        raise RecipeError(f"quantization.keep_float: no node group {unknown[0]!r}; the groups are "
                          f"{', '.join(quantizer.groups)}")
    forced = frozenset(settings.keep_float)
    # stricter than the gate: a choice that only just passes on the selection inputs fails on others
    stricter = tolerances.model_copy(update={"min_cosine": 1 - (1 - tolerances.min_cosine) * settings.selection_margin})
    trial = _Trial(quantizer, open_runner, float_model, selection, reference, stricter, workdir)
    tried: dict[tuple[str, ...], tuple[Candidate, Path]] = {}

    def attempt(float_groups: frozenset[str]) -> Candidate:
        candidate, path = trial.measure(float_groups, timed=True)
        tried[candidate.float_groups] = (candidate, path)
        return candidate

    chosen = attempt(forced)
    rows: list[SensitivityRow] = []
    if not chosen.passed and settings.sensitivity:
        rows = _sensitivity(trial, quantizer, [g for g in quantizer.groups if g not in forced])
        ranked = [row.group for row in rows]
        limit = min(settings.max_float_groups, len(ranked))
        passing: int | None = None
        failing, k = 0, 1
        while k <= limit:  # grow the float set: 1, 2, 4, ... groups back in float
            if attempt(forced | set(ranked[:k])).passed:
                passing = k
                break
            failing, k = k, (k * 2 if k * 2 <= limit or k == limit else limit)
        if passing is not None:
            low, high = failing, passing
            while high - low > 1:  # the smallest k that passes, between the last failure and the first pass
                middle = (low + high) // 2
                low, high = (low, middle) if attempt(forced | set(ranked[:middle])).passed else (middle, high)
            chosen = tried[tuple(g for g in quantizer.groups if g in forced | set(ranked[:high]))][0]
    if not chosen.passed:
        best = max((c for c, _ in tried.values()), key=lambda c: (c.top1_agreement, c.min_cosine))
        raise ParityError(
            f"no int8 candidate passes the gate on the {len(selection)} selection inputs (best: "
            f"{len(best.float_groups)} of {len(quantizer.groups)} groups in float, min cosine "
            f"{best.min_cosine:.4f}, top-1 agreement {best.top1_agreement:.0%}); calibrate on more or more "
            "representative inputs (--calibration), raise quantization.max_float_groups, or keep groups in float "
            "(quantization.keep_float)")
    path = tried[chosen.float_groups][1]
    final_speed = trial.speedup(open_runner(path), rounds=3 * SPEED_ROUNDS)
    _move(path, out)
    for _, other in tried.values():
        _remove(other)
    return QuantizationResult(
        quantizer=quantizer.describe(), calibration={}, groups=len(quantizer.groups),
        keep_float=list(settings.keep_float), float_groups=list(chosen.float_groups),
        selection={"min_cosine": chosen.min_cosine, "top1_agreement": chosen.top1_agreement,
                   "speedup": final_speed, "inputs": len(selection), "min_cosine_required": stricter.min_cosine},
        sensitivity=rows, tradeoff=sorted((c for c, _ in tried.values()), key=lambda c: len(c.float_groups)))
