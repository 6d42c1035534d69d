"""The GitHub Actions workflows: valid against GitHub's workflow schema, and holding the rules the release relies on.

Schema: ``check-jsonschema --builtin-schema vendor.github-workflows`` (SchemaStore's schema, vendored in the
package, so no network). Structure: parsed with ``yaml.safe_load`` (which reads the ``on:`` key as ``True``).
Every ``efexport`` call in a ``run:`` step is found in the shell text (heredoc bodies skipped) and its subcommand
resolved through ``env:`` and the job's matrix, so ``efexport "$TARGET"`` with ``TARGET: ${{ matrix.target }}``
counts as every target in the matrix.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
CI = WORKFLOWS / "ci.yml"
PUBLISH = WORKFLOWS / "publish.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")

# Expressions whose value an outside party controls: never spliced into shell code (pass them through env:).
UNTRUSTED_IN_RUN = ("${{ github.event.", "${{ inputs.", "${{ github.head_ref")
FLOATING_REFS = {"main", "master", "HEAD", "latest"}


# ---------------------------------------------------------------------------------------------------- helpers


@cache
def load(path: Path) -> dict[str, Any]:
    workflow = yaml.safe_load(path.read_text())
    assert isinstance(workflow, dict), f"{path.name}: not a mapping"
    if True in workflow:  # YAML 1.1 reads the bare key `on` as the boolean True
        workflow["on"] = workflow.pop(True)
    return workflow


def jobs(path: Path) -> dict[str, dict[str, Any]]:
    return load(path).get("jobs") or {}


def run_steps(workflow: dict[str, Any]):
    """(job id, job, step) for every step with a ``run:``."""
    for job_id, job in (workflow.get("jobs") or {}).items():
        for step in job.get("steps") or []:
            if "run" in step:
                yield job_id, job, step


def shell_text(script: str) -> str:
    """The shell code of a run: script: heredoc bodies (inline Python) removed, line continuations joined."""
    script = re.sub(r"<<-?\s*(['\"]?)(\w+)\1[^\n]*\n.*?^\s*\2\s*$", "", script, flags=re.S | re.M)
    return script.replace("\\\n", " ")


# an efexport command in command position: line start, after ; & | ( !, or after a shell keyword
EFEXPORT_CALL = re.compile(
    r"(?:^|[;&|(!]|\b(?:then|do|else|if|time|exec)\b)\s*(?:[\w.${}/-]*/)?efexport\s+(\S+)([^;&|\n]*)", re.M
)


@dataclass(frozen=True)
class Call:
    workflow: str
    job: str
    subcommand: str
    args: str

    def __str__(self) -> str:
        return f"{self.workflow}:{self.job}: efexport {self.subcommand}{self.args}"


def matrix_values(job: dict[str, Any], key: str) -> list[str]:
    matrix = (job.get("strategy") or {}).get("matrix") or {}
    values = list(matrix.get(key) or [])
    values += [entry[key] for entry in matrix.get("include") or [] if key in entry]
    return [str(v) for v in dict.fromkeys(values)]


def resolve(token: str, env: dict[str, Any], job: dict[str, Any]) -> list[str]:
    """A subcommand token as written (``publish``, ``"$TARGET"``, ``${{ matrix.target }}``) -> the names it takes."""
    token = token.strip("'\"")
    variable = re.fullmatch(r"\$\{?(\w+)\}?", token)
    if variable and variable.group(1) in env:
        token = str(env[variable.group(1)]).strip()
    expression = re.fullmatch(r"\$\{\{\s*matrix\.([\w-]+)\s*\}\}", token)
    if expression:
        return matrix_values(job, expression.group(1)) or [token]
    return [token]


def efexport_calls_in(workflow: dict[str, Any], name: str) -> list[Call]:
    calls = []
    for job_id, job, step in run_steps(workflow):
        env = {**(workflow.get("env") or {}), **(job.get("env") or {}), **(step.get("env") or {})}
        for match in EFEXPORT_CALL.finditer(shell_text(step["run"])):
            token, args = match.groups()
            if token.startswith("-"):  # efexport --help / --version: no subcommand
                continue
            calls += [Call(name, job_id, subcommand, args) for subcommand in resolve(token, env, job)]
    return calls


def efexport_calls(path: Path) -> list[Call]:
    return efexport_calls_in(load(path), path.name)


def runs_on_labels(job: dict[str, Any]) -> list[str]:
    runs_on = job.get("runs-on")
    if isinstance(runs_on, dict):  # {group: ..., labels: [...]}
        runs_on = runs_on.get("labels")
    return [runs_on] if isinstance(runs_on, str) else list(runs_on or [])


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip(f"check-jsonschema is not installed next to {sys.executable} (pip install check-jsonschema)")
    return subprocess.run([str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


@cache
def cli_commands() -> frozenset[str]:
    import typer

    from efexport.exporter.cli import app

    return frozenset(typer.main.get_command(app).commands)


def readme_test_command() -> str:
    """The README's test command: the code-block line commented 'runs the test suite', and the development
    section's '`...` runs the suite'; both must name the same command."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.S | re.M)
    found = {line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()
             if re.search(r"#.*\btest suite\b", line)}
    found |= {command.strip() for command in re.findall(r"`([^`\n]+)` runs the (?:test )?suite", text)}
    assert len(found) == 1, f"README.md should give exactly one test command, found {sorted(found) or 'none'}"
    return found.pop()


