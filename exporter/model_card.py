"""README.md of a package: its model card, written from the manifest alone.

``model_card`` is a pure function of the manifest (an efexport.manifest/3 dict, checked by
``exporter.manifest_schema.check_manifest``): the same manifest always gives the same text, with no dates and
nothing read from the machine. Every number in the card is one the manifest records; the paper's figures are
labelled as published, not measured. The card never lists itself in its file table: it cannot hold its own hash.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence

CARD_FILE = "README.md"
PUBLISHED_LABEL = "published (paper), not measured here"

_FORMAT_TITLES = {"onnx": "ONNX", "coreml": "Core ML ML Program", "tensorrt": "TensorRT"}
_MEASURED = {"host_end_to_end": "host end-to-end", "device_compute": "device compute"}


# ---- formatting ---------------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """Text for one Markdown table cell: ``|`` escaped, line breaks folded."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _row(*cells: object) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = [_row(*header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [_row(*row) for row in rows]
    return "\n".join(lines)


def _code(text: object) -> str:
    text = str(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _sig(x: object, digits: int = 3) -> str:
    """A measured value: ints as they are, floats to ``digits`` significant digits (3.2e-06, 0.0332, 19.7)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "n/a" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def _plain(x: object) -> str:
    """A configured value (tolerance, mean, std): its shortest exact form (0.99999, 0.0001, 0.485)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x)) if x != 0 else "0"
    return "n/a" if x is None else str(x)


def _cosine(x: object) -> str:
    """A cosine close to 1 with the digits that show how close (0.9999781, 0.9999999999981)."""
    if not isinstance(x, float) or not math.isfinite(x):
        return _sig(x)
    gap = 1.0 - x
    if x == 1.0 or gap <= 0:
        return f"{x:.15g}"
    if gap < 1e-3:
        return f"{x:.{math.ceil(-math.log10(gap)) + 1}f}"
    return f"{x:.7g}"


def _ms(x: object) -> str:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return _sig(x)
    return f"{x:.2f} ms" if x >= 0.1 else f"{x:.3g} ms"


def _rate(x: object) -> str:
    """Images per second: whole numbers from 100 up (67,368), three digits below (50.2)."""
    if isinstance(x, float) and math.isfinite(x) and x >= 100:
        return f"{x:,.0f}"
    return _sig(x)


