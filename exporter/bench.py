"""``efexport bench``: latency of one EfficientFormer variant on every backend a user could pick, side by side.

For each variant, in one process, measured interleaved (validate.latency.measure_interleaved) so drift of the
machine hits every backend alike:

- ``pytorch-eager``: the model as loaded (unfolded), PyTorch eager;
- ``pytorch-eager-folded``: after efexport's fold passes (the ONNX recipe's), PyTorch eager;
- ``pytorch-compiled`` (``--compile``): ``torch.compile`` of the folded model, what a user might pick instead;
- ``onnxruntime-plain``: ONNX Runtime on a plain upstream-style export (``torch.onnx.export`` of the unfolded
  model, no simplifier);
- ``onnxruntime-folded``: ONNX Runtime on efexport's export (fold, capture, export, onnxsim);
- every built package of the variant under ``--out`` whose deployment runtime is present here (ONNX Runtime
  for ONNX packages, Core ML on macOS, a TensorRT engine where TensorRT and a GPU exist). Runtimes with their
  own timer (the TensorRT engine's CUDA events) report per profile batch instead of joining the interleaving.

Both ONNX exports have a dynamic batch axis, so the batch sweep (throughput against batch size) runs them too.
Costs come from efexport's own folded ONNX graph (validate.macs): MACs per image and stored values, and achieved
GFLOP/s (2 x MACs x batch / p50) per backend shows how far each is from the machine's peak.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from efexport.exporter.errors import UsageError
from efexport.exporter.manifest import MANIFEST_FILE, REFERENCE_FILE
from efexport.exporter.manifest_schema import load_manifest
from efexport.exporter.recipes import Recipe, apply_overrides, default_recipe_path, load_recipe
from efexport.exporter.runtimes import accepted_inputs, timed_runtimes
from efexport.exporter.stages.capture import capture
from efexport.exporter.stages.fold import fold_model, fold_probe
from efexport.exporter.stages.load import LoadedModel, load_model
from efexport.exporter.targets import TARGETS
from efexport.exporter.targets.onnx.export import OnnxRunner, export_onnx
from efexport.exporter.verify import other_runtimes_present
from efexport.validate.latency import LatencyReport, Measurement, WindowRule, host_fingerprint, measure_interleaved
from efexport.validate.macs import graph_cost
from efexport.validate.reference import ReferenceSet, make_reference_inputs

BENCH_SCHEMA = "efexport.bench/1"
SWEEP_BATCHES = (1, 2, 4, 8, 16, 32)
MAX_SWEEP_BATCH = 1024  # the recipes' latency.batch_size cap; a batch of 100000 is a 60 GB input
SWEPT_BACKENDS = ("onnxruntime-plain", "onnxruntime-folded")
EAGER = "pytorch-eager"
FOLDED = "onnxruntime-folded"  # efexport's float ONNX: what an integer package's speed is measured against


@dataclass(frozen=True)
class BenchSettings:
    variants: tuple[str | None, ...]  # None: the variant the checkpoint holds
    weights: Path | None = None
    seed: int = 0
    threads: int = 2
    rule: WindowRule = field(default_factory=WindowRule)
    batches: tuple[int, ...] = SWEEP_BATCHES  # () for no sweep
    targets: tuple[str, ...] = tuple(TARGETS)  # whose built packages to time
    packages_root: Path = Path("artifacts")
    compile: bool = False
    opset: int = 17


@dataclass
class Backend:
    """One way to run the model: a callable on a batch of inputs plus what the latency report says of it."""

    name: str
    description: str
    runtime: str  # the LatencyReport backend, e.g. "onnxruntime-cpu"
    runtime_version: str
    precision: str
    threads: int | None
    run: Callable[[np.ndarray], object]
    example: np.ndarray  # one input (1, 3, H, W) it takes
    compute_units: str | None = None
    own_timer: Callable[[], list[LatencyReport]] | None = None  # e.g. a TensorRT engine's CUDA-event timing

    def call_with(self, batch: int) -> Callable[[], object]:
        inputs = self.example.repeat(batch, axis=0)
        return lambda: self.run(inputs)

    def report(self, measurement: Measurement, batch: int) -> LatencyReport:
        return LatencyReport.from_measurement(
            measurement, backend=self.runtime, runtime_version=self.runtime_version, precision=self.precision,
            batch_size=batch, threads=self.threads, device=host_fingerprint(), compute_units=self.compute_units)


@contextlib.contextmanager
def pinned_torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def torch_backend(name: str, description: str, model: torch.nn.Module, example: np.ndarray,
                  threads: int) -> Backend:
    @torch.no_grad()
    def run(inputs: np.ndarray) -> object:
        return model(torch.from_numpy(inputs))

    return Backend(name, description, "pytorch", torch.__version__, "fp32", threads, run, example)


def plain_export(model: torch.nn.Module, path: Path, opset: int, dynamic_batch: bool = True) -> onnx.ModelProto:
    """``torch.onnx.export`` of the unfolded model as a user would write it (TorchScript exporter, no
    simplifier): the baseline efexport's export is compared with."""
    buffer = io.BytesIO()
    axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, 224, 224),), buffer, input_names=["image"],
                          output_names=["logits"], opset_version=opset, dynamic_axes=axes, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    onnx.save(exported, path)
    return exported