def _used_subcommands() -> list[str]:
    try:
        return sorted({call.subcommand for path in WORKFLOW_FILES for call in efexport_calls(path)})
    except Exception as error:  # a broken workflow fails this test below, not the collection of the module
        return [f"<workflows unreadable: {type(error).__name__}: {error}>"]


# ---------------------------------------------------------------------------------------------------- every workflow


def test_workflows_exist():
    assert CI in WORKFLOW_FILES and PUBLISH in WORKFLOW_FILES, [p.name for p in WORKFLOW_FILES]


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_matches_github_schema(path: Path):
    result = check_jsonschema(path)
    assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"


def _minimal_workflow() -> dict[str, Any]:
    return {"on": "push", "jobs": {"build": {"runs-on": "ubuntu-latest", "timeout-minutes": 10,
                                              "steps": [{"run": "echo hi"}]}}}


BREAKAGES = {
    "job without runs-on": lambda job: job.pop("runs-on"),
    'timeout-minutes: "soon"': lambda job: job.update({"timeout-minutes": "soon"}),
}


def test_schema_check_accepts_a_minimal_workflow(tmp_path: Path):
    """The control for the test below: each broken workflow differs from this valid one in one thing only."""
    valid = tmp_path / "valid.yml"
    valid.write_text(yaml.safe_dump(_minimal_workflow(), sort_keys=False))
    result = check_jsonschema(valid)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_schema_check_rejects_a_broken_workflow(tmp_path: Path, breakage: str):
    workflow = _minimal_workflow()
    BREAKAGES[breakage](workflow["jobs"]["build"])
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(workflow, sort_keys=False))  # valid YAML: only the schema can object
    result = check_jsonschema(broken)
    assert result.returncode != 0, f"check-jsonschema accepted a workflow with {breakage}:\n{result.stdout}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_job_has_a_timeout(path: Path):
    # a job calling a reusable workflow (job-level uses:) cannot set one
    missing = [job_id for job_id, job in jobs(path).items() if "uses" not in job and "timeout-minutes" not in job]
    assert not missing, f"{path.name}: jobs without timeout-minutes: {missing}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_action_is_pinned(path: Path):
    uses = [job["uses"] for job in jobs(path).values() if "uses" in job]
    uses += [step["uses"] for job in jobs(path).values() for step in job.get("steps") or [] if "uses" in step]
    unpinned = [u for u in uses if not u.startswith(("./", "docker://"))
                and ("@" not in u or u.rsplit("@", 1)[1] in FLOATING_REFS | {""})]
    assert not unpinned, f"{path.name}: actions not pinned to a version tag or sha: {unpinned}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_no_untrusted_expression_in_shell_code(path: Path):
    """Script injection: an outside-controlled value reaches a run: step only through env:."""
    bad = [f"{job_id}: {line.strip()}" for job_id, _, step in run_steps(load(path)) for line in step["run"].splitlines()
           if any(pattern in line for pattern in UNTRUSTED_IN_RUN)]
    assert not bad, f"{path.name}: pass these through env: instead:\n" + "\n".join(bad)


