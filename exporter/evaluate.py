"""``efexport evaluate``: top-1 / top-5 accuracy of a package's model on a labelled image folder, on the artifact's
own runtime (its target's parity runner), beside the PyTorch model's accuracy on the very same inputs.

The package is checked first, as ``efexport verify`` checks it (the manifest against its schema, every file's
sha256, a bundle's members and sidecar): accuracy is only worth reporting for the files the manifest describes.
Images are decoded and preprocessed once, as the manifest's ``preprocessing`` block says
(``exporter.images``), and the same float32 batch goes to the artifact and to PyTorch, so any difference between
the two columns is the artifact's (folding, conversion, precision), never the input pipeline's.

The PyTorch model is rebuilt from the manifest: a random-init package from its variant and seed, a package made
from a checkpoint from that checkpoint (``--weights``, whose sha256 must be the one the manifest records).

Two layouts of labelled images:

- class folders: ``DIR/<class>/<image>``, a class named by its index (``7``, ``0007``), by its label
  (case-insensitive; ``_`` may stand for a space) or, for ImageNet's own layout, by WordNet id (``n01440764``:
  with all 1000 present, their sorted order is the class order);
- a labels file: ``filename,label`` (or tab-separated) lines, the label an index or a name, the file names
  relative to ``DIR``.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from efexport.exporter.bundle import checksum_problems, is_bundle, opened_bundle
from efexport.exporter.errors import CheckpointError, InputSpecError, UsageError, VerifyError
from efexport.exporter.images import IMAGE_SUFFIXES, image_files, load_images
from efexport.exporter.labels import IMAGENET_1K, read_labels
from efexport.exporter.manifest import sha256_of
from efexport.exporter.manifest_model import CheckpointWeights, Manifest
from efexport.exporter.manifest_schema import load_manifest
from efexport.exporter.preprocessing import Preprocessing
from efexport.exporter.targets import TARGETS
from efexport.exporter.verify import _file_problems, _model_file_problem

EVALUATE_SCHEMA = "efexport.evaluate/1"
DEFAULT_BATCH = 16
TOP_K = 5
CLASS_FOLDERS = "class-folders"
LABELS_FILE = "labels-file"
_WORDNET_ID = re.compile(r"n\d{8}")
_SHOWN_PROBLEMS = 5
_HEADER_WORDS = frozenset({"filename", "file", "image", "path", "name"})

Progress = Callable[[int, int], None]  # (images done, images in all)


# --- what is asked and what comes back -----------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluateRequest:
    """One evaluation: the package (directory or bundle), the labelled images and how to read them, and the
    PyTorch column's weights (``pytorch=False`` leaves it out)."""

    package: Path
    images: Path
    labels_file: Path | None = None
    class_names: Path | None = None  # one label per line; default: the package's labels (ImageNet-1k)
    weights: Path | None = None
    pytorch: bool = True
    limit: int | None = None
    threads: int = 2
    batch: int = DEFAULT_BATCH


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Accuracy:
    """Hits of one model: top-1 (its best class is the label) and top-5 (the label is among its best five)."""

    images: int
    top1_correct: int
    top5_correct: int

    @property
    def top1(self) -> float:
        return self.top1_correct / self.images if self.images else 0.0

    @property
    def top5(self) -> float:
        return self.top5_correct / self.images if self.images else 0.0

    def to_dict(self) -> dict:
        return {"images": self.images, "top1_correct": self.top1_correct, "top5_correct": self.top5_correct,
                "top1": self.top1, "top5": self.top5}


@dataclass(frozen=True)
class ClassCounts:
    """One class's images and how many of them each model put first."""

    index: int
    name: str | None
    images: int
    artifact_top1_correct: int
    pytorch_top1_correct: int | None

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "images": self.images,
                "artifact_top1_correct": self.artifact_top1_correct, "pytorch_top1_correct": self.pytorch_top1_correct}


