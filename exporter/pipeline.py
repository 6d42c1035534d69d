"""The staged export pipeline: load -> fold -> capture -> [precision] -> export -> [quantize] -> validate ->
benchmark -> package.

The precision stage runs only for a precision that declares one (``efexport.exporter.precisions``); float
precisions are applied by the target's converter. An integer precision adds a calibrate stage (calibration
inputs, and held-out ones: the gate's reference set is then those held-out images) and a quantize stage (the
target's quantizer, chosen group by group: ``exporter.stages.quantize``).

Data flows one way: each stage takes the previous stages' typed results and returns its own. Everything
is written into a staging directory that becomes the artifact only after the package stage has verified
it; any failure leaves nothing behind but the error.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from efexport.exporter import interrupts
from efexport.exporter.calibration import CalibrationSet, load_calibration
from efexport.exporter.errors import EfexportError, ParityError, RecipeError, StageError, UsageError
from efexport.exporter.manifest import REFERENCE_FILE
from efexport.exporter.output import check_destination, check_output_root, staged_output, write_failure
from efexport.exporter.precisions import PRECISIONS
from efexport.exporter.profiling import PipelineProfiler, format_bytes
from efexport.exporter.recipes import Recipe
from efexport.exporter.runtimes import measure_latency, model_digest, runtime_parity, timed_runtimes
from efexport.exporter.stages.capture import capture
from efexport.exporter.stages.fold import fold_model, fold_probe
from efexport.exporter.stages.load import LoadedModel, load_model
from efexport.exporter.stages.package import build_manifest, package
from efexport.exporter.stages.quantize import select_quantization
from efexport.exporter.targets import TARGETS
from efexport.exporter.targets.base import ExportedModel, Runner, Target
from efexport.exporter.verify import ValidatedRun
from efexport.validate.isolated import run_isolated
from efexport.validate.parity import compare_outputs
from efexport.validate.reference import IMAGE, ReferenceSet, build_reference_set, pytorch_outputs


@dataclass(frozen=True)
class ExportRequest:
    variant: str | None
    weights: Path | None
    seed: int
    out_dir: Path
    recipe: Recipe
    recipe_source: str
    force: bool = False
    trace: bool = False  # write op_trace.json: per-op error growth (targets whose runner can trace)
    calibration: Path | None = None  # integer precisions: images folder or .npy/.npz (None: synthetic, warned)


@dataclass
class ExportResult:
    artifact: Path
    manifest: dict
    stage_seconds: dict[str, float] = field(default_factory=dict)
    profile: dict | None = None  # PipelineProfiler.to_dict() when the run was profiled


class StageReporter:
    """Shows each stage on the console (stderr) and records its wall time; with a profiler, also its peak memory."""

    def __init__(self, console: Console | None, profiler: PipelineProfiler | None = None) -> None:
        self.console = console
        self.profiler = profiler
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        interrupts.raise_if_interrupted()
        start = time.perf_counter()
        status = self.console.status(f"[bold]{name}[/]: {what}") if self.console else contextlib.nullcontext()
        profiled = self.profiler.stage(name) if self.profiler else contextlib.nullcontext()
        try:
            with status, profiled:
                yield
        except EfexportError as exc:
            exc.stage = name
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a wrapped tool failed: say which stage and why, keep the traceback as cause
            error = write_failure(exc) or StageError(f"{type(exc).__name__}: {exc}")
            error.stage = name
            raise error from exc
        interrupts.raise_if_interrupted()
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if self.console:
            peak = f", peak RSS {format_bytes(self.profiler.stages[-1].peak_rss_bytes)}" if self.profiler else ""
            self.console.print(f"[green]ok[/] {name:<10} {what} ({self.seconds[name]:.1f}s{peak})")

    def note(self, message: str) -> None:
        if self.console:
            self.console.print(message)


TRACE_FILE = "op_trace.json"


class SharedInputs:
    """What several exports of one model (``efexport all``) load once and share: the loaded model and its
    reference outputs. Safe to share: the fold stage works on a copy, so the loaded model is never changed."""

    def __init__(self) -> None:
        self._models: dict[tuple, LoadedModel] = {}
        self._references: dict[tuple, ReferenceSet] = {}

    def model(self, weights: Path | None, variant: str | None, seed: int) -> tuple[LoadedModel, bool]:
        """The loaded model, and whether it was loaded before."""
        key = (str(weights) if weights else None, variant, seed)
        shared = key in self._models
        if not shared:
            self._models[key] = load_model(weights, variant, seed)
        return self._models[key], shared

    def reference(self, loaded: LoadedModel, recipe: Recipe) -> ReferenceSet:
        parity = recipe.parity
        key = (id(loaded), parity.seed, parity.noise_inputs, parity.image_inputs, recipe.export.image_size)
        if key not in self._references:
            self._references[key] = build_reference_set(loaded.model, parity.seed, parity.noise_inputs,
                                                        parity.image_inputs, recipe.export.image_size)
        return self._references[key]


def artifact_dir(out_dir: Path, model_name: str, target: str, precision: str) -> Path:
    """OUT/<family>-<variant>/<target>-<precision>, e.g. artifacts/efficientformer-l3/coreml-fp16."""
    return out_dir / model_name / f"{target}-{precision}"


def _gated_parity(runner: Runner, reference: ReferenceSet, recipe: Recipe) -> dict:
    report = runtime_parity(runner, reference, recipe)
    if report is None:
        raise ParityError(f"{runner.backend}: none of the reference inputs is of a kind it takes")
    if not report.passed:
        raise ParityError(f"parity gate failed on {runner.backend}: " + "; ".join(report.failures[:5]))
    return report.to_dict()


@dataclass(frozen=True)
class Calibrated:
    inputs: CalibrationSet
    selection_outputs: np.ndarray  # the unfolded PyTorch model's, on inputs.selection
    gate: ReferenceSet  # the held-out gate inputs and the PyTorch outputs: the validate stage's reference


def _calibrate(request: ExportRequest, loaded: LoadedModel, recipe: Recipe) -> Calibrated:
    settings = recipe.quantization
    preprocessing = loaded.family.preprocessing(loaded.variant, recipe.export.image_size)
    inputs = load_calibration(request.calibration, preprocessing, settings.samples, settings.held_out,
                              recipe.parity.seed)
    gate = ReferenceSet(inputs.gate, (IMAGE,) * len(inputs.gate), pytorch_outputs(loaded.model, inputs.gate))
    return Calibrated(inputs, pytorch_outputs(loaded.model, inputs.selection), gate)


def _quantize(target: Target, exported: ExportedModel, calibrated: Calibrated,
              recipe: Recipe) -> tuple[ExportedModel, dict]:
    """The target's quantizer on the float model it exported, chosen group by group; the chosen model replaces
    the float one in the staging directory."""
    if not hasattr(target, "quantizer"):
        raise UsageError(f"the {target.name} target has no quantizer for {recipe.precision}")
    with tempfile.TemporaryDirectory(prefix="efexport-quantize-") as work:
        workdir = Path(work)
        float_model = workdir / f"float{exported.path.suffix}"
        if exported.path.is_dir():  # a package directory (.mlpackage, .aimodel)
            shutil.copytree(exported.path, float_model)
        else:
            shutil.copyfile(exported.path, float_model)
        quantizer = target.quantizer(float_model, calibrated.inputs.calibration, workdir, recipe)
        result = select_quantization(quantizer, lambda path: target.open_runner(path, recipe.latency.threads),
                                     float_model, calibrated.inputs.selection, calibrated.selection_outputs,
                                     recipe.tolerances(), recipe.quantization, workdir, exported.path)
    result.calibration = calibrated.inputs.describe()
    return target.finish_quantized(exported, recipe), result.to_dict()


def _parity_run(target: Target, path: Path, recipe: Recipe, inputs: np.ndarray) -> tuple[np.ndarray, dict]:
    """The parity runner's outputs, and its report of the run (runners that keep one); in the child process."""
    runner = target.open_runner(path, recipe.latency.threads)
    outputs = runner(inputs)
    return outputs, (runner.report() if hasattr(runner, "report") else {})