def _setup_python_versions(path: Path) -> list[str]:
    """Every Python a workflow sets up, with ``${{ matrix.python }}`` resolved through the job's matrix."""
    versions = []
    for job in jobs(path).values():
        for step in job.get("steps") or []:
            if str(step.get("uses", "")).startswith("actions/setup-python@"):
                version = str((step.get("with") or {}).get("python-version"))
                expression = re.fullmatch(r"\$\{\{\s*matrix\.([\w-]+)\s*\}\}", version)
                versions += matrix_values(job, expression.group(1)) if expression else [version]
    return versions


def _requires_python() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_setup_python_is_a_python_the_project_supports(path: Path):
    supported = SpecifierSet(_requires_python())
    versions = _setup_python_versions(path)
    assert versions and all(v in supported for v in versions), f"{path.name}: setup-python {versions}, " \
                                                              f"requires-python {supported}"


def test_ci_tests_every_supported_python_from_the_oldest():
    """ci.yml's matrix starts at requires-python's minimum and covers 3.11, 3.12 and 3.13; the README agrees."""
    versions = _setup_python_versions(WORKFLOWS / "ci.yml")
    assert versions == ["3.11", "3.12", "3.13"]
    assert _requires_python() == ">=3.11"
    assert "Python 3.11+" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("subcommand", _used_subcommands())
def test_efexport_subcommand_used_in_a_workflow_exists(subcommand: str):
    users = sorted({f"{c.workflow}:{c.job}" for p in WORKFLOW_FILES for c in efexport_calls(p)
                    if c.subcommand == subcommand})
    assert subcommand in cli_commands(), (
        f"`efexport {subcommand}` is used in {users} but the CLI has only {sorted(cli_commands())}")


def test_efexport_call_parser():
    script = (
        "set -euo pipefail\n"
        ".venv/bin/efexport bundle \"$PKG\" --out bundles && efexport verify x.zip\n"
        "if ! efexport tensorrt --variant l1 \\\n    --require-engine; then exit 1; fi\n"
        "echo 'efexport is great'\n"
        "python - <<'PY'\nprint('efexport onnx')\nefexport coreml\nPY\n"
        "efexport \"$TARGET\" --variant l1\n"
    )
    step = {"run": script, "env": {"TARGET": "${{ matrix.target }}"}}
    job = {"strategy": {"matrix": {"target": ["onnx"], "include": [{"target": "coreml"}]}}, "steps": [step]}
    calls = efexport_calls_in({"jobs": {"j": job}}, "inline.yml")
    assert [(c.subcommand, " ".join(c.args.split())) for c in calls] == [
        ("bundle", '"$PKG" --out bundles'),
        ("verify", "x.zip"),
        ("tensorrt", "--variant l1 --require-engine"),  # continuation line joined
        ("onnx", "--variant l1"),  # "$TARGET" -> ${{ matrix.target }} -> each matrix value
        ("coreml", "--variant l1"),
    ]  # nothing from the echo or the heredoc


# ---------------------------------------------------------------------------------------------------- ci.yml


def test_ci_runs_on_main_and_pull_requests_read_only():
    ci = load(CI)
    assert ci["on"]["push"]["branches"] == ["main"] and "pull_request" in ci["on"]
    assert ci.get("permissions") == {"contents": "read"}
    assert ci.get("concurrency", {}).get("cancel-in-progress"), "superseded pull-request runs are not cancelled"


