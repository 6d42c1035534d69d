"""What the Core ML converter (``exporter.targets.coreml``) and the runners that execute its packages
(``validate.coreml_runtime``, the reference-interpreter runner) share: coremltools imported quietly, the
package's feature names, and the pixels an image input takes for a normalised reference input.

It lives in ``validate`` because the runners sit below the targets: the target imports these names from here,
never the other way round.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import ModuleType

import numpy as np

from efexport.exporter.errors import StageError
from efexport.exporter.preprocessing import IMAGENET
from efexport.exporter.quiet import quieted

# The package's features: the input, the fp32 logits beside the classifier, and the classifier's own outputs.
INPUT_NAME, LOGITS, PROBABILITIES, LABEL = "image", "logits", "probabilities", "classLabel"


def quiet_coremltools() -> AbstractContextManager[None]:
    """coremltools prints progress bars and warns about untested torch versions: not for our users' consoles."""
    return quieted("coremltools", stream="stderr")


def import_coremltools() -> ModuleType:
    """coremltools, imported without its import-time complaints (missing macOS runtime, untested torch)."""
    # Imported here, on first use: coremltools is an optional extra and slow to import.
    try:
        with quiet_coremltools():
            import coremltools
    except ImportError as exc:
        # The base install exports ONNX only: say which extra brings the Core ML converter, not a bare traceback.
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == "coremltools"
        what = "coremltools is not installed" if missing else f"coremltools cannot be imported ({exc})"
        raise StageError(f"{what}; the Core ML target needs it: pip install 'efexport[coreml]'") from exc

    return coremltools


def normalised_to_pixels(inputs: np.ndarray) -> np.ndarray:
    """Undo ImageNet normalisation: the RGB pixel values (0-255 for real images) a Core ML image input takes."""
    mean = np.array(IMAGENET.mean, dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.array(IMAGENET.std, dtype=np.float64).reshape(1, 3, 1, 1)
    return ((inputs.astype(np.float64) * std + mean) * 255).astype(np.float32)
