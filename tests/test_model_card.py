"""The model card (README.md of a package) written from real manifests of every target: what it must say, what it
must not claim, and that it is a pure function of the manifest."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import jinja2
import pytest

from efexport.exporter import model_card as model_card_module
from efexport.exporter.model_card import BASE_TEMPLATE, CARD_FILE, model_card, template_name
from efexport.exporter.targets import TARGETS

pytestmark = pytest.mark.xdist_group("l1-packages")  # one worker exports the shared packages once

SHA = "0123456789abcdef" * 4
TITLES = {"onnx": "# EfficientFormer-L1 — ONNX (fp32)", "coreml": "# EfficientFormer-L1 — Core ML ML Program (fp16)",
          "tensorrt": "# EfficientFormer-L1 — TensorRT (fp16)", "coreai": "# EfficientFormer-L1 — Core AI (fp32)"}
WARNING = "**Not for deployment.**"




def _section(card: str, heading: str) -> str:
    """The text of the ``## heading...`` section, up to the next second-level heading."""
    start = card.index(f"\n## {heading}")
    end = card.find("\n## ", start + 1)
    return card[start:] if end < 0 else card[start:end]


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row, splitting on unescaped pipes only."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def _deployable_with_checkpoint(manifest: dict) -> dict:
    manifest["weights"] = {"source": "checkpoint", "file": "efficientformer_l1_300d.pth", "sha256": SHA,
                           "format": "pth", "layout": "upstream"}
    manifest["package"] = manifest["package"] | {"deployable": True, "not_deployable_because": []}
    return manifest


def test_title_names_variant_format_and_precision(real: tuple[str, Path, dict]) -> None:
    target, _, manifest = real
    card = model_card(manifest)
    assert card.splitlines()[0] == TITLES[target]
    intro = card.split("\n\n")[1]
    assert f"{manifest['model']['parameters']:,} parameters" in intro
    assert f"`{manifest['target']['model_file']}`" in intro
    assert f"efexport {manifest['versions']['efexport']}" in intro


def test_the_card_is_the_readme_the_package_ships(real: tuple[str, Path, dict]) -> None:
    _, path, manifest = real
    assert CARD_FILE in manifest["files"]
    assert (path / CARD_FILE).read_text() == model_card(manifest)