def test_ci_runs_the_readme_test_command():
    """The README and ci.yml cannot drift apart: CI runs exactly the command the README tells people to run."""
    command = readme_test_command()
    lines = [line.strip() for _, _, step in run_steps(load(CI)) for line in shell_text(step["run"]).splitlines()]
    assert command in lines, f"ci.yml does not run the README's test command {command!r}; its run lines: {lines}"
    assert "make setup" in lines and "make lint" in lines, lines


# ---------------------------------------------------------------------------------------------------- publish.yml


def test_publish_runs_only_for_version_tags():
    triggers = load(PUBLISH)["on"]
    assert triggers["push"] == {"tags": ["v*"]}, triggers["push"]  # no branch pushes
    assert set(triggers) <= {"push", "workflow_dispatch"}, f"publish.yml must not run on {sorted(triggers)}"
    assert "version" in triggers["workflow_dispatch"]["inputs"]


def test_publish_never_runs_twice_at_once_for_a_tag():
    concurrency = load(PUBLISH).get("concurrency") or {}
    assert concurrency.get("group") and concurrency.get("cancel-in-progress") is False, concurrency


def test_publish_job_needs_every_other_job():
    """The publish job runs only when every gate (Linux, macOS Core ML, GPU TensorRT) passed."""
    all_jobs = jobs(PUBLISH)
    needs = all_jobs["publish"].get("needs") or []
    needs = [needs] if isinstance(needs, str) else needs
    assert set(needs) == set(all_jobs) - {"publish"}
    assert "if" not in all_jobs["publish"], "an if: (e.g. always()) could run the publish job past a failed gate"


def test_only_the_publish_job_can_write():
    """Write access to the repository: the publish job only. ``id-token: write`` is not (it lets a job ask for its
    OIDC token, which Sigstore keyless signing needs) and is given to exactly the jobs that sign."""
    workflow = load(PUBLISH)
    assert workflow.get("permissions") == {"contents": "read"}
    writers = {job_id for job_id, job in jobs(PUBLISH).items()
               if "write" in {scope: level for scope, level in (job.get("permissions") or {}).items()
                              if scope != "id-token"}.values() or job.get("permissions") == "write-all"}
    assert writers == {"publish"}, writers
    signers = {c.job for c in efexport_calls(PUBLISH) if c.subcommand == "sign"}
    with_token = {job_id for job_id, job in jobs(PUBLISH).items()
                  if (job.get("permissions") or {}).get("id-token") == "write"}
    assert with_token == signers, (with_token, signers)



def _calls_in_order(job: str) -> list[Call]:
    return [c for c in efexport_calls(PUBLISH) if c.job == job]


def test_every_package_gets_provenance_then_a_keyless_signature_in_the_job_that_builds_it():
    """Each job that exports writes the provenance statement, then signs with Sigstore (so the signature covers the
    statement), then bundles; and its verify requires the signature of this workflow's identity."""
    from efexport.exporter.targets import TARGETS

    builders = {c.job for c in efexport_calls(PUBLISH) if c.subcommand in {"all", *TARGETS}}
    assert builders == {"build-linux", "tensorrt-gpu"}, builders
    for job in builders:
        order = [c.subcommand for c in _calls_in_order(job)]
        assert "provenance" in order and "sign" in order and "bundle" in order, (job, order)
        assert order.index("provenance") < order.index("sign") < order.index("bundle"), (job, order)
        signs = [c for c in _calls_in_order(job) if c.subcommand == "sign"]
        assert all("--sigstore" in c.args for c in signs), [str(c) for c in signs]
        provenance = [c for c in _calls_in_order(job) if c.subcommand == "provenance"]
        assert all("--checkpoint-url" in c.args for c in provenance), [str(c) for c in provenance]
    env = load(PUBLISH).get("env") or {}
    assert env.get("SIGNER_ISSUER") == "https://token.actions.githubusercontent.com"
    assert "github.workflow_ref" in str(env.get("SIGNER_IDENTITY")), "the signer must be this workflow's identity"
    verifies = [c for c in efexport_calls(PUBLISH) if c.subcommand == "verify"]
    assert verifies
    for call in verifies:
        assert "--require-signature" in call.args, str(call)
        assert '--identity "$SIGNER_IDENTITY"' in call.args and '--issuer "$SIGNER_ISSUER"' in call.args, str(call)


