"""What the pipeline and ``verify`` both do with a runtime: pick the inputs it takes, check its parity, time it."""

from __future__ import annotations

import numpy as np

from efexport.exporter.recipes import Recipe
from efexport.exporter.targets.base import Runner
from efexport.validate.latency import LatencyReport, host_fingerprint, measure
from efexport.validate.parity import ParityReport, compare_outputs
from efexport.validate.reference import ReferenceSet


def accepted_inputs(runner: Runner, reference: ReferenceSet) -> list[int]:
    """Indices of the reference inputs a runner can take (a Core ML image input cannot take noise tensors)."""
    kinds = getattr(runner, "input_kinds", None)
    return [i for i, kind in enumerate(reference.kinds) if kinds is None or kind in kinds]


def runtime_parity(runner: Runner, reference: ReferenceSet, recipe: Recipe) -> ParityReport | None:
    """The runner's outputs against the reference at its precision's tolerances; None if it takes no input."""
    keep = accepted_inputs(runner, reference)
    if not keep:
        return None
    tolerances = recipe.tolerances(getattr(runner, "precision", None))
    return compare_outputs(runner(reference.inputs[keep]), reference.outputs[keep],
                           tuple(reference.kinds[i] for i in keep), tolerances)


def timed_runtimes(runner: Runner, others: list[Runner]) -> list[Runner]:
    """What latency is measured on: the deployment runtimes (a reference execution, e.g. the Core ML interpreter
    or ONNX Runtime on TensorRT's prepared graph, says nothing about deployed speed)."""
    return ([runner] if getattr(runner, "is_deployment_runtime", True) else []) + others


def _host_latency(runner: Runner, recipe: Recipe, inputs: np.ndarray) -> LatencyReport:
    settings = recipe.latency
    batch = settings.batch_size if runner.static_batch is None else runner.static_batch
    batch_inputs = inputs[:1].repeat(batch, axis=0)
    measurement = measure(lambda: runner(batch_inputs), settings.rule())
    return LatencyReport.from_measurement(
        measurement, backend=runner.backend, runtime_version=runner.runtime_version, precision=recipe.precision,
        batch_size=batch, threads=runner.threads, device=host_fingerprint(),
        compute_units=getattr(runner, "compute_units", None))


def measure_latency(runner: Runner, recipe: Recipe, reference: ReferenceSet) -> list[LatencyReport]:
    """The runner's own latency reports (e.g. per profile batch, on a GPU), or host end-to-end timing."""
    if hasattr(runner, "latency_reports"):
        return runner.latency_reports(recipe)
    return [_host_latency(runner, recipe, reference.inputs[accepted_inputs(runner, reference)])]
