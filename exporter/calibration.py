"""Calibration inputs for an integer precision, and the held-out inputs that judge it.

Sources (``--calibration``): a folder of images (any format Pillow reads, preprocessed as the package's
``preprocessing`` says: ``exporter.images``), an ``.npy`` array or an ``.npz`` archive of one array, shaped
(N, 3, H, W) and already normalised. Without a source, a synthetic picture-like set is made (``exporter.synthetic``)
and the package is marked not deployable: ranges measured on made-up pictures say little about real ones.

The inputs are split three ways, in a seeded shuffle, so that nothing judges the quantization with inputs it
was calibrated on:
- ``calibration``: the activation ranges are measured on these (``quantization.samples`` of them);
- ``selection``: held out; the per-layer sensitivity analysis and the choice of what stays in float use them;
- ``gate``: held out from both; the parity gate and ``reference_io.npz`` (so ``verify``) use them.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from efexport.exporter.errors import InputSpecError
from efexport.exporter.images import image_files, load_images
from efexport.exporter.preprocessing import Preprocessing
from efexport.exporter.synthetic import normalised_images

ARRAY_SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class CalibrationSet:
    calibration: np.ndarray  # (N, 3, S, S) float32, normalised: ranges are measured on these
    selection: np.ndarray  # held out: sensitivity analysis and the float/integer choice
    gate: np.ndarray  # held out from both: the parity gate
    source: str  # "images", "array" or "synthetic"
    description: str  # for people: the folder or file and how many inputs it gave
    sha256: str  # of the inputs as used (all three splits, in order): two runs on the same data agree

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def describe(self) -> dict:
        return {"source": self.source, "description": self.description, "sha256": self.sha256,
                "calibration_inputs": len(self.calibration), "selection_inputs": len(self.selection),
                "gate_inputs": len(self.gate), "synthetic": self.synthetic}


def _read_array(path: Path) -> np.ndarray:
    """The one array of an ``.npy`` or ``.npz`` file, read without pickles."""
    try:
        with open(path, "rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    names = list(loaded.files)
                    if len(names) != 1:
                        raise InputSpecError(f"--calibration {path}: an .npz must hold exactly one array (inputs "
                                             f"shaped N x 3 x H x W); it holds {len(names)}: {', '.join(names[:5])}")
                    return np.asarray(loaded[names[0]])
            return np.asarray(loaded)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputSpecError(f"--calibration {path}: not a NumPy array file: {exc}") from None


def _checked_array(array: np.ndarray, path: Path, size: int) -> np.ndarray:
    if array.ndim != 4 or array.shape[1:] != (3, size, size):
        raise InputSpecError(f"--calibration {path}: arrays must be N x 3 x {size} x {size} (normalised model "
                             f"inputs), not {' x '.join(map(str, array.shape))}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputSpecError(f"--calibration {path}: arrays must be floating point (normalised model inputs), not "
                             f"{array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputSpecError(f"--calibration {path}: the array holds NaN or infinite values")
    return array


def _from_source(source: Path, preprocessing: Preprocessing, wanted: int) -> tuple[np.ndarray, str, str]:
    """(inputs, kind, description) read from ``source``: at most ``wanted`` inputs, in a stable order."""
    if source.is_dir():
        files = image_files(source, recursive=True)
        if not files:
            raise InputSpecError(f"--calibration {source}: no image files in it (looked for "
                                 f"{', '.join(sorted({'.jpg', '.png', '.webp', '.bmp', '.tiff'}))} and others "
                                 "Pillow reads)")
        chosen = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:wanted]]
        return load_images(sorted(chosen), preprocessing), "images", f"{source} ({len(chosen)} of {len(files)} images)"
    if source.suffix.lower() in ARRAY_SUFFIXES:
        if not source.is_file():
            raise InputSpecError(f"--calibration {source}: no such file")
        array = _checked_array(_read_array(source), source, preprocessing.input_size)
        return array[:wanted], "array", f"{source} ({min(len(array), wanted)} of {len(array)} inputs)"
    if not source.exists():
        raise InputSpecError(f"--calibration {source}: no such file or folder")
    raise InputSpecError(f"--calibration {source}: give a folder of images or an .npy/.npz array of normalised "
                         "inputs")


def synthetic_inputs(count: int, size: int, seed: int) -> np.ndarray:
    """Picture-like inputs (smooth colour fields, gradients, edges), normalised: the fallback without data."""
    return normalised_images(torch.Generator().manual_seed(seed), count, size).numpy().astype(np.float32)


def load_calibration(source: Path | None, preprocessing: Preprocessing, samples: int, held_out: int,
                     seed: int = 0) -> CalibrationSet:
    """``samples`` calibration inputs and ``held_out`` others (half to select, half to gate) from ``source``, or a
    synthetic set when ``source`` is None. Too few inputs for the three splits is an error naming the counts."""
    wanted = samples + held_out
    if source is None:
        inputs, kind = synthetic_inputs(wanted, preprocessing.input_size, seed), "synthetic"
        description = f"{wanted} synthetic picture-like inputs (seed {seed})"
    else:
        inputs, kind, description = _from_source(Path(source), preprocessing, wanted)
    selection_count = held_out // 2
    if len(inputs) < held_out + 1 or selection_count < 1:
        raise InputSpecError(f"--calibration {source}: {len(inputs)} inputs; at least {held_out + 1} are needed "
                             f"({held_out} held out to select and gate, the rest to calibrate)")
    order = np.random.default_rng(seed).permutation(len(inputs))
    shuffled = np.ascontiguousarray(inputs[order])
    gate, selection = shuffled[:held_out - selection_count], shuffled[held_out - selection_count:held_out]
    calibration = shuffled[held_out:]
    digest = hashlib.sha256(shuffled.tobytes()).hexdigest()
    return CalibrationSet(calibration, selection, gate, kind, description, digest)
