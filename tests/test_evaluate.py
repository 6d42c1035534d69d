"""``efexport evaluate``: accuracy of a real l1 ONNX package on real photographs (scikit-image's sample images),
labelled by what the PyTorch model predicts for them, so the exact counts are known in advance.

The CLI runs as a user runs it (a subprocess). The package is the shared l1 ONNX export (tests.packages); a copy
whose manifest says it came from a checkpoint (the same weights, written as a timm-layout safetensors file) covers
``--weights``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from safetensors.torch import save_file

from efexport.exporter.bundle import write_bundle
from efexport.exporter.errors import EfexportError, ExitCode
from efexport.exporter.evaluate import ClassNames, EvaluateRequest, evaluate_package, labelled_images
from efexport.exporter.images import load_images
from efexport.exporter.labels import IMAGENET_1K, read_labels
from efexport.exporter.manifest import MANIFEST_FILE, file_table, metadata_entries, sha256_of
from efexport.exporter.manifest_schema import load_manifest
from efexport.exporter.preprocessing import IMAGENET
from efexport.exporter.targets import TARGETS
from tests.helpers import realistic_model, run_cli, timm_state_dict
from tests.packages import exported_package

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once

SAMPLES = Path(skimage.data.__file__).parent  # the wheel's own files: skimage.data.<name>() may download
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
NAMES = read_labels(IMAGENET_1K, 1000)


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared l1 ONNX package (random-init, seed 0): never changed here, copied first."""
    path, manifest = exported_package("onnx", tmp_path_factory)
    assert manifest["weights"] == {"source": "random-init", "seed": 0}
    assert manifest["preprocessing"] == json.loads(json.dumps(IMAGENET.describe()))  # what the test feeds below
    return path


@pytest.fixture(scope="module")
def ranked() -> dict[str, np.ndarray]:
    """Each photo's classes, best first, as the PyTorch model of the package ranks them."""
    inputs = load_images([SAMPLES / name for name in PHOTOS], IMAGENET)
    with torch.inference_mode():
        logits = realistic_model("l1", 0)(torch.from_numpy(inputs)).numpy()
    best = np.sort(logits, axis=1)
    assert (best[:, -1] - best[:, -2]).min() > 1e-3  # no near tie that float32 noise could flip
    return {name: np.argsort(-row) for name, row in zip(PHOTOS, logits, strict=True)}


def _evaluate(package: Path, *args: object) -> tuple[int, dict | None, str]:
    result = run_cli("evaluate", package, *args)
    document = json.loads(result.stdout) if "--json" in args and result.stdout.strip() else None
    return result.returncode, document, result.stderr


def _class_folders(root: Path, ranked: dict[str, np.ndarray]) -> Path:
    """One folder per predicted class, named in turn by index, zero-padded index, upper-case name and name with
    underscores for spaces: the layout of a user's ImageNet subset."""
    spellings = (str, lambda i: f"{i:04d}", lambda i: NAMES[i].upper(), lambda i: NAMES[i].replace(" ", "_"))
    folders: dict[int, Path] = {}
    for name in PHOTOS:
        index = int(ranked[name][0])
        if index not in folders:
            folders[index] = root / spellings[len(folders) % len(spellings)](index)
            folders[index].mkdir(parents=True)
        shutil.copy(SAMPLES / name, folders[index] / name)
    return root


def _as_checkpoint_package(package: Path, where: Path) -> tuple[Path, Path]:
    """A copy of ``package`` whose manifest says it was exported from a checkpoint, and that checkpoint: the
    package's own weights (seed 0) in timm's layout. The model's own metadata says so too, as an export from the
    checkpoint would have written it (verify checks the manifest against it), and the file table follows."""
    copy = where / package.name
    shutil.copytree(package, copy)
    checkpoint = where / "efficientformer_l1.safetensors"
    save_file(timm_state_dict(realistic_model("l1", 0)), str(checkpoint))
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    manifest["weights"] = {"source": "checkpoint", "file": checkpoint.name, "sha256": sha256_of(checkpoint),
                           "format": "safetensors", "layout": "timm"}
    TARGETS["onnx"].load().embed_metadata(copy / manifest["target"]["model_file"], metadata_entries(manifest))
    manifest["files"] = file_table(copy)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return copy, checkpoint