def onnx_backend(name: str, description: str, path: Path, example: np.ndarray, threads: int) -> Backend:
    runner = OnnxRunner(path, threads)
    return Backend(name, description, runner.backend, runner.runtime_version, "fp32", threads, runner, example)


def onnx_recipe(opset: int) -> Recipe:
    """The shipped ONNX recipe at ``opset`` (erf-gelu only below 20, as ``efexport onnx --opset`` needs)."""
    recipe, _ = load_recipe(default_recipe_path("onnx"))
    return apply_overrides(recipe, {"export.opset": opset, "fold.passes": [
        p for p in recipe.fold.passes if opset < 20 or p != "erf-gelu"]})


def package_dirs(root: Path, model_name: str, targets: tuple[str, ...]) -> dict[str, list[Path]]:
    """The built packages of ``model_name`` (e.g. efficientformer-l1) under ``root``, per target (any precision)."""
    found: dict[str, list[Path]] = {}
    for target in targets:
        found[target] = sorted(p.parent for p in (root / model_name).glob(f"{target}-*/{MANIFEST_FILE}"))
    return found


def package_backends(package: Path, threads: int) -> tuple[list[Backend], dict[str, str]]:
    """The deployment runtimes present here for one package, and why the others are not."""
    manifest = load_manifest(package)
    target = TARGETS[manifest.target.format].load()
    recipe = Recipe.model_validate(manifest.recipe.values.as_json())
    model_path = package / manifest.target.model_file
    runner = target.open_runner(model_path, threads)
    others, absent = other_runtimes_present(target, model_path, recipe)
    reference = ReferenceSet.load(package / REFERENCE_FILE)
    label = package.name
    missing = {f"{label}: {runtime}": why for runtime, why in absent.items()}
    backends = []
    for timed in timed_runtimes(runner, others):
        keep = accepted_inputs(timed, reference)
        if not keep:
            missing[f"{label} on {timed.backend}"] = "takes none of the package's reference inputs"
            continue
        timer = (lambda t=timed, r=recipe: t.latency_reports(r)) if hasattr(timed, "latency_reports") else None
        backends.append(Backend(f"package {label} on {timed.backend}", f"built package {package}", timed.backend,
                                timed.runtime_version, manifest.target.precision, timed.threads, timed,
                                reference.inputs[keep[0]:keep[0] + 1], getattr(timed, "compute_units", None), timer))
    if not backends and not missing:
        missing[label] = f"{target.name}: only a reference execution runs here ({target.latency_unavailable})"
    return backends, missing


@dataclass
class VariantBench:
    """What ``bench_variant`` measured for one variant; ``to_dict`` is its entry in the bench report."""

    loaded: LoadedModel
    cost: dict
    backends: list[dict]
    throughput: list[dict]
    own_timer: list[dict]
    not_measured: dict[str, str]
    quantized: list[dict] = field(default_factory=list)  # integer packages: their trade-off, and measured speed

    def to_dict(self) -> dict:
        by_name = {b["name"]: b["latency"]["stats_ms"]["p50"] for b in self.backends}
        ratios = {f"{a}/{b}": by_name[a] / by_name[b] for a, b in (
            ("onnxruntime-folded", "onnxruntime-plain"), ("onnxruntime-folded", EAGER),
            ("onnxruntime-plain", EAGER), ("pytorch-eager-folded", EAGER), ("pytorch-compiled", EAGER),
            ("pytorch-compiled", "onnxruntime-folded")) if a in by_name and b in by_name}
        quantized = []
        for entry in self.quantized:  # speed against efexport's float ONNX, measured in this run's interleaving
            timed = [name for name in by_name if name.startswith(f"package {entry['package']} on ")]
            speedup = by_name[FOLDED] / by_name[timed[0]] if timed and FOLDED in by_name else None
            quantized.append(entry | {"measured_speedup_over_float_onnx": speedup})
        loaded = self.loaded
        return {"variant": loaded.variant, "weights": loaded.weights, "cost": self.cost,
                "published": loaded.family.published(loaded.variant), "backends": self.backends, "p50_ratios": ratios,
                "throughput": self.throughput, "own_timer": self.own_timer, "not_measured": self.not_measured,
                "quantized": quantized}