def _shape(shape: Sequence[object]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---- facts read from the manifest ---------------------------------------------------------------------------


def _interface(manifest: dict) -> dict:
    """Core ML: the package's own interface (an image input takes pixels), when recorded."""
    return manifest["target"].get("interface") or {}


def _image_input(manifest: dict) -> bool:
    return manifest["target"]["format"] == "coreml" and manifest["target"].get("input") == "image"


def _engine(manifest: dict) -> dict | None:
    return manifest["target"].get("engine") if manifest["target"]["format"] == "tensorrt" else None


def _parity_runner(manifest: dict) -> str:
    """Which runtime produced the manifest's parity block (the target's gate runner)."""
    target = manifest["target"]
    fmt, model_file = target["format"], _code(target["model_file"])
    if fmt == "coreml":
        interpreter = (manifest.get("reference_execution") or {}).get("interpreter")
        how = f": {interpreter}" if interpreter else ""
        return f"the saved program {model_file}, executed by efexport's reference interpreter{how}"
    if fmt == "tensorrt":
        return (f"ONNX Runtime (CPU) on the prepared {model_file} that TensorRT builds its engine from, in float32 "
                "(the engine's own parity is checked where the engine is built)")
    return f"ONNX Runtime (CPU) on {model_file}"


def _device_summary(device: dict) -> str:
    kind = device.get("kind")
    if kind == "cpu":
        extras = [device.get("arch"), f"{device['logical_cores']} logical cores" if device.get("logical_cores")
                  else None, device.get("os")]
        rest = ", ".join(str(e) for e in extras if e)
        return f"{device.get('cpu', 'CPU')}" + (f" ({rest})" if rest else "")
    if kind == "gpu":
        extras = [f"compute capability {device['compute_capability']}" if device.get("compute_capability") else None,
                  f"driver {device['driver']}" if device.get("driver") else None,
                  f"CUDA {device['cuda_runtime']}" if device.get("cuda_runtime") else None]
        rest = ", ".join(e for e in extras if e)
        return f"{device.get('name', 'GPU')}" + (f" ({rest})" if rest else "")
    shown = ", ".join(f"{k}: {v}" for k, v in device.items() if not isinstance(v, (dict, list)))
    return shown or "not recorded"


# ---- sections -------------------------------------------------------------------------------------------------


def _title(manifest: dict) -> str:
    model, target, versions = manifest["model"], manifest["target"], manifest["versions"]
    fmt, precision = target["format"], target["precision"]
    title = f"# {model['family']}-{model['variant'].upper()} — {_FORMAT_TITLES.get(fmt, fmt)} ({precision})"
    if fmt == "onnx":
        batch = "dynamic batch" if target.get("dynamic_batch") else "static batch 1"
        what = f"ONNX (opset {target.get('opset')}, {batch})"
    elif fmt == "coreml":
        what = (f"a Core ML ML Program package (minimum deployment target {target.get('minimum_deployment_target')}, "
                f"compute units {target.get('compute_units')}, {target.get('input')} input)")
    elif fmt == "tensorrt":
        engine = _engine(manifest) or {}
        built = "with its engine built" if engine.get("built") else "without a built engine"
        what = (f"TensorRT: a TensorRT-ready ONNX graph (opset {target.get('opset')}) and its engine build recipe, "
                f"{built}")
    else:
        what = fmt
    commit = versions.get("efexport_git_commit")
    made_by = f"efexport {versions['efexport']}" + (f" (git commit {_code(commit)})" if commit
                                                    else " (no git commit recorded)")
    paragraph = (
        f"The {model['family']} {model['version']} image classifier, variant {model['variant']} "
        f"({model['parameters']:,} parameters counted before folding, {model['num_classes']} classes: "
        f"{model['class_labels']}), exported to {what}. Model file {_code(target['model_file'])}, {precision} "
        "precision. "
        f"Package {_code(manifest['package']['name'])}, made by {made_by}. Everything below comes from this "
        f"package's `manifest.json`."
    )
    return f"{title}\n\n{paragraph}"


def _warning(manifest: dict) -> str:
    package = manifest["package"]
    if package["deployable"]:
        return ""
    reasons = package["not_deployable_because"] or ["(no reason recorded)"]
    lines = ["> [!WARNING]", "> **Not for deployment.** This package is marked not deployable because:", ">"]
    lines += [f"> - {reason}" for reason in reasons]
    return "\n".join(lines)


def _weights(manifest: dict) -> str:
    weights = manifest["weights"]
    if weights["source"] == "checkpoint":
        body = (f"Loaded from the checkpoint {_code(weights['file'])} ({weights.get('format')} file, "
                f"{weights.get('layout')} key layout), sha256 {_code(weights['sha256'])}. Compare that digest with "
                "the checkpoint you meant to ship.")
    else:
        body = (f"**Random initialisation** (seed {weights.get('seed')}): no checkpoint was loaded. The weights have "
                "trained-like statistics so that the parity checks mean something, but the model's predictions are "
                "meaningless: this package exists to test the export pipeline.")
    return f"## Weights\n\n{body}"


def _preprocessing_steps(manifest: dict) -> str:
    pre = manifest["preprocessing"]
    size = pre["center_crop"]
    mean = ", ".join(_plain(v) for v in pre["mean"])
    std = ", ".join(_plain(v) for v in pre["std"])
    steps = [
        f"1. Decode the image as {pre['color_order']}.",
        f"2. Resize so that the shorter side is {pre['resize_shorter_side']} px ({pre['interpolation']} "
        f"interpolation), then center-crop {size}x{size} (crop fraction {_plain(pre['crop_pct'])}).",
        f"3. Normalise: {pre['value_range']}, with mean = [{mean}] and std = [{std}] ({pre['color_order']} "
        "channel order).",
        f"4. Lay the result out as {pre['layout']} ({_plural(len(manifest['inputs']), 'input')}, shapes below).",
    ]
    text = "\n".join(steps)
    if _image_input(manifest):
        (image,) = _interface(manifest).get("inputs") or [{"name": manifest["inputs"][0]["name"]}]
        text += (f"\n\nThe Core ML package does step 3 itself: give its {_code(image['name'])} input the cropped "
                 f"{size}x{size} {pre['color_order']} image ({image.get('type', 'image')}). It scales by 1/255, "
                 "subtracts the mean (the image input's scale and bias) and multiplies by 1/std as its first op.")
    return text


def _io_tables(manifest: dict) -> str:
    rows = [("input", _code(spec["name"]), _shape(spec["shape"]), spec["dtype"]) for spec in manifest["inputs"]]
    rows += [("output", _code(spec["name"]), _shape(spec["shape"]), spec["dtype"]) for spec in manifest["outputs"]]
    dynamic = sorted({d for spec in manifest["inputs"] + manifest["outputs"] for d in spec["shape"]
                      if isinstance(d, str)})
    intro = "The exported graph, as recorded in the manifest (`inputs`, `outputs`):"
    text = intro + "\n\n" + _table(("", "name", "shape", "dtype"), rows)
    if dynamic:
        text += "\n\n" + ", ".join(_code(d) for d in dynamic) + " is a dynamic axis"
        options = manifest["target"].get("build_options") or {}
        profile = options.get("profile")
        if manifest["target"]["format"] == "tensorrt" and profile:
            text += (f"; the TensorRT engine serves batch sizes {profile['min']} to {profile['max']} "
                     f"(optimised for {profile['opt']})")
        text += "."
    interface = _interface(manifest)
    if manifest["target"]["format"] == "coreml" and interface:
        rows = [("input", _code(e["name"]), e.get("type", ""), _shape(e["shape"]) if e.get("shape") else "")
                for e in interface.get("inputs", [])]
        rows += [("output", _code(e["name"]), e.get("type", ""), _shape(e["shape"]) if e.get("shape") else "")
                 for e in interface.get("outputs", [])]
        text += ("\n\nThe Core ML package's own interface (`target.interface`), which is what `predict` takes and "
                 "returns:\n\n" + _table(("", "name", "type", "shape"), rows))
    return text


_RESAMPLING = {"nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS",
               "box": "BOX", "hamming": "HAMMING"}


def _q(text: str) -> str:
    """A Python string literal, double-quoted."""
    return json.dumps(text)


def _python_preprocess(manifest: dict, normalise: bool) -> list[str]:
    """Python (numpy, PIL) for the recorded preprocessing: ``crop(path)``, and ``preprocess(path)`` when
    ``normalise``; module-level imports are added by ``_python``."""
    pre = manifest["preprocessing"]
    size, shorter = pre["center_crop"], pre["resize_shorter_side"]
    resampling = _RESAMPLING.get(str(pre["interpolation"]).lower(), "BICUBIC")
    lines: list[str] = []
    if normalise:
        dtype = manifest["inputs"][0]["dtype"]
        shape = "(3, 1, 1)" if pre["layout"] == "NCHW" else "(1, 1, 3)"
        lines += [f"MEAN = np.array([{', '.join(_plain(v) for v in pre['mean'])}], dtype=np.{dtype}).reshape{shape}",
                  f"STD = np.array([{', '.join(_plain(v) for v in pre['std'])}], dtype=np.{dtype}).reshape{shape}",
                  "", ""]
    lines += [
        "def crop(path: str) -> Image.Image:",
        '    image = Image.open(path).convert("RGB")',
        f"    scale = {shorter} / min(image.size)",
        "    image = image.resize((round(image.width * scale), round(image.height * scale)), "
        f"Image.Resampling.{resampling})",
        f"    left, top = (image.width - {size}) // 2, (image.height - {size}) // 2",
        f"    return image.crop((left, top, left + {size}, top + {size}))",
    ]
    if normalise:
        dtype = manifest["inputs"][0]["dtype"]
        pixels = f"np.asarray(crop(path), dtype=np.{dtype})"
        if pre["color_order"] == "BGR":
            pixels += "[..., ::-1]"
        if pre["layout"] == "NCHW":
            pixels += ".transpose(2, 0, 1)"
        shape = _shape([1, *manifest["inputs"][0]["shape"][1:]])
        lines += [
            "",
            "",
            "def preprocess(path: str) -> np.ndarray:",
            f"    x = {pixels} / 255.0",
            f"    return ((x - MEAN) / STD)[None]  # {shape}, {pre['layout']}",
        ]
    return lines


def _python(imports: Sequence[str], preprocess: Sequence[str], main: Sequence[str]) -> str:
    return "```python\n" + "\n".join([*imports, "", "", *preprocess, "", "", *main]).rstrip() + "\n```"


def _usage(manifest: dict) -> str:
    target = manifest["target"]
    fmt, model_file = target["format"], target["model_file"]
    input_name = manifest["inputs"][0]["name"]
    output_names = [spec["name"] for spec in manifest["outputs"]]
    if fmt == "onnx":
        batch = (" Stack several preprocessed images along the first axis for a larger batch."
                 if target.get("dynamic_batch") else "")
        main = [f"session = ort.InferenceSession({_q(model_file)}, providers=[\"CPUExecutionProvider\"])",
                f"({', '.join(output_names)},) = session.run([{', '.join(_q(n) for n in output_names)}], "
                f"{{{_q(input_name)}: preprocess(\"photo.jpg\")}})",
                f"print({output_names[0]}.argmax(axis=-1))  # the top class index"]
        return (f"Python, with ONNX Runtime.{batch}\n\n"
                + _python(["import numpy as np", "import onnxruntime as ort", "from PIL import Image"],
                          _python_preprocess(manifest, normalise=True), main))
    if fmt == "coreml":
        interface = _interface(manifest)
        name = (interface.get("inputs") or [{"name": input_name}])[0]["name"]
        outputs = [e["name"] for e in interface.get("outputs", [])] or output_names
        labels = [e["name"] for e in interface.get("outputs", []) if e.get("type") == "string"]
        image = _image_input(manifest)
        feed = 'crop("photo.jpg")' if image else 'preprocess("photo.jpg")'
        main = [f"model = ct.models.MLModel({_q(model_file)})",
                f"result = model.predict({{{_q(name)}: {feed}}})"
                + ("  # a PIL image: the package normalises it" if image else "  # the normalised tensor")]
        if labels:
            main.append(f"print(result[{_q(labels[0])}])  # the top class label")
        if output_names[0] in outputs:
            main.append(f"{output_names[0]} = result[{_q(output_names[0])}]")
        imports = ["import coremltools as ct  # predict() needs macOS", "from PIL import Image"]
        if not image:
            imports.insert(1, "import numpy as np")
        return ("Python, with coremltools on macOS:\n\n"
                + _python(imports, _python_preprocess(manifest, normalise=not image), main))
    if fmt == "tensorrt":
        engine = _engine(manifest) or {}
        plan = engine.get("plan_file", "model.plan")
        options = target.get("build_options") or {}
        profile = options.get("profile")
        batch = profile["opt"] if profile else None
        size = manifest["preprocessing"]["center_crop"]
        script = ("./build_engine.sh" if "build_engine.sh" in manifest.get("files", {})
                  else " ".join(target.get("trtexec", ["trtexec"])))
        if engine.get("built"):
            first = (f"{_code(plan)} was built on {engine.get('gpu', 'the export GPU')} with TensorRT "
                     f"{engine.get('tensorrt')}; an engine runs only on that GPU architecture and TensorRT version. "
                     "For any other, rebuild it on the serving GPU (TensorRT's `trtexec` on PATH):")
        else:
            first = "No engine is in this package: build it on the serving GPU (TensorRT's `trtexec` on PATH):"
        shell = [f"{script}   # writes {plan} from {model_file} with the recorded build options",
                 f"trtexec --loadEngine={plan}" + (f" --shapes={input_name}:{batch}x3x{size}x{size}" if profile else "")
                 + "   # a quick run"]
        names = ", ".join(f"input {_code(s['name'])} {s['dtype']} {_shape(s['shape'])}" for s in manifest["inputs"])
        names += "; " + ", ".join(f"output {_code(s['name'])} {s['dtype']} {_shape(s['shape'])}"
                                  for s in manifest["outputs"])
        return (f"{first}\n\n```bash\n" + "\n".join(shell) + "\n```\n\n"
                f"The engine's tensors: {names}. Give the input the normalised tensor `preprocess` makes (below); "
                "`engine.json` holds the build options, the exact `trtexec` command and the engine facts.\n\n"
                + _python(["import numpy as np", "from PIL import Image"], _python_preprocess(manifest, True), []))
    return ""


def _feeding(manifest: dict) -> str:
    return ("## How to feed it\n\n### Preprocessing\n\n" + _preprocessing_steps(manifest)
            + "\n\n### Inputs and outputs\n\n" + _io_tables(manifest)
            + "\n\n### Usage\n\n" + _usage(manifest))


def _parity_table(parity: dict) -> str:
    tol = parity["tolerances"]
    n = len(parity["per_input"])
    agreeing = round(parity["top1_agreement"] * n)
    rows = [
        ("max abs error (logits)", _sig(parity["max_abs"]),
         f"≤ {_plain(tol['max_abs'])}" if tol.get("max_abs") is not None else "reported, not gated"),
        ("mean abs error", _sig(parity["mean_abs"]), "—"),
        ("max relative error", _sig(parity["max_rel"]), "—"),
        ("min cosine similarity", _cosine(parity["min_cosine"]), f"≥ {_plain(tol['min_cosine'])} on every input"),
        ("top-1 agreement", f"{agreeing}/{n} inputs ({parity['top1_agreement'] * 100:.3g}%)",
         "same top-1 class on every input (a tie within the measured error counts)" if tol.get("top1_agreement")
         else "reported, not gated"),
    ]
    if "top1_ties" in parity:
        rows.append(("top-1 ties", str(parity["top1_ties"]),
                     "allowed: the reference scores the exported top-1 class within the measured error"))
    rows.append(("mean top-5 overlap", f"{_sig(parity['mean_top5_overlap'])} of 5", "—"))
    return _table(("check", "measured", "gate"), rows)


def _verified(manifest: dict) -> str:
    parity = manifest["parity"]
    kinds = Counter(row["kind"] for row in parity["per_input"])
    counted = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    verdict = "**passed**" if parity["passed"] else "**FAILED**: " + "; ".join(parity["failures"])
    parts = ["## What was verified",
             f"Before this package was written, efexport ran the exported model on "
             f"{_plural(len(parity['per_input']), 'reference input')} ({counted}) and compared its logits with the "
             f"{parity.get('compared_against', 'PyTorch reference')}. The inputs and the reference outputs are in "
             f"{_code(parity.get('reference_file', 'reference_io.npz'))}. Parity gate: {verdict}.\n\n"
             f"Runtime: {_parity_runner(manifest)}.",
             _parity_table(parity)]
    fold = manifest["fold"]
    passes = fold.get("passes", [])
    if passes:
        worst = max(p["max_abs_error"] for p in passes)
        names = ", ".join(_code(p["name"]) for p in passes)
        parts.append(f"Fold passes ({len(passes)}: {names}) were each checked against the unfolded model evaluated "
                     f"in float64: largest error {_sig(worst)}, gate {_sig(fold.get('max_abs_gate'))}.")
    runtime_parity = manifest.get("runtime_parity") or {}
    if runtime_parity:
        rows = []
        for backend, report in runtime_parity.items():
            n = len(report["per_input"])
            tol = report["tolerances"]
            gate = (f"max abs ≤ {_plain(tol['max_abs'])}, " if tol.get("max_abs") is not None else "") + \
                f"cosine ≥ {_plain(tol['min_cosine'])}"
            rows.append((_code(backend), _sig(report["max_abs"]), _cosine(report["min_cosine"]),
                         f"{round(report['top1_agreement'] * n)}/{n}", gate,
                         "passed" if report["passed"] else "FAILED"))
        parts.append("The deployment runtime itself, on the same reference inputs it accepts:\n\n"
                     + _table(("runtime", "max abs", "min cosine", "top-1 agree", "gate", "result"), rows))
    elif manifest["target"]["format"] == "coreml":
        parts.append("Core ML itself did not run: it exists only on macOS, so the figures above come from efexport's "
                     "reference interpreter.")
    execution = manifest.get("reference_execution") or {}
    largest = execution.get("fp16_largest_activations") or []
    if largest or execution.get("fp16_overflow"):  # an FP32 program has no FP16 activations to report
        top = largest[0] if largest else {}
        headroom = (f" The largest FP16 activation was {_sig(top['max_abs'], 4)} ({top['op']} {_code(top['var'])}), "
                    f"{top['fraction_of_limit'] * 100:.2g}% of the FP16 limit {_plain(execution.get('fp16_limit'))};"
                    if top else "")
        overflow = " an activation **overflowed** FP16." if execution.get("fp16_overflow") else " no overflow."
        parts.append(f"### FP16 headroom\n\nThe reference interpreter executed {execution.get('ops_executed')} ops, "
                     f"rounding each FP16 op's output to FP16 as a device does.{headroom}{overflow}")
    where = {"coreml": "the reference interpreter, and Core ML itself on macOS",
             "tensorrt": "ONNX Runtime on the prepared ONNX, and the engine where TensorRT and a GPU are present",
             }.get(manifest["target"]["format"], "ONNX Runtime")
    parts.append("### Re-check it\n\n```bash\nefexport verify <this package directory, or its bundle .zip>\n```\n\n"
                 "checks `manifest.json` against its schema, re-hashes every file it lists and re-runs the parity "
                 f"gate on {_code(parity.get('reference_file', 'reference_io.npz'))} with the recorded tolerances "
                 f"({where}).")
    return "\n\n".join(parts)


def _latency(manifest: dict) -> str:
    entries = manifest["latency"]
    if not entries:
        note = manifest.get("latency_note") or "no reason was recorded"
        return f"## Measured latency\n\nNothing was measured: {note}."
    rows = []
    for e in entries:
        stats = e["stats_ms"]
        threads = e.get("compute_units") or ("runtime's own" if e["threads"] is None else str(e["threads"]))
        method = e["method"]
        runs = f"{e['warmup_runs']} + {e['timed_runs']} ({method['windows']} windows"
        runs += ", not converged)" if method["converged"] is False else ")"
        noise = "one run" if e["noise"] is None else f"{e['noise']:.1%}"
        rows.append((f"{e['backend']} {e['runtime_version']}", _MEASURED.get(e["measured"], e["measured"]),
                     e["batch_size"], e["precision"], threads, _ms(stats["p50"]), _ms(stats["p90"]),
                     _ms(stats["p99"]), _ms(stats["mean"]), _rate(e.get("images_per_second")), noise, runs,
                     _device_summary(e["device"])))
    table = _table(("runtime", "measured", "batch", "precision", "threads / compute units", "p50", "p90", "p99",
                    "mean", "images/s", "noise", "warm-up + timed runs", "device"), rows)
    rules = sorted({e["method"]["rule"] for e in entries})
    return ("## Measured latency\n\nMeasured by efexport in the run that made this package, on the machine named "
            "in each row (host end-to-end: from the call to its return; device compute: GPU time between CUDA "
            "events). They describe that machine, not yours. Method: " + "; ".join(rules) + ". Statistics come "
            "from the settled windows; noise is the relative spread of their medians.\n\n" + table)


def _published(manifest: dict) -> str:
    model = manifest["model"]
    published = model["published"]
    latency = published["latency_ms"]
    rows = [("parameters", f"{_plain(published['params_m'])} M",
             f"{model['parameters'] / 1e6:.2f} M counted (before folding)"),
            ("compute", f"{_plain(published['gmacs'])} GMACs", "not measured"),
            ("ImageNet-1k top-1", f"{_plain(published['imagenet_top1_percent'])} %", "not measured"),
            ("latency", f"{_plain(latency['value'])} ms on {latency['device']} ({latency['runtime']})",
             "not measured")]
    random = manifest["weights"]["source"] != "checkpoint"
    caveat = " This package's random-init weights reach none of them." if random else ""
    return (f"## Published reference figures ({PUBLISHED_LABEL})\n\n"
            f"From {published['source']} (status: {published['status']}). They describe the trained "
            f"EfficientFormer-{model['variant'].upper()}; efexport measured none of them.{caveat}\n\n"
            + _table(("figure", f"value, {PUBLISHED_LABEL}", "this package"), rows))


def _limitations(manifest: dict) -> str:
    target, pre = manifest["target"], manifest["preprocessing"]
    items = [f"Not deployable — {reason}." for reason in manifest["package"]["not_deployable_because"]]
    size = pre["input_size"]
    dynamic = any(isinstance(d, str) for spec in manifest["inputs"] for d in spec["shape"])
    batch = "the batch axis is dynamic" if dynamic else f"the batch is fixed at {manifest['inputs'][0]['shape'][0]}"
    items.append(f"Fixed {size}x{size} input: the attention bias is built for the 7x7 token grid this size gives; "
                 f"{batch}.")
    fmt = target["format"]
    if fmt == "coreml" and not manifest.get("runtime_parity"):
        items.append("Core ML parity here comes from efexport's reference interpreter (it executes the saved "
                     "program, rounding FP16 per op), not from Apple's Core ML runtime; run `efexport verify` on a "
                     "Mac, or test on the device, before shipping.")
    if fmt == "tensorrt":
        engine = _engine(manifest) or {}
        if engine.get("built"):
            items.append(f"The TensorRT engine is tied to the GPU it was built on ({engine.get('gpu')}, compute "
                         f"capability {engine.get('compute_capability')}) and to TensorRT {engine.get('tensorrt')}; "
                         "rebuild it with `build_engine.sh` for any other.")
        else:
            items.append(f"No TensorRT engine was built ({engine.get('reason', 'no reason recorded')}): the parity "
                         "figures above are those of the prepared ONNX under ONNX Runtime in float32, not of the "
                         f"{target['precision']} engine. Build it with `build_engine.sh` on the serving GPU and run "
                         "`efexport verify` there.")
    tolerances = manifest["parity"]["tolerances"]
    if tolerances.get("max_abs") is None:
        items.append(f"{target['precision'].upper()}: logits differ from the float32 PyTorch model by up to "
                     f"{_sig(manifest['parity']['max_abs'])} on the reference inputs; only cosine similarity and "
                     "the top-1 class are gated.")
    if manifest["weights"]["source"] != "checkpoint" and not any("random-init" in item for item in items):
        items.append(f"Random-init weights (seed {manifest['weights'].get('seed')}): the predictions mean nothing.")
    return "## Limitations\n\n" + "\n".join(f"- {item}" for item in items)


def _files(manifest: dict) -> str:
    rows = [(_code(name), f"{entry['bytes']:,}", _code(entry["sha256"]))
            for name, entry in manifest["files"].items() if name != CARD_FILE]
    return ("## Files\n\nEvery file of the package with its size in bytes and sha256, as `manifest.json` records "
            f"them (which also lists this {CARD_FILE}; a file cannot hold its own hash, and `manifest.json` holds "
            "the table):\n\n" + _table(("file", "bytes", "sha256"), rows))


def _versions(manifest: dict) -> str:
    versions = manifest["versions"]
    rows = []
    for tool, version in versions.items():
        if tool == "efexport_git_commit":
            rows.append(("efexport git commit", _code(version) if version else "not recorded (not a git checkout)"))
        else:
            rows.append((tool, version))
    recipe = manifest["recipe"]
    digest = f", sha256 {_code(recipe['file_sha256'])}" if recipe.get("file_sha256") else ""
    return ("## Tool versions\n\n" + _table(("tool", "version"), rows)
            + f"\n\nRecipe: {_code(recipe['file'])}{digest}; the values used, command-line overrides applied, are "
            "`recipe.values` in `manifest.json`.")


def model_card(manifest: dict) -> str:
    """The package's README.md (Markdown) from its efexport.manifest/3 manifest: same manifest, same text."""
    sections = [_title(manifest), _warning(manifest), _weights(manifest), _feeding(manifest), _verified(manifest),
                _latency(manifest), _published(manifest), _limitations(manifest), _files(manifest),
                _versions(manifest)]
    return "\n\n".join(section.strip("\n") for section in sections if section) + "\n"


__all__ = ["CARD_FILE", "PUBLISHED_LABEL", "model_card"]