@dataclass(frozen=True)
class EvaluationReport:
    """Accuracy of the artifact on its runtime and of the PyTorch model on the same inputs, and how often the two
    agree on the top-1 class."""

    package: str  # the package's name (manifest)
    path: str
    images_dir: str
    layout: str  # CLASS_FOLDERS or LABELS_FILE
    images: int
    classes: int  # distinct labels among the images evaluated
    runtime: dict  # target, precision, backend, version, threads, batch
    artifact: Accuracy
    pytorch: Accuracy | None
    pytorch_weights: dict | None  # the manifest's weights block: random-init with its seed, or the checkpoint
    top1_agreement: int | None  # images whose top-1 class the artifact and PyTorch agree on
    preprocessing: dict = field(default_factory=dict)
    per_class: tuple[ClassCounts, ...] = ()

    @property
    def agreement(self) -> float | None:
        return None if self.top1_agreement is None or not self.images else self.top1_agreement / self.images

    def to_dict(self) -> dict:
        return {"schema": EVALUATE_SCHEMA, "package": self.package, "path": self.path, "images_dir": self.images_dir,
                "layout": self.layout, "images": self.images, "classes": self.classes, "runtime": self.runtime,
                "artifact": self.artifact.to_dict(), "pytorch": self.pytorch and self.pytorch.to_dict(),
                "pytorch_weights": self.pytorch_weights, "top1_agreement": self.agreement,
                "top1_agreeing": self.top1_agreement, "preprocessing": self.preprocessing,
                "per_class": [counts.to_dict() for counts in self.per_class]}


# --- the package -----------------------------------------------------------------------------------------------