def test_publish_requires_the_signature_and_attaches_the_provenance():
    publishes = [c for c in efexport_calls(PUBLISH) if c.subcommand == "publish"]
    assert publishes
    for call in publishes:
        assert "--require-signature" in call.args, str(call)
        assert '--identity "$SIGNER_IDENTITY"' in call.args and '--issuer "$SIGNER_ISSUER"' in call.args, str(call)
    publish_job = "\n".join(shell_text(step["run"]) for job, _, step in run_steps(load(PUBLISH)) if job == "publish")
    assert re.search(r"--evidence\s+\S*provenance\.intoto\.json", publish_job), "provenance is not attached"


def _tensorrt_calls() -> list[Call]:
    """`efexport tensorrt`, and `efexport all` unless its --targets leave TensorRT out."""
    return [c for c in efexport_calls(PUBLISH) if c.subcommand == "tensorrt"
            or (c.subcommand == "all" and ("--targets" not in c.args or "tensorrt" in c.args))]


def test_tensorrt_job_runs_on_the_self_hosted_gpu_runner_and_requires_an_engine():
    calls = _tensorrt_calls()
    assert calls, "publish.yml builds no TensorRT package"
    for call in calls:
        labels = runs_on_labels(jobs(PUBLISH)[call.job])
        assert {"self-hosted", "gpu"} <= set(labels), f"{call.job} runs on {labels}"
        assert "--require-engine" in call.args, f"{call}: a release must not publish a TensorRT package without engine"


def test_coreml_packages_are_verified_on_macos_before_publishing():
    macos_jobs = {job_id for job_id, job in jobs(PUBLISH).items()
                  if any(label.startswith("macos") for label in runs_on_labels(job))}
    verifies = [c for c in efexport_calls(PUBLISH) if c.job in macos_jobs and c.subcommand == "verify"]
    assert verifies, "no efexport verify on a macOS runner"
    assert all("--report" in c.args and "--latency" in c.args for c in verifies), [str(c) for c in verifies]


def test_publish_steps_publish_real_weights_with_evidence():
    text = "\n".join(step["run"] for _, _, step in run_steps(load(PUBLISH)))
    assert "--allow-random-weights" not in text
    assert "sha256sum --check" in text, "checkpoints and bundles are not checked against their sha256"
    publishes = [c for c in efexport_calls(PUBLISH) if c.subcommand == "publish"]
    assert publishes and all(c.job == "publish" for c in publishes), [str(c) for c in publishes]
    publish_job = "\n".join(shell_text(step["run"]) for job, _, step in run_steps(load(PUBLISH)) if job == "publish")
    assert re.search(r"--evidence\s+\S*coreml-macos", publish_job), "the macOS verification reports are not attached"


def test_publish_builds_every_registered_target_on_its_runner():
    """The publish workflow's targets come from the target registry: each target with ci_runner "linux" is in the
    Linux build matrix with its shipped recipe's precision, and the GPU job builds the "gpu" ones."""
    from efexport.exporter.recipes import default_recipe_path, load_recipe
    from efexport.exporter.targets import TARGETS

    build = jobs(PUBLISH)["build-linux"]
    linux = {name for name, spec in TARGETS.items() if spec.ci_runner == "linux"}
    assert set(matrix_values(build, "target")) == linux
    precisions = {entry["target"]: entry["precision"] for entry in build["strategy"]["matrix"]["include"]}
    assert precisions == {name: load_recipe(default_recipe_path(name))[0].precision for name in linux}
    gpu_calls = {c.subcommand for c in efexport_calls(PUBLISH) if c.job == "tensorrt-gpu"}
    assert {name for name, spec in TARGETS.items() if spec.ci_runner == "gpu"} <= gpu_calls
    assert {spec.ci_runner for spec in TARGETS.values()} <= {"linux", "gpu"}
