"""The fixed, seeded inputs every artifact is checked on, and the PyTorch outputs they are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exporter.preprocessing import IMAGENET

NOISE, IMAGE = "noise", "image"


@dataclass(frozen=True)
class ReferenceSet:
    inputs: np.ndarray  # (K, 3, H, W) float32, already normalised
    kinds: tuple[str, ...]  # "noise" or "image", one per input
    outputs: np.ndarray  # (K, num_classes) float32 from the unfolded PyTorch model

    def save(self, path: Path) -> None:
        with path.open("wb") as f:
            np.savez(f, inputs=self.inputs, outputs=self.outputs, kinds=np.array(self.kinds))

    @classmethod
    def load(cls, path: Path) -> ReferenceSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["inputs"], tuple(str(k) for k in data["kinds"]), data["outputs"])


def _image_like(gen: torch.Generator, size: int) -> torch.Tensor:
    """A smooth RGB picture in [0, 1]: coarse random colour blobs upsampled, plus a gradient and an edge."""
    coarse = torch.rand(1, 3, 7, 7, generator=gen)
    picture = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    ramp = torch.linspace(0, 1, size)
    picture = picture + 0.3 * ramp.view(1, 1, -1) * torch.rand(3, 1, 1, generator=gen)
    edge = int(torch.randint(size // 4, 3 * size // 4, (1,), generator=gen))
    picture[:, edge:, :] *= 0.6
    return picture.clamp(0, 1)


def make_reference_inputs(seed: int, noise_inputs: int, image_inputs: int,
                          image_size: int = 224) -> tuple[np.ndarray, tuple[str, ...]]:
    gen = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET.mean).view(3, 1, 1)
    std = torch.tensor(IMAGENET.std).view(3, 1, 1)
    tensors = [torch.randn(3, image_size, image_size, generator=gen) for _ in range(noise_inputs)]
    tensors += [(_image_like(gen, image_size) - mean) / std for _ in range(image_inputs)]
    kinds = (NOISE,) * noise_inputs + (IMAGE,) * image_inputs
    return torch.stack(tensors).numpy().astype(np.float32), kinds


@torch.no_grad()
def pytorch_outputs(model: torch.nn.Module, inputs: np.ndarray, batch: int = 8) -> np.ndarray:
    model.eval()
    chunks = [model(torch.from_numpy(inputs[i:i + batch])) for i in range(0, len(inputs), batch)]
    return torch.cat(chunks).numpy().astype(np.float32)


def build_reference_set(model: torch.nn.Module, seed: int, noise_inputs: int, image_inputs: int,
                        image_size: int = 224) -> ReferenceSet:
    inputs, kinds = make_reference_inputs(seed, noise_inputs, image_inputs, image_size)
    return ReferenceSet(inputs, kinds, pytorch_outputs(model, inputs))