def test_correctly_labelled_photos_score_100_percent_on_both(package: Path, ranked: dict[str, np.ndarray],
                                                               tmp_path: Path) -> None:
    images = _class_folders(tmp_path / "images", ranked)
    assert len(list(images.iterdir())) >= 4  # every spelling of a class folder is used (precondition)
    code, report, stderr = _evaluate(package, "--images", images, "--json")
    assert code == 0, stderr
    assert report["package"] == "efficientformer-l1-onnx-fp32"
    assert report["layout"] == "class-folders"
    assert report["runtime"]["backend"] == "onnxruntime-cpu" and report["runtime"]["target"] == "onnx"
    assert report["images"] == len(PHOTOS)
    assert report["classes"] == len({int(r[0]) for r in ranked.values()})
    for column in ("artifact", "pytorch"):
        assert report[column] == {"images": len(PHOTOS), "top1_correct": len(PHOTOS), "top5_correct": len(PHOTOS),
                                  "top1": 1.0, "top5": 1.0}
    assert report["top1_agreement"] == 1.0
    assert report["pytorch_weights"] == {"source": "random-init", "seed": 0}
    per_class = {entry["index"]: entry for entry in report["per_class"]}
    for index, entry in per_class.items():
        count = sum(int(r[0]) == index for r in ranked.values())
        assert entry == {"index": index, "name": NAMES[index], "images": count, "artifact_top1_correct": count,
                         "pytorch_top1_correct": count}
    assert "evaluating" not in stderr  # no progress bar with --json


def test_wrong_labels_are_counted_exactly_with_weights_from_a_checkpoint(
        package: Path, ranked: dict[str, np.ndarray], tmp_path: Path) -> None:
    """A flat folder and a labels file (TSV with a header, labels by index and by name): two photos labelled
    with a class outside their top five, one with their third class, the rest right."""
    images = tmp_path / "flat"
    images.mkdir()
    lines = ["filename\tlabel"]
    labels = {}
    for position, name in enumerate(PHOTOS):
        shutil.copy(SAMPLES / name, images / name)
        order = ranked[name]
        labels[name] = int(order[-1] if position < 2 else order[2] if position == 2 else order[0])
        lines.append(f"{name}\t{NAMES[labels[name]] if position % 2 else labels[name]}")
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n")
    copy, checkpoint = _as_checkpoint_package(package, tmp_path)
    code, report, stderr = _evaluate(copy, "--images", images, "--labels", tmp_path / "labels.tsv",
                                     "--weights", checkpoint, "--json")
    assert code == 0, stderr
    assert report["layout"] == "labels-file"
    for column in ("artifact", "pytorch"):
        assert report[column]["images"] == len(PHOTOS)
        assert report[column]["top1_correct"] == len(PHOTOS) - 3
        assert report[column]["top5_correct"] == len(PHOTOS) - 2
    assert report["top1_agreement"] == 1.0  # agreement does not depend on the labels
    assert report["pytorch_weights"]["source"] == "checkpoint"
    expected = {}
    for name, label in labels.items():
        images_, correct = expected.get(label, (0, 0))
        expected[label] = images_ + 1, correct + int(ranked[name][0] == label)
    assert {e["index"]: (e["images"], e["artifact_top1_correct"]) for e in report["per_class"]} == expected
    assert all(e["pytorch_top1_correct"] == e["artifact_top1_correct"] for e in report["per_class"])


def test_a_bundle_with_limit_and_no_pytorch(package: Path, ranked: dict[str, np.ndarray], tmp_path: Path) -> None:
    images = _class_folders(tmp_path / "images", ranked)
    bundle = write_bundle(package, tmp_path / "bundles").path
    result = run_cli("evaluate", bundle, "--images", images, "--limit", "4", "--no-pytorch")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the console summary goes to stderr
    assert "onnxruntime-cpu" in result.stderr and "top-1 100.00% (4/4)" in result.stderr
    assert "pytorch" not in result.stderr and "agreement" not in result.stderr


def _one_photo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(SAMPLES / "chelsea.png", folder / "chelsea.png")
    return folder.parent


def test_refusals_on_the_command_line(package: Path, tmp_path: Path) -> None:
    """An empty folder ends with exit 3 naming it; a package that does not match its manifest with exit 6 before
    anything runs (and the error document with --json)."""
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    code, _, stderr = _evaluate(package, "--images", empty)
    assert code == 3 and f"{empty}: no images found" in stderr

    tampered = tmp_path / "tampered" / package.name
    shutil.copytree(package, tampered)
    with (tampered / "model.onnx").open("ab") as model:
        model.write(b"\0")
    code, report, stderr = _evaluate(tampered, "--images", _one_photo(tmp_path / "images" / "0"), "--json")
    assert code == 6 and "model.onnx: sha256 differs from the manifest" in stderr
    assert report == {"status": "error", "stage": None, "error": report["error"], "exit_code": 6}


def test_weights_other_than_the_packages_checkpoint_are_refused(package: Path, tmp_path: Path) -> None:
    copy, checkpoint = _as_checkpoint_package(package, tmp_path)
    other = tmp_path / "other.safetensors"
    other.write_bytes(checkpoint.read_bytes() + b" ")
    code, _, stderr = _evaluate(copy, "--images", _one_photo(tmp_path / "images" / "0"), "--weights", other)
    assert code == 3
    assert sha256_of(other) in stderr and sha256_of(checkpoint) in stderr  # both named