def _problem_list(problems: Sequence[str]) -> str:
    more = len(problems) - _SHOWN_PROBLEMS
    return "; ".join(problems[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")


def checked_package(directory: Path, where: str | None = None) -> Manifest:
    """The package's typed manifest once its files are what the manifest lists (verify's file check: nothing
    missing, nothing added, every sha256 equal, the model file inside the package); VerifyError otherwise, before
    anything of the package is run."""
    where = where or str(directory)
    if not directory.is_dir():
        raise VerifyError(f"{where}: no such package directory or bundle")
    manifest = load_manifest(directory)
    recorded: dict[str, object] = {name: entry.sha256 for name, entry in manifest.files.items()}
    problems = _file_problems(directory, recorded)
    model_problem = _model_file_problem(manifest.target.model_file, recorded)
    problems += [model_problem] if model_problem else []
    if problems:
        raise VerifyError(f"{where}: the package does not match its manifest, nothing was run: "
                          + _problem_list(problems))
    return manifest


@contextlib.contextmanager
def opened_package(path: Path) -> Iterator[tuple[Path, Manifest]]:
    """(package directory, manifest) of a package directory or a bundle (extracted privately, its members and
    ``.sha256`` sidecar checked as verify checks them), once ``checked_package`` passes."""
    if not is_bundle(path):
        yield path, checked_package(path)
        return
    sidecar = checksum_problems(path) if path.is_file() else []
    if sidecar:
        raise VerifyError(f"{path}: {_problem_list(sidecar)}")
    with opened_bundle(path) as directory:
        manifest = checked_package(directory, str(path))
        if directory.name != manifest.package.name:
            raise VerifyError(f"{path}: bundle folder {directory.name!r} does not match the package name "
                              f"{manifest.package.name!r}")
        yield directory, manifest


def preprocessing_of(manifest: Manifest) -> Preprocessing:
    """The package's preprocessing as ``exporter.images`` applies it; a layout or colour order it does not make
    (images are decoded as RGB, NCHW) is refused rather than fed wrongly."""
    facts = manifest.preprocessing
    if (facts.color_order, facts.layout) != ("RGB", "NCHW"):
        raise InputSpecError(f"the package takes {facts.color_order} {facts.layout} input; evaluate feeds RGB NCHW")
    made = Preprocessing(mean=tuple(facts.mean), std=tuple(facts.std), interpolation=facts.interpolation,
                         crop_pct=facts.crop_pct, input_size=facts.input_size, color_order=facts.color_order,
                         layout=facts.layout, value_range=facts.value_range)
    if (made.resize_shorter_side, made.input_size) != (facts.resize_shorter_side, facts.center_crop):
        raise InputSpecError(f"the package's preprocessing (resize {facts.resize_shorter_side}, crop "
                             f"{facts.center_crop}) is not what its crop_pct and input_size give (resize "
                             f"{made.resize_shorter_side}, crop {made.input_size})")
    return made


# --- class names ---------------------------------------------------------------------------------------------------

def _normalised(name: str) -> str:
    """How a folder or a labels-file entry is matched to a class label: case-insensitive, ``_`` for a space."""
    return " ".join(name.replace("_", " ").split()).casefold()


class ClassNames:
    """The package's class labels, read only when a name must be matched (index-named folders need none):
    ``--class-names FILE`` when given, else the labels the package was built with (ImageNet-1k by default)."""

    def __init__(self, manifest: Manifest, override: Path | None) -> None:
        self.num_classes = manifest.model.num_classes
        labels = getattr(manifest.target, "labels", None)  # Core ML and Core AI record where theirs came from
        self.source = str(override) if override is not None else getattr(labels, "source", None) or IMAGENET_1K
        self.from_package = override is None
        self._labels: list[str] | None = None
        self._index: dict[str, int] | None = None

    @property
    def labels(self) -> list[str]:
        if self._labels is None:
            if self.from_package and self.source != IMAGENET_1K:
                raise InputSpecError(f"the package's class labels came from the file {self.source} at export, which "
                                     "is not part of the package: pass it with --class-names FILE (or name the "
                                     "classes by index)")
            self._labels = read_labels(self.source, self.num_classes)
        return self._labels

    def name(self, index: int) -> str | None:
        """The label of class ``index``, or None when the labels cannot be read (not needed for the counts)."""
        try:
            return self.labels[index]
        except InputSpecError:
            return None

    def index_of(self, name: str, where: str) -> int:
        """The class a label names (``where`` says what named it, for the error)."""
        if self._index is None:
            self._index = {}
            for index, label in enumerate(self.labels):
                self._index.setdefault(_normalised(label), index)  # distinct labels may normalise alike: first wins
        found = self._index.get(_normalised(name))
        if found is None:
            close = difflib.get_close_matches(name.casefold(), [label.casefold() for label in self.labels], n=3)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise InputSpecError(f"{where}: {name!r} is not a class index (0-{self.num_classes - 1}) or a class name "
                                 f"of the labels ({self.source}){hint}")
        return found


def class_of(text: str, names: ClassNames, where: str) -> int:
    """The class ``text`` names: an index (digits, zero-padding allowed) or a label."""
    text = text.strip()
    if text.isdigit():
        index = int(text)
        if index >= names.num_classes:
            raise InputSpecError(f"{where}: class index {index} is out of range: the model has {names.num_classes} "
                                 "classes")
        return index
    return names.index_of(text, where)


# --- the labelled images ----------------------------------------------------------------------------------------

def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_classes(folders: list[Path], names: ClassNames) -> dict[Path, int]:
    """Each class folder's class: WordNet ids by sorted position when all of a 1000-class set are there, else by
    index or label; two folders naming one class are refused (a layout mistake, not two halves)."""
    wordnet = [folder for folder in folders if _WORDNET_ID.fullmatch(folder.name)]
    if wordnet and len(wordnet) == len(folders):
        if len(folders) != names.num_classes:
            raise InputSpecError(f"{folders[0].parent}: {len(folders)} WordNet-id folders ({folders[0].name}, ...): "
                                 f"their sorted order is the class order only when all {names.num_classes} classes "
                                 "are there; rename them by class index or name, or use --labels FILE")
        return {folder: index for index, folder in enumerate(folders)}
    classes: dict[Path, int] = {}
    seen: dict[int, Path] = {}
    for folder in folders:
        index = class_of(folder.name, names, f"class folder {folder}")
        if index in seen:
            raise InputSpecError(f"class folders {seen[index].name!r} and {folder.name!r} both name class {index}")
        seen[index] = folder
        classes[folder] = index
    return classes


def folder_samples(root: Path, names: ClassNames) -> list[Sample]:
    """Images of ``root/<class>/``, each labelled by its folder's class."""
    folders = _class_folders(root)
    if not folders:
        loose = image_files(root)
        raise InputSpecError(f"{root}: " + ("images but no class folders: give one subfolder per class, or a "
                                            "--labels FILE for a flat folder" if loose else "no class folders and no "
                                            "images"))
    classes = _folder_classes(folders, names)
    return [Sample(path, classes[folder]) for folder in folders for path in image_files(folder)]


def _rows(labels_file: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a CSV or TSV file (tab-separated when its first row has a tab); blank lines and
    ``#`` comments skipped."""
    try:
        text = labels_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputSpecError(f"--labels {labels_file}: cannot read it ({exc})") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    delimiter = "\t" if lines and "\t" in lines[0][1] else ","
    return [(number, next(csv.reader([line], delimiter=delimiter))) for number, line in lines]


def labels_file_samples(root: Path, labels_file: Path, names: ClassNames) -> list[Sample]:
    """Images of ``root`` listed in ``labels_file`` (``filename,label``), each with its label; a header line
    (``filename,label``) is skipped. Every listed file must be an image under ``root``."""
    if not root.is_dir():
        raise InputSpecError(f"{root}: not a folder of images")
    labels: dict[Path, int] = {}
    for position, (number, row) in enumerate(_rows(labels_file)):
        where = f"--labels {labels_file}, line {number}"
        if position == 0 and row and row[0].strip().casefold() in _HEADER_WORDS:
            continue
        if len(row) < 2 or not row[0].strip():
            raise InputSpecError(f"{where}: expected 'filename,label', found {','.join(row)!r}")
        name, label = row[0].strip(), ",".join(row[1:])
        path = root / name
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise InputSpecError(f"{where}: {path} is not an image file" + ("" if path.exists() else " (missing)"))
        index = class_of(label, names, where)
        if labels.setdefault(path, index) != index:
            raise InputSpecError(f"{where}: {name} is listed twice with different labels")
    return [Sample(path, index) for path, index in labels.items()]


def labelled_images(root: Path, labels_file: Path | None, names: ClassNames, limit: int | None) -> list[Sample]:
    """The samples to evaluate, sorted by path, the first ``limit`` of them; InputSpecError when there are none."""
    if not root.is_dir():
        raise InputSpecError(f"--images {root}: not a folder")
    found = labels_file_samples(root, labels_file, names) if labels_file else folder_samples(root, names)
    samples = sorted(found, key=lambda sample: sample.path)[:limit]
    if not samples:
        raise InputSpecError(f"--images {root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return samples


# --- the two models ----------------------------------------------------------------------------------------------

def _checked_weights(manifest: Manifest, weights: Path | None) -> Path | None:
    """The checkpoint to load for the PyTorch column (None: random-init, rebuilt from the seed); refused unless
    it is the one the package was exported from."""
    recorded = manifest.weights
    if not isinstance(recorded, CheckpointWeights):
        if weights is not None:
            raise CheckpointError(f"--weights {weights}: the package holds random-init weights (seed "
                                  f"{recorded.seed}), rebuilt from the seed; drop --weights")
        return None
    if weights is None:
        raise CheckpointError(f"the package was exported from the checkpoint {recorded.file} (sha256 "
                              f"{recorded.sha256}): pass it with --weights, or leave PyTorch out with --no-pytorch")
    if not weights.is_file():
        raise CheckpointError(f"--weights {weights}: no such file")
    digest = sha256_of(weights)
    if digest != recorded.sha256:
        raise CheckpointError(f"--weights {weights} (sha256 {digest}) is not the checkpoint the package was exported "
                              f"from: {recorded.file} (sha256 {recorded.sha256})")
    return weights


def pytorch_model(manifest: Manifest, weights: Path | None) -> Callable[[np.ndarray], np.ndarray]:
    """The model the package was exported from, unfolded, as the load stage builds it, as a function of a batch."""
    import torch

    from efexport.exporter.stages.load import load_model

    seed = getattr(manifest.weights, "seed", 0)
    model = load_model(weights, manifest.model.variant, seed).model.eval()

    def run(inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(inputs)).float().numpy()

    return run


def _padded(inputs: np.ndarray, multiple: int) -> np.ndarray:
    """``inputs`` with zero images appended up to a multiple of a static batch (their outputs are dropped)."""
    extra = -len(inputs) % multiple
    return np.concatenate([inputs, np.zeros((extra, *inputs.shape[1:]), inputs.dtype)]) if extra else inputs


def _top_k(logits: np.ndarray) -> np.ndarray:
    """(N, k) class indices, best first (k = 5, or every class of a smaller model)."""
    k = min(TOP_K, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


@dataclass
class _Tally:
    """Per image: the label, each model's top-1 and whether the label was in its top five."""

    labels: list[np.ndarray] = field(default_factory=list)
    artifact: list[np.ndarray] = field(default_factory=list)
    pytorch: list[np.ndarray] = field(default_factory=list)

    def add(self, labels: np.ndarray, artifact: np.ndarray, pytorch: np.ndarray | None) -> None:
        self.labels.append(labels)
        self.artifact.append(_top_k(artifact))
        if pytorch is not None:
            self.pytorch.append(_top_k(pytorch))

    @staticmethod
    def accuracy(labels: np.ndarray, top: np.ndarray) -> Accuracy:
        return Accuracy(len(labels), int((top[:, 0] == labels).sum()), int((top == labels[:, None]).any(1).sum()))

    def report_fields(self, names: ClassNames) -> dict:
        labels, artifact = np.concatenate(self.labels), np.concatenate(self.artifact)
        pytorch = np.concatenate(self.pytorch) if self.pytorch else None
        per_class = tuple(ClassCounts(int(index), names.name(int(index)), int((labels == index).sum()),
                                      int(((labels == index) & (artifact[:, 0] == index)).sum()),
                                      None if pytorch is None else
                                      int(((labels == index) & (pytorch[:, 0] == index)).sum()))
                          for index in np.unique(labels))
        return {"images": len(labels), "classes": len(per_class), "artifact": self.accuracy(labels, artifact),
                "pytorch": None if pytorch is None else self.accuracy(labels, pytorch),
                "top1_agreement": None if pytorch is None else int((artifact[:, 0] == pytorch[:, 0]).sum()),
                "per_class": per_class}


def _batches(samples: Sequence[Sample], size: int) -> Iterator[Sequence[Sample]]:
    for start in range(0, len(samples), size):
        yield samples[start:start + size]


def _run(samples: Sequence[Sample], preprocessing: Preprocessing, artifact: Callable[[np.ndarray], np.ndarray],
         static_batch: int, torch_run: Callable[[np.ndarray], np.ndarray] | None, batch: int,
         progress: Progress | None) -> _Tally:
    """Every sample through both models, ``batch`` images at a time (a multiple of the runner's static batch)."""
    size = -(-batch // static_batch) * static_batch
    tally = _Tally()
    done = 0
    if progress:
        progress(done, len(samples))
    for chunk in _batches(samples, size):
        inputs = load_images([sample.path for sample in chunk], preprocessing)
        outputs = np.asarray(artifact(_padded(inputs, static_batch)))[:len(chunk)]
        tally.add(np.array([sample.label for sample in chunk]), outputs.reshape(len(chunk), -1),
                  None if torch_run is None else torch_run(inputs))
        done += len(chunk)
        if progress:
            progress(done, len(samples))
    return tally


# --- the evaluation ------------------------------------------------------------------------------------------

def evaluate_package(request: EvaluateRequest, progress: Progress | None = None) -> EvaluationReport:
    """Check the package, read the labelled images, run them through the artifact's parity runner and (unless
    left out) the rebuilt PyTorch model, and count the hits. ``progress(done, total)`` after every batch."""
    if request.weights is not None and not request.pytorch:
        raise UsageError("--weights is for the PyTorch column, which --no-pytorch leaves out: give one of them")
    with opened_package(Path(request.package)) as (directory, manifest):
        weights = _checked_weights(manifest, request.weights) if request.pytorch else None
        preprocessing = preprocessing_of(manifest)
        names = ClassNames(manifest, request.class_names)
        samples = labelled_images(Path(request.images), request.labels_file, names, request.limit)
        target = TARGETS[manifest.target.format].load()  # a missing extra: exit 2, naming it
        runner = target.open_runner(directory / manifest.target.model_file, request.threads)
        torch_run = None
        if request.pytorch:
            import torch

            torch.set_num_threads(request.threads)
            torch_run = pytorch_model(manifest, weights)
        static_batch = runner.static_batch or 1
        tally = _run(samples, preprocessing, runner, static_batch, torch_run, request.batch, progress)
    runtime = {"target": manifest.target.format, "precision": manifest.target.precision, "backend": runner.backend,
               "version": runner.runtime_version, "threads": request.threads, "static_batch": runner.static_batch}
    return EvaluationReport(
        package=manifest.package.name, path=str(request.package), images_dir=str(request.images),
        layout=LABELS_FILE if request.labels_file else CLASS_FOLDERS, runtime=runtime,
        pytorch_weights=manifest.weights.model_dump(mode="json") if request.pytorch else None,
        preprocessing=manifest.preprocessing.model_dump(mode="json"), **tally.report_fields(names))


__all__ = ["EVALUATE_SCHEMA", "Accuracy", "ClassCounts", "ClassNames", "EvaluateRequest", "EvaluationReport",
           "checked_package", "evaluate_package", "labelled_images", "opened_package", "preprocessing_of"]
