"""A built TensorRT engine as one of the pipeline's runtimes: parity through ``__call__`` and, per profile batch
size, CUDA-event GPU compute time and host end-to-end time in the shared latency schema."""

from __future__ import annotations

from pathlib import Path

from efexport.exporter.recipes import Recipe
from efexport.exporter.targets.tensorrt.api import EngineRunner
from efexport.validate.gpu_timing import gpu_fingerprint, gpu_latency_reports
from efexport.validate.latency import LatencyReport


class TimedEngineRunner(EngineRunner):
    def __init__(self, plan: Path, recipe: Recipe) -> None:
        super().__init__(plan, precision=recipe.precision, host_code_allowed=recipe.tensorrt.version_compatible)
        self.recipe = recipe

    def batch_sizes(self) -> list[int]:
        """The profile's distinct batch sizes (min, opt, max), or the static batch."""
        if not self.recipe.export.dynamic_batch:
            return [self.static_batch or 1]
        return sorted(set(self.recipe.tensorrt.profile))

    def latency_reports(self, recipe: Recipe) -> list[LatencyReport]:
        settings = recipe.latency
        reports: list[LatencyReport] = []
        for batch in self.batch_sizes():
            runs = settings.window_runs * settings.stable_windows  # one run of the samples a settled CPU one has
            compute_ms, host_ms = self.time_batch(batch, settings.warmup_runs, runs)
            reports += gpu_latency_reports(compute_ms, host_ms, runtime_version=self.runtime_version,
                                           precision=recipe.precision, batch_size=batch,
                                           warmup_runs=settings.warmup_runs, device=gpu_fingerprint())
        return reports