def test_random_init_packages_carry_the_warning(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    assert manifest["weights"]["source"] == "random-init"
    card = model_card(manifest)
    warning = card[card.index("> [!WARNING]"):card.index("## Weights")]
    assert WARNING in warning
    for reason in manifest["package"]["not_deployable_because"]:
        assert f"> - {reason}" in warning
    assert "random-init weights" in warning
    assert f"**Random initialisation** (seed {manifest['weights']['seed']})" in _section(card, "Weights")


def test_a_deployable_checkpoint_package_has_no_warning(onnx: dict) -> None:
    card = model_card(_deployable_with_checkpoint(onnx))
    assert WARNING not in card and "[!WARNING]" not in card
    weights = _section(card, "Weights")
    assert "`efficientformer_l1_300d.pth`" in weights and f"`{SHA}`" in weights and "upstream" in weights
    assert "random" not in card.lower()


def test_recorded_input_and_output_names_are_used(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    card = model_card(manifest)
    feeding = _section(card, "How to feed it")
    for spec in manifest["inputs"] + manifest["outputs"]:
        assert f"`{spec['name']}`" in feeding


def test_renamed_inputs_reach_the_usage_snippet(onnx: dict) -> None:
    onnx["inputs"][0]["name"] = "pixel_values"
    onnx["outputs"][0]["name"] = "scores"
    usage = model_card(onnx).split("### Usage")[1].split("\n## ")[0]
    assert '{"pixel_values": preprocess("photo.jpg")}' in usage and '["scores"]' in usage
    assert '"image"' not in usage and "logits" not in usage


def test_preprocessing_values_come_from_the_manifest(onnx: dict) -> None:
    card = model_card(onnx)
    pre = onnx["preprocessing"]
    assert f"mean = [{', '.join(str(v) for v in pre['mean'])}]" in card
    assert f"std = [{', '.join(str(v) for v in pre['std'])}]" in card
    assert f"shorter side is {pre['resize_shorter_side']} px" in card
    assert f"center-crop {pre['center_crop']}x{pre['center_crop']}" in card
    onnx["preprocessing"]["mean"] = [0.5, 0.25, 0.125]
    changed = model_card(onnx)
    assert "mean = [0.5, 0.25, 0.125]" in changed and "np.array([0.5, 0.25, 0.125]" in changed


def test_python_snippets_are_valid_python(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    blocks = re.findall(r"```python\n(.*?)```", model_card(manifest), flags=re.DOTALL)
    assert blocks
    for block in blocks:
        compile(block, "<card>", "exec")


def test_usage_fits_the_format(coreml: dict, tensorrt: dict) -> None:
    card = model_card(coreml)
    assert coreml["target"]["input"] == "image"
    assert 'model.predict({"image": crop("photo.jpg")})' in card  # a PIL image, not a normalised tensor
    coreml["target"]["input"] = "tensor"
    assert 'model.predict({"image": preprocess("photo.jpg")})' in model_card(coreml)
    usage = model_card(tensorrt).split("### Usage")[1].split("\n## ")[0]
    assert "./build_engine.sh" in usage and "trtexec --loadEngine=model.plan --shapes=image:8x3x224x224" in usage


def test_parity_numbers_and_gates_are_shown(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    parity = manifest["parity"]
    verified = _section(model_card(manifest), "What was verified")
    assert f"| max abs error (logits) | {parity['max_abs']:.3g} |" in verified
    tolerance = parity["tolerances"]["max_abs"]
    assert (f"≤ {tolerance}" if tolerance is not None else "reported, not gated") in verified
    assert f"≥ {parity['tolerances']['min_cosine']} on every input" in verified
    n = len(parity["per_input"])
    assert f"{round(parity['top1_agreement'] * n)}/{n} inputs" in verified
    assert f"| top-1 ties | {parity['top1_ties']} |" in verified
    assert f"on {n} reference inputs" in verified
    assert "Parity gate: **passed**" in verified
    assert "efexport verify <this package directory, or its bundle .zip>" in verified


def test_cosines_near_one_keep_their_distance_from_one(onnx: dict) -> None:
    onnx["parity"]["min_cosine"] = 0.9999999999981461
    assert "| min cosine similarity | 0.9999999999981 |" in model_card(onnx)
    onnx["parity"]["min_cosine"] = 0.9999779306682244
    assert "| min cosine similarity | 0.999978 |" in model_card(onnx)


def test_coreml_card_reports_fp16_headroom_and_the_interpreter(coreml: dict) -> None:
    card = model_card(coreml)
    execution = coreml["reference_execution"]
    top = execution["fp16_largest_activations"][0]
    headroom = card[card.index("### FP16 headroom"):card.index("### Re-check it")]
    assert f"executed {execution['ops_executed']} ops" in headroom
    assert f"`{top['var']}`" in headroom and f"{top['fraction_of_limit'] * 100:.2g}%" in headroom
    assert "no overflow" in headroom
    assert "reference interpreter" in _section(card, "Limitations")
    coreml["runtime_parity"] = {"coreml-all": {k: v for k, v in coreml["parity"].items()
                                               if k not in ("reference_file", "compared_against")}}
    with_runtime = model_card(coreml)
    assert "| `coreml-all` |" in with_runtime
    assert "not from Apple's Core ML runtime" not in with_runtime


def test_onnx_card_shows_every_latency_entry(onnx: dict) -> None:
    assert onnx["latency"]
    latency = _section(model_card(onnx), "Measured latency")
    for entry in onnx["latency"]:
        assert f"| {entry['stats_ms']['p50']:.2f} ms |" in latency
        assert entry["device"]["cpu"] in latency
    assert "Nothing was measured" not in latency


def test_no_latency_shows_the_note(real: tuple[str, Path, dict]) -> None:
    target, _, manifest = real
    if target == "onnx":
        manifest["latency"] = []
        manifest["latency_note"] = "ONNX Runtime was not timed in this test"
    if manifest["latency"]:
        pytest.skip("this machine timed the target's runtime")
    latency = _section(model_card(manifest), "Measured latency")
    assert f"Nothing was measured: {manifest['latency_note']}" in latency
    assert "| p50 |" not in latency


def test_published_figures_are_labelled_published(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    published = manifest["model"]["published"]
    card = model_card(manifest)
    section = _section(card, "Published reference figures")
    assert section.startswith("\n## Published reference figures (published (paper), not measured here)")
    assert f"{published['imagenet_top1_percent']} %" in section
    assert f"{published['gmacs']} GMACs" in section
    assert f"{published['latency_ms']['value']} ms on {published['latency_ms']['device']}" in section
    for other in ("Measured latency", "What was verified"):  # no published figure is passed off as measured
        assert f"{published['imagenet_top1_percent']} %" not in _section(card, other)


def test_limitations_name_the_fixed_input_and_the_engine(real: tuple[str, Path, dict]) -> None:
    target, _, manifest = real
    limitations = _section(model_card(manifest), "Limitations")
    size = manifest["preprocessing"]["input_size"]
    assert f"Fixed {size}x{size} input" in limitations
    if target == "tensorrt" and not manifest["target"]["engine"]["built"]:
        assert f"No TensorRT engine was built ({manifest['target']['engine']['reason']})" in limitations


def test_files_are_listed_with_their_hashes_except_the_card(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    manifest["files"][CARD_FILE] = {"sha256": SHA, "bytes": 1234}  # whatever the caller recorded for the card
    files = _section(model_card(manifest), "Files")
    listed = [_cells(line)[0].strip() for line in files.splitlines() if line.startswith("| `")]
    assert listed == [f"`{name}`" for name in manifest["files"] if name != CARD_FILE]
    for name, entry in manifest["files"].items():
        if name != CARD_FILE:
            assert f"| `{name}` | {entry['bytes']:,} | `{entry['sha256']}` |" in files
    assert SHA not in files


def test_tool_versions_are_listed(onnx: dict) -> None:
    versions = _section(model_card(onnx), "Tool versions")
    for tool, version in onnx["versions"].items():
        if tool != "efexport_git_commit":
            assert f"| {tool} | {version} |" in versions
    onnx["versions"]["efexport_git_commit"] = None
    assert "not recorded (not a git checkout)" in model_card(onnx)


def test_pipes_in_table_cells_are_escaped(onnx: dict) -> None:
    onnx["latency"][0]["device"]["cpu"] = "Fancy | CPU"
    onnx["latency"][0]["backend"] = "ort|cpu"
    onnx["files"]["odd|name.bin"] = {"sha256": SHA, "bytes": 1}
    card = model_card(onnx)
    assert "Fancy \\| CPU" in card and "ort\\|cpu" in card and "odd\\|name.bin" in card
    tables: list[list[str]] = []
    previous = ""
    for line in card.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    for table in tables:
        widths = {len(_cells(row)) for row in table}
        assert len(widths) == 1, table


def test_the_card_is_deterministic_and_leaves_the_manifest_alone(real: tuple[str, Path, dict]) -> None:
    _, _, manifest = real
    before = copy.deepcopy(manifest)
    first = model_card(manifest)
    assert model_card(copy.deepcopy(manifest)) == first
    assert manifest == before
    assert first.endswith("\n") and not first.endswith("\n\n")


# ---- the card's templates: one per target, the base for any other format ------------------------------------

TARGETS_DIR = Path(model_card_module.__file__).parent / "targets"  # each target's card.md.j2 beside its code


def test_every_target_has_its_own_card_template() -> None:
    base = model_card_module._environment().get_template(BASE_TEMPLATE)
    for name in TARGETS:
        assert (TARGETS_DIR / name / "card.md.j2").is_file(), name
        assert template_name(name) == f"{name}.md.j2"
        template = model_card_module._environment().get_template(template_name(name))
        assert "usage" in template.blocks, f"{name}.md.j2 does not say how to run its package"
        assert set(template.blocks) <= set(base.blocks), f"{name}.md.j2 fills blocks the base card does not have"
        source = (TARGETS_DIR / name / "card.md.j2").read_text()
        assert source.startswith('{% extends "card.md.j2" %}'), name


def _without_own_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for a registered target that has no card template yet (a manifest's format is always registered)."""
    monkeypatch.setattr(model_card_module, "template_name", lambda fmt: BASE_TEMPLATE)


def test_the_card_of_each_target_comes_from_its_template(real: tuple[str, Path, dict],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    target, _, manifest = real
    own = model_card(manifest)
    usage = own.split("### Usage\n\n")[1].split("\n## ")[0]
    _without_own_template(monkeypatch)
    generic = model_card(manifest)
    assert "efexport writes no usage snippet" not in usage
    assert usage not in generic  # the target's own usage, not the base's
    assert own.splitlines()[0] == TITLES[target]


def test_a_format_without_its_own_template_gets_the_base_card(onnx: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    assert template_name("tflite") == BASE_TEMPLATE  # a format no target registers
    _without_own_template(monkeypatch)
    card = model_card(onnx)
    assert card.splitlines()[0] == "# EfficientFormer-L1 — onnx (fp32)"
    assert "exported to onnx. Model file `model.onnx`" in card
    usage = card.split("### Usage\n\n")[1].split("\n## ")[0]
    assert usage.startswith("efexport writes no usage snippet for the `onnx` format")
    assert "def preprocess(path: str) -> np.ndarray:" in usage  # the recorded preprocessing still applies
    assert "onnxruntime" not in usage and "coremltools" not in usage and "trtexec" not in usage
    assert "Runtime: the `onnx` target's own runner on `model.onnx`." in card
    assert "ONNX Runtime" not in _section(card, "What was verified")
    for block in re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL):
        compile(block, "<card>", "exec")
    for heading in ("Weights", "How to feed it", "What was verified", "Measured latency", "Limitations", "Files",
                    "Tool versions"):
        assert f"\n## {heading}" in card


def test_the_card_module_knows_no_target_format() -> None:
    """Adding a target adds a template: model_card.py names no format and never compares one."""
    tree = ast.parse(Path(model_card_module.__file__).read_text())
    named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in TARGETS]
    assert named == []
    compared = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, (ast.Compare, ast.Match))]
    assert compared  # the check reads real comparisons
    assert [text for text in compared if "format" in text or "fmt" in text] == []


def test_card_templates_are_looked_up_by_plain_name_only() -> None:
    env = model_card_module._environment()
    assert env.get_template(BASE_TEMPLATE).name == BASE_TEMPLATE
    for name in ("../model_card.py", "onnx/card.md.j2", "missing.md.j2", "onnx", "__init__.md.j2"):
        with pytest.raises(jinja2.TemplateNotFound):
            env.get_template(name)
    assert template_name("../onnx") == BASE_TEMPLATE
