"""Calibration inputs (exporter/calibration.py) and image preprocessing (exporter/images.py), on real photographs
from scikit-image's wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from efexport.exporter.calibration import load_calibration
from efexport.exporter.errors import InputSpecError
from efexport.exporter.images import image_files, load_image
from efexport.exporter.preprocessing import IMAGENET

PHOTOS = Path(skimage.data.__file__).parent
COLOUR_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
                 "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")


def photo_crops(folder: Path, per_photo: int, seed: int = 0) -> Path:
    """Square crops of the colour photographs, as JPEG and PNG files (two formats Pillow reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in COLOUR_PHOTOS:
        with Image.open(PHOTOS / name) as opened:
            picture = opened.convert("RGB")
        for k in range(per_photo):
            side = int(min(picture.size) * rng.uniform(0.4, 1.0))
            x, y = rng.integers(0, picture.width - side + 1), rng.integers(0, picture.height - side + 1)
            crop = picture.crop((int(x), int(y), int(x) + side, int(y) + side))
            crop.save(folder / f"{Path(name).stem}-{k}.{'jpg' if k % 2 else 'png'}")
    return folder


def test_an_image_is_preprocessed_as_the_package_says() -> None:
    got = load_image(PHOTOS / "chelsea.png", IMAGENET)  # 451 x 300
    with Image.open(PHOTOS / "chelsea.png") as opened:
        picture = opened.convert("RGB")
    shorter = int(224 / 0.9)  # 248: resize_shorter_side
    width = round(picture.width * shorter / picture.height)
    resized = picture.resize((width, shorter), Image.Resampling.BICUBIC)
    left, top = (width - 224) // 2, (shorter - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / 255
    want = ((crop - np.array(IMAGENET.mean, np.float32)) / np.array(IMAGENET.std, np.float32)).transpose(2, 0, 1)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_grey_or_rgba_image_becomes_three_channels(tmp_path: Path) -> None:
    with Image.open(PHOTOS / "camera.png") as grey:
        grey.save(tmp_path / "grey.png")
    Image.new("RGBA", (300, 260), (10, 200, 30, 128)).save(tmp_path / "rgba.png")
    for name in ("grey.png", "rgba.png"):
        assert load_image(tmp_path / name, IMAGENET).shape == (3, 224, 224)
    grey = load_image(tmp_path / "grey.png", IMAGENET)
    assert not np.allclose(grey[0], grey[1])  # normalised per channel: equal pixels, different values


def test_calibration_from_a_folder_splits_three_ways_without_overlap(tmp_path: Path) -> None:
    folder = photo_crops(tmp_path / "photos", per_photo=2)
    (folder / "README.txt").write_text("not an image")
    calibration = load_calibration(folder, IMAGENET, samples=10, held_out=6, seed=0)
    assert (len(calibration.calibration), len(calibration.selection), len(calibration.gate)) == (10, 3, 3)
    rows = [tuple(x.ravel()[:64]) for x in (*calibration.calibration, *calibration.selection, *calibration.gate)]
    assert len(set(rows)) == 16  # no input in two splits
    assert calibration.source == "images" and not calibration.synthetic
    assert "16 of 18 images" in calibration.description
    again = load_calibration(folder, IMAGENET, samples=10, held_out=6, seed=0)
    assert again.sha256 == calibration.sha256
    assert load_calibration(folder, IMAGENET, samples=10, held_out=6, seed=1).sha256 != calibration.sha256


def test_calibration_from_arrays(tmp_path: Path) -> None:
    inputs = np.random.default_rng(0).standard_normal((12, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "inputs.npy", inputs)
    np.savez(tmp_path / "inputs.npz", images=inputs.astype(np.float64))
    for name in ("inputs.npy", "inputs.npz"):
        calibration = load_calibration(tmp_path / name, IMAGENET, samples=8, held_out=4)
        assert (len(calibration.calibration), len(calibration.selection), len(calibration.gate)) == (8, 2, 2)
        assert calibration.calibration.dtype == np.float32 and calibration.source == "array"
        used = np.concatenate([calibration.calibration, calibration.selection, calibration.gate])
        assert sorted(map(float, used[:, 0, 0, 0])) == sorted(map(float, inputs[:, 0, 0, 0]))


def test_without_data_the_set_is_synthetic() -> None:
    calibration = load_calibration(None, IMAGENET, samples=4, held_out=2)
    assert calibration.synthetic and calibration.describe()["synthetic"] is True
    assert calibration.calibration.shape == (4, 3, 224, 224)


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing", "no such file or folder"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no image files"),
    (lambda d: np.savez(d / "two.npz", a=np.zeros((2, 3, 224, 224)), b=np.zeros(1)) or d / "two.npz",
     "exactly one array"),
    (lambda d: np.save(d / "shape.npy", np.zeros((4, 224, 224, 3), np.float32)) or d / "shape.npy",
     "N x 3 x 224 x 224"),
    (lambda d: np.save(d / "ints.npy", np.zeros((4, 3, 224, 224), np.uint8)) or d / "ints.npy", "floating point"),
    (lambda d: np.save(d / "nan.npy", np.full((4, 3, 224, 224), np.nan, np.float32)) or d / "nan.npy", "NaN"),
    (lambda d: np.save(d / "few.npy", np.zeros((3, 3, 224, 224), np.float32)) or d / "few.npy",
     "3 inputs; at least 5"),
    (lambda d: (d / "bad.npy", (d / "bad.npy").write_bytes(b"\x93NUMPY garbage"))[0], "not a NumPy array"),
    (lambda d: (d / "notes.txt", (d / "notes.txt").write_text("x"))[0], "give a folder of images or an .npy/.npz"),
])
def test_unusable_calibration_data_is_refused_by_name(tmp_path: Path, make, message: str) -> None:
    source = make(tmp_path)
    with pytest.raises(InputSpecError, match=message) as refused:
        load_calibration(source, IMAGENET, samples=4, held_out=4)
    assert str(source) in str(refused.value)


def test_a_file_that_is_not_an_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert image_files(tmp_path) == [tmp_path / "broken.jpg"]
    with pytest.raises(InputSpecError, match=r"broken\.jpg: not an image Pillow can read"):
        load_image(tmp_path / "broken.jpg", IMAGENET)