def run_export(request: ExportRequest, reporter: StageReporter, shared: SharedInputs | None = None) -> ExportResult:
    """One export; ``shared`` lets several exports of the same model (``efexport all``) load it once."""
    recipe = request.recipe
    target = TARGETS[recipe.target].load()
    shared = shared or SharedInputs()
    check_output_root(request.out_dir)
    with reporter.stage("load", "reading weights"):
        loaded, reused = shared.model(request.weights, request.variant, request.seed)
    if reused:
        reporter.note("[dim]load: the model loaded for the previous target, shared[/]")
    if loaded.is_random:
        name = f"{loaded.family.display_name}-{loaded.variant}"
        reporter.note(f"[yellow]warning:[/] no --weights: {name} is randomly initialised (seed {request.seed}); the "
                      "artifact is marked random-init and is not for deployment")
    if problem := loaded.family.image_size_problem(recipe.export.image_size):
        raise RecipeError(f"export.image_size: {problem}")  # before any work, like the target's own checks
    target.preflight(recipe, loaded.model.cfg.num_classes)  # target-specific inputs fail before any work
    final = artifact_dir(request.out_dir, loaded.package_name, recipe.target, recipe.precision)
    check_destination(final, request.force)
    image_size = recipe.export.image_size
    calibrated = None  # first: calibration data the user got wrong fails before fold and capture take their time
    if PRECISIONS[recipe.precision].needs_calibration:
        with reporter.stage("calibrate", "calibration and held-out inputs, PyTorch outputs on the held-out ones"):
            calibrated = _calibrate(request, loaded, recipe)
        if calibrated.inputs.synthetic:
            reporter.note(f"[yellow]warning:[/] no --calibration data: {recipe.precision} is calibrated on "
                          "synthetic picture-like inputs; the package is marked not deployable")

    with reporter.stage("reference", "PyTorch outputs on the reference inputs"):
        reference = shared.reference(loaded, recipe)
    with reporter.stage("fold", ", ".join(recipe.fold.passes) or "no passes"):
        folded = fold_model(loaded.model, list(recipe.fold.passes), fold_probe(reference.inputs, reference.kinds),
                            max_abs=recipe.fold.max_abs)
    with reporter.stage("capture", "the folded model's graph (torch.export, made when a target or stage asks)"):
        captured = capture(folded.model, image_size, loaded.model.cfg.num_classes, recipe.export.dynamic_batch)
    precision_stage = PRECISIONS[recipe.precision].load_stage()
    if precision_stage is not None:  # e.g. a quantize stage: the target exports what it returns
        with reporter.stage("precision", f"{recipe.precision}: {precision_stage.__name__}"):
            captured = precision_stage(captured, recipe)
    if calibrated is not None:  # the held-out gate inputs are the validate stage's reference
        reference = calibrated.gate

    with staged_output(final, request.force) as staging:
        with reporter.stage("export", target.describe(recipe)):
            exported = target.export(captured, staging, recipe)
            reference.save(staging / REFERENCE_FILE)
        quantization = None
        if calibrated is not None:
            with reporter.stage("quantize", f"{recipe.precision}, {recipe.quantization.method} calibration on "
                                            f"{len(calibrated.inputs.calibration)} inputs"):
                exported, quantization = _quantize(target, exported, calibrated, recipe)
        with reporter.stage("validate", f"{target.name} vs PyTorch on {len(reference.inputs)} inputs"):
            digest = model_digest(exported.path)  # what the run below computes from (package's verify reuses it)
            outputs, run_report = run_isolated(lambda inputs: _parity_run(target, exported.path, recipe, inputs),
                                               reference.inputs, f"{target.name} parity run")
            validated = ValidatedRun(digest, reference.inputs, reference.kinds, outputs) if digest else None
            runner = target.open_runner(exported.path, recipe.latency.threads)  # opened here once it proved safe
            parity = compare_outputs(outputs, reference.outputs, reference.kinds,
                                     recipe.tolerances(getattr(runner, "precision", None)))
            if not parity.passed:
                raise ParityError("parity gate failed: " + "; ".join(parity.failures[:5]))
            if request.trace:
                if not hasattr(runner, "trace"):
                    raise UsageError(f"--trace: the {target.name} target has no per-op trace")
                image = reference.kinds.index("image") if "image" in reference.kinds else 0
                (staging / TRACE_FILE).write_text(json.dumps(runner.trace(reference.inputs[image]), indent=1) + "\n")
            extra_runtimes = target.extra_runtimes(exported.path, recipe)  # e.g. Core ML itself, on macOS
            other_parity = {r.backend: _gated_parity(r, reference, recipe) for r in extra_runtimes}
        runtimes = timed_runtimes(runner, extra_runtimes)
        timed = ", ".join(r.backend for r in runtimes) or f"nothing: {target.latency_unavailable}"
        with reporter.stage("benchmark", f"windows of {recipe.latency.window_runs} timed runs on {timed}"):
            latency = [report for r in runtimes for report in measure_latency(r, recipe, reference)]
        with reporter.stage("package", "manifest, metadata, verification"):
            extras = {"runtime_parity": other_parity} if other_parity else {}
            if not latency:
                extras["latency_note"] = target.latency_unavailable
            extras |= run_report  # e.g. what the Core ML interpreter executed
            manifest = build_manifest(loaded, folded, captured, exported, parity, latency, recipe,
                                      request.recipe_source,
                                      {"backend": runner.backend, "version": runner.runtime_version},
                                      quantization) | extras
            manifest = package(staging, manifest, target, exported, recipe.latency.threads, validated)
    return ExportResult(final, manifest, reporter.seconds,
                        reporter.profiler.to_dict() if reporter.profiler else None)