def quantized_entry(package: Path) -> dict | None:
    """An integer package's quantization record for the bench report (None for a float package): what stayed
    float, the gate's figures on the held-out inputs, and every candidate of the error/speed trade-off."""
    manifest = load_manifest(package)
    quantization = manifest.quantization
    if quantization is None:
        return None
    parity = manifest.parity
    return {"package": package.name, "precision": manifest.target.precision,
            "groups": quantization.groups, "float_groups": list(quantization.float_groups),
            "gate": {"min_cosine": parity.min_cosine, "top1_agreement": parity.top1_agreement,
                     "inputs": len(parity.per_input), "required_min_cosine": parity.tolerances.min_cosine},
            "calibration": quantization.calibration.description,
            "tradeoff": [c.model_dump(mode="json") for c in quantization.tradeoff]}


def matmul_gflops(threads: int, size: int = 1024) -> dict:
    """What this machine's CPU reaches on a large float32 matrix product with the same threads (PyTorch's
    BLAS): the practical peak the backends' achieved GFLOP/s are compared with."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    measurement = measure_interleaved({"mm": lambda: torch.mm(a, b)}, WindowRule(3, 10, 3, 0.05, 12))["mm"]
    p50 = measurement.stats().p50
    return {"what": f"torch.mm {size}x{size} float32, {threads} threads", "gflops_per_s": 2 * size**3 / (p50 / 1000)
            / 1e9, "p50_ms": p50, "converged": measurement.converged}


def _gflops(macs: int, batch: int, p50_ms: float) -> float:
    return 2 * macs * batch / (p50_ms / 1000) / 1e9


def sweep_rule(rule: WindowRule, batch: int) -> WindowRule:
    """Fewer calls per window as the batch grows, so each window holds about the same number of images."""
    return WindowRule(max(1, rule.warmup_runs // batch), max(3, rule.window_runs // batch), rule.stable_windows,
                      rule.stable_within, rule.max_windows)


def bench_variant(variant: str | None, settings: BenchSettings, progress: Callable[[str], None]) -> VariantBench:
    loaded = load_model(settings.weights, variant, settings.seed)
    recipe = onnx_recipe(settings.opset)
    inputs, kinds = make_reference_inputs(0, 1, 1)
    example = inputs[1:2]  # the image-like input
    progress(f"{loaded.variant}: folding and exporting")
    folded = fold_model(loaded.model, list(recipe.fold.passes), fold_probe(inputs, kinds), recipe.fold.max_abs).model
    with tempfile.TemporaryDirectory(prefix="efexport-bench-") as tmp:
        plain_path, folded_path = Path(tmp) / "plain.onnx", Path(tmp) / "folded.onnx"
        plain_export(loaded.model, plain_path, settings.opset)
        captured = capture(folded, 224, loaded.model.cfg.num_classes, dynamic_batch=True)
        export_onnx(captured, folded_path, settings.opset, recipe.export.simplifier)
        cost = graph_cost(onnx.load(folded_path)).to_dict() | {
            "counted_on": "efexport's folded ONNX graph", "pytorch_parameters":
                sum(p.numel() for p in loaded.model.parameters())}
        backends = [
            torch_backend(EAGER, "PyTorch eager, the model as loaded", loaded.model, example, settings.threads),
            torch_backend("pytorch-eager-folded", "PyTorch eager after efexport's fold passes", folded, example,
                          settings.threads),
            onnx_backend("onnxruntime-plain", f"ONNX Runtime, plain torch.onnx.export (opset {settings.opset}, "
                                              "unfolded, no simplifier)", plain_path, example, settings.threads),
            onnx_backend("onnxruntime-folded", f"ONNX Runtime, efexport's export (opset {settings.opset}, folded, "
                                               f"{recipe.export.simplifier})", folded_path, example, settings.threads),
        ]
        not_measured: dict[str, str] = {}
        quantized: list[dict] = []
        if settings.compile:
            progress(f"{loaded.variant}: torch.compile")
            compiled = torch_backend("pytorch-compiled", "torch.compile (inductor) of the folded model",
                                     torch.compile(folded), example, settings.threads)
            try:
                compiled.call_with(1)()  # compile now, not inside the warm-up of the first window
                backends.append(compiled)
            except Exception as exc:  # e.g. no C++ compiler for inductor: the other backends still count
                not_measured["pytorch-compiled"] = f"torch.compile failed: {type(exc).__name__}: {exc}"[:500]
        for target, packages in package_dirs(settings.packages_root, loaded.package_name, settings.targets).items():
            if not packages:
                not_measured[target] = (f"no {target} package of {loaded.variant} under {settings.packages_root} "
                                        f"(efexport {target} --variant {loaded.variant} builds one)")
            for package in packages:
                found, missing = package_backends(package, settings.threads)
                backends += found
                not_measured |= missing
                if (entry := quantized_entry(package)) is not None:
                    quantized.append(entry)
        bench = _measure(loaded, cost, backends, not_measured, settings, progress)
        bench.quantized = quantized
        return bench


def _measure(loaded: LoadedModel, cost: dict, backends: list[Backend], not_measured: dict[str, str],
             settings: BenchSettings, progress: Callable[[str], None]) -> VariantBench:
    interleaved = [b for b in backends if b.own_timer is None]
    progress(f"{loaded.variant}: batch 1 on {len(interleaved)} backends, interleaved")
    measured = measure_interleaved({b.name: b.call_with(1) for b in interleaved}, settings.rule)
    eager_p50 = measured[EAGER].stats().p50
    rows = []
    for b in interleaved:
        report = b.report(measured[b.name], 1)
        rows.append({"name": b.name, "description": b.description, "latency": report.to_dict(),
                     "gflops_per_s": _gflops(cost["macs"], 1, report.stats_ms.p50),
                     "speedup_over_eager": eager_p50 / report.stats_ms.p50})
    own = [r.to_dict() | {"name": b.name} for b in backends if b.own_timer is not None for r in b.own_timer()]
    throughput = []
    swept = [b for b in interleaved if b.name in SWEPT_BACKENDS]
    for batch in settings.batches:
        progress(f"{loaded.variant}: batch {batch} on {', '.join(b.name for b in swept)}")
        at_batch = measure_interleaved({b.name: b.call_with(batch) for b in swept}, sweep_rule(settings.rule, batch))
        for b in swept:
            report = b.report(at_batch[b.name], batch)
            throughput.append({"backend": b.name, "batch_size": batch, "images_per_second": report.images_per_second,
                               "gflops_per_s": _gflops(cost["macs"], batch, report.stats_ms.p50),
                               "latency": report.to_dict()})
    return VariantBench(loaded, cost, rows, throughput, own, not_measured)


def run_bench(settings: BenchSettings, progress: Callable[[str], None] = lambda _: None) -> dict:
    """The bench report (schema efexport.bench/1) for every variant of ``settings``."""
    if settings.weights is not None and len(settings.variants) > 1:
        raise UsageError("--weights holds one variant: bench several variants with random-init weights, or one "
                         "at a time with their checkpoints")
    if any(b < 1 for b in settings.batches):
        raise UsageError(f"--batches {','.join(map(str, settings.batches))}: batch sizes must be at least 1")
    if any(b > MAX_SWEEP_BATCH for b in settings.batches):
        raise UsageError(f"--batches {','.join(map(str, settings.batches))}: batch sizes must be at most "
                         f"{MAX_SWEEP_BATCH}")
    unknown = [t for t in settings.targets if t not in TARGETS]
    if unknown:
        raise UsageError(f"--targets: unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    with pinned_torch_threads(settings.threads):
        results = [bench_variant(v, settings, progress).to_dict() for v in settings.variants]
        peak = matmul_gflops(settings.threads)
    for variant in results:
        for row in variant["backends"] + variant["throughput"]:
            row["fraction_of_matmul_peak"] = row["gflops_per_s"] / peak["gflops_per_s"]
    return {"schema": BENCH_SCHEMA, "device": host_fingerprint(), "threads": settings.threads,
            "machine_matmul_peak": peak,
            "method": settings.rule.describe() + "; backends interleaved window by window, order alternating",
            "batches": list(settings.batches), "variants": results}