# In-process from here: each refusal is raised before the model runs, and the CLI maps the error to its exit code
# (run_guarded) as the runs above show; a subprocess each would cost seconds of imports.

def _refused(package: Path, images: Path, **given: object) -> EfexportError:
    with pytest.raises(EfexportError) as raised:
        evaluate_package(EvaluateRequest(package=package, images=images, **given))
    return raised.value


def _folder(root: Path, *classes: str) -> Path:
    for name in classes:
        _one_photo(root / name)
    return root


@pytest.mark.parametrize(("classes", "message"), [
    (("not a class",), "'not a class' is not a class index (0-999) or a class name of the labels (imagenet-1k)"),
    (("tabbby",), "close: tabby"),  # a near miss is shown its neighbours
    (("1000",), "class index 1000 is out of range: the model has 1000 classes"),
    (("7", "0007"), "class folders '0007' and '7' both name class 7"),
    (("tench", "0"), "class folders '0' and 'tench' both name class 0"),
    (("n01440764", "n01443537"), "2 WordNet-id folders (n01440764, ...): their sorted order is the class order only "
                                 "when all 1000 classes are there"),
])
def test_class_folders_that_name_no_class_or_one_twice(package: Path, tmp_path: Path, classes: tuple[str, ...],
                                                       message: str) -> None:
    error = _refused(package, _folder(tmp_path / "images", *classes), pytorch=False)
    assert error.exit_code == ExitCode.BAD_INPUT
    assert message in str(error)


def test_wordnet_folders_map_by_sorted_order(package: Path, tmp_path: Path) -> None:
    """ImageNet's own layout: 1000 WordNet-id folders, class i the i-th in sorted order."""
    root = tmp_path / "images"
    folders = [root / f"n{index * 1000 + 1440:08d}" for index in range(1000)]  # sorted as numbered
    for folder in folders:
        folder.mkdir(parents=True)
    for index in (3, 998):
        shutil.copy(SAMPLES / "chelsea.png", folders[index] / "chelsea.png")
    samples = labelled_images(root, None, ClassNames(load_manifest(package), None), None)
    assert [(sample.path.parent.name, sample.label) for sample in samples] == [("n00004440", 3), ("n00999440", 998)]


def test_class_names_from_a_file(package: Path, tmp_path: Path) -> None:
    """--class-names: the names folders are matched against, for a package whose labels are not ImageNet's."""
    names = tmp_path / "names.txt"
    names.write_text("".join(f"Class {index}\n" for index in range(1000)))
    root = _folder(tmp_path / "images", "class_7", "CLASS 12")
    samples = labelled_images(root, None, ClassNames(load_manifest(package), names), None)
    assert sorted(sample.label for sample in samples) == [7, 12]
    assert "'tench' is not a class index" in str(_refused(package, _folder(tmp_path / "other", "tench"),
                                                          class_names=names, pytorch=False))


def test_bad_folders_and_labels_files(package: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(SAMPLES / "coffee.png", flat / "coffee.png")
    assert "images but no class folders" in str(_refused(package, flat, pytorch=False))
    labels = tmp_path / "labels.csv"
    labels.write_text("coffee.png,espresso\nmissing.png,0\n")
    error = _refused(package, flat, labels_file=labels, pytorch=False)
    assert error.exit_code == ExitCode.BAD_INPUT and "line 2: " in str(error) and "missing.png" in str(error)
    labels.write_text("coffee.png\n")
    assert "line 1: expected 'filename,label'" in str(_refused(package, flat, labels_file=labels, pytorch=False))
    labels.write_text("coffee.png,0\ncoffee.png,1\n")
    assert "listed twice with different labels" in str(_refused(package, flat, labels_file=labels, pytorch=False))
    (flat / "broken.jpg").write_text("not a picture")
    labels.write_text("coffee.png,0\nbroken.jpg,0\n")
    error = _refused(package, flat, labels_file=labels, pytorch=False)
    assert error.exit_code == ExitCode.BAD_INPUT and "broken.jpg: not an image Pillow can read" in str(error)


def test_weights_and_the_pytorch_column(package: Path, tmp_path: Path) -> None:
    images = _folder(tmp_path / "images", "0")
    copy, checkpoint = _as_checkpoint_package(package, tmp_path / "ckpt")
    error = _refused(copy, images)
    assert error.exit_code == ExitCode.BAD_INPUT and "pass it with --weights, or" in str(error)
    error = _refused(package, images, weights=checkpoint)
    assert error.exit_code == ExitCode.BAD_INPUT and "random-init weights (seed 0)" in str(error)
    error = _refused(package, images, weights=checkpoint, pytorch=False)
    assert error.exit_code == ExitCode.USAGE
