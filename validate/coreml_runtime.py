"""Core ML itself, on macOS only: ``MLModel.predict`` for parity and latency, one runner per compute-unit setting.

Elsewhere coremltools has no runtime (its ``libcoremlpython`` proxy is macOS-only), so the pipeline's parity
comes from ``validate.mil_interpreter`` and nothing is timed. The macOS CI job runs this path.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from efexport.validate.coreml_io import INPUT_NAME, LOGITS, import_coremltools, normalised_to_pixels

if TYPE_CHECKING:
    from PIL import Image

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def coreml_runtime_available() -> bool:
    """Whether Core ML can execute a model here: macOS with coremltools' native proxy."""
    if sys.platform != "darwin":
        return False
    try:
        from coremltools.libcoremlpython import _MLModelProxy  # noqa: F401
    except ImportError:
        return False
    return True


class CoreMLRuntimeRunner:
    """``MLModel.predict`` with one compute-unit setting. An image-input model takes the 8-bit image inputs only
    (the reference image inputs are exact 8-bit pictures; noise tensors are not images)."""

    is_deployment_runtime = True
    static_batch = 1
    threads = None  # Core ML schedules its own threads

    def __init__(self, path: Path, compute_units: str) -> None:
        ct = import_coremltools()
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        spec = self.model.get_spec()
        self.image_input = spec.description.input[0].type.WhichOneof("Type") == "imageType"
        self.input_kinds = ("image",) if self.image_input else None
        self.compute_units = compute_units
        self.backend = f"coreml-{compute_units.lower().replace('_', '-')}"
        self.runtime_version = f"Core ML on macOS {platform.mac_ver()[0]} (coremltools {ct.__version__})"

    def _feed(self, normalised: np.ndarray) -> np.ndarray | Image.Image:
        """What ``predict`` takes for one normalised input: an 8-bit RGB picture, or the tensor with a batch axis."""
        if not self.image_input:
            return normalised[None]
        from PIL import Image  # only image-input models on macOS need it (Pillow comes with matplotlib)

        pixels = np.clip(np.rint(normalised_to_pixels(normalised[None])[0]), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels.transpose(1, 2, 0), "RGB")

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """The logits of each input, one ``predict`` call per input (the package has a batch of one)."""
        logits = [np.asarray(self.model.predict({INPUT_NAME: self._feed(x)})[LOGITS], dtype=np.float32).reshape(1, -1)
                  for x in inputs]
        return np.concatenate(logits)


def runtime_runners(path: Path) -> list[CoreMLRuntimeRunner]:
    """One runner per compute-unit setting when Core ML can run here; none otherwise."""
    if not coreml_runtime_available():
        return []
    return [CoreMLRuntimeRunner(path, units) for units in COMPUTE_UNITS]
