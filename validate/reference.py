"""The fixed, seeded inputs every artifact is checked on, and the PyTorch outputs they are checked against."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from efexport.exporter.synthetic import normalised_images

NOISE, IMAGE = "noise", "image"


@dataclass(frozen=True)
class ReferenceSet:
    inputs: np.ndarray  # (K, 3, H, W) float32, already normalised
    kinds: tuple[str, ...]  # "noise" or "image", one per input
    outputs: np.ndarray  # (K, num_classes) float32 from the unfolded PyTorch model

    def save(self, path: Path) -> None:
        """An ``.npz`` (what ``np.load`` reads) written without the clock: the same set gives the same bytes."""
        arrays = {"inputs": self.inputs, "outputs": self.outputs, "kinds": np.array(self.kinds)}
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                with archive.open(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), "w") as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)

    @classmethod
    def load(cls, path: Path) -> ReferenceSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["inputs"], tuple(str(k) for k in data["kinds"]), data["outputs"])


def make_reference_inputs(seed: int, noise_inputs: int, image_inputs: int,
                          image_size: int = 224) -> tuple[np.ndarray, tuple[str, ...]]:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(noise_inputs, 3, image_size, image_size, generator=gen)
    images = normalised_images(gen, image_inputs, image_size)
    kinds = (NOISE,) * noise_inputs + (IMAGE,) * image_inputs
    return torch.cat([noise, images]).numpy().astype(np.float32), kinds


@torch.no_grad()
def pytorch_outputs(model: torch.nn.Module, inputs: np.ndarray, batch: int = 8) -> np.ndarray:
    model.eval()
    chunks = [model(torch.from_numpy(inputs[i:i + batch])) for i in range(0, len(inputs), batch)]
    return torch.cat(chunks).numpy().astype(np.float32)


def build_reference_set(model: torch.nn.Module, seed: int, noise_inputs: int, image_inputs: int,
                        image_size: int = 224) -> ReferenceSet:
    inputs, kinds = make_reference_inputs(seed, noise_inputs, image_inputs, image_size)
    return ReferenceSet(inputs, kinds, pytorch_outputs(model, inputs))
