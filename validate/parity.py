"""Numerical parity of an exported model's outputs against the PyTorch reference outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from efexport.exporter.recipe_sections import Tolerances


@dataclass(frozen=True)
class InputParity:
    index: int
    kind: str
    max_abs: float
    mean_abs: float
    max_rel: float  # max |a - b| relative to max |b| of that input's reference logits
    cosine: float
    top1_agree: bool
    top1_tie: bool  # top-1 differs, but the reference scores the exported top-1 within this input's max_abs error
    top5_overlap: int  # how many of the reference top-5 classes are in the exported top-5


@dataclass(frozen=True)
class ParityReport:
    passed: bool
    failures: tuple[str, ...]
    tolerances: dict
    max_abs: float
    mean_abs: float
    max_rel: float
    min_cosine: float
    top1_agreement: float  # fraction of inputs
    top1_ties: int  # inputs whose top-1 differs within the measured error (near-equal reference logits): allowed
    mean_top5_overlap: float
    per_input: tuple[InputParity, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def _compare_one(index: int, kind: str, got: np.ndarray, want: np.ndarray) -> InputParity:
    got64, want64 = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    diff = np.abs(got64 - want64)
    norm = np.linalg.norm(got64) * np.linalg.norm(want64)
    cosine = float(got64 @ want64 / norm) if norm > 0 else float(np.array_equal(got64, want64))
    top1_agree = bool(np.argmax(got64) == np.argmax(want64))
    top1_tie = not top1_agree and bool(want64[np.argmax(got64)] >= want64.max() - diff.max())
    top5_got = set(np.argsort(-got64)[:5].tolist())
    top5_want = set(np.argsort(-want64)[:5].tolist())
    return InputParity(
        index=index, kind=kind, max_abs=float(diff.max()), mean_abs=float(diff.mean()),
        max_rel=float(diff.max() / max(np.abs(want64).max(), 1e-12)), cosine=cosine,
        top1_agree=top1_agree, top1_tie=top1_tie, top5_overlap=len(top5_got & top5_want),
    )


def compare_outputs(got: np.ndarray, want: np.ndarray, kinds: tuple[str, ...], tol: Tolerances) -> ParityReport:
    """Per-input metrics and the gate: every input must meet every tolerance."""
    if got.shape != want.shape:
        raise ValueError(f"output shape {got.shape} differs from the reference {want.shape}")
    rows = tuple(_compare_one(i, kinds[i], got[i], want[i]) for i in range(len(want)))
    failures = []
    for row in rows:
        where = f"input {row.index} ({row.kind})"
        if not np.isfinite(row.max_abs):
            failures.append(f"{where}: non-finite output")
            continue
        if tol.max_abs is not None and row.max_abs > tol.max_abs:
            failures.append(f"{where}: max_abs {row.max_abs:.3g} > {tol.max_abs:.3g}")
        if row.cosine < tol.min_cosine:
            failures.append(f"{where}: cosine {row.cosine:.7f} < {tol.min_cosine}")
        if tol.top1_agreement and not (row.top1_agree or row.top1_tie):
            failures.append(f"{where}: top-1 class differs")
    if tol.min_top1_agreement is not None:
        agreeing = sum(r.top1_agree or r.top1_tie for r in rows)
        if agreeing < tol.min_top1_agreement * len(rows):
            failures.append(f"top-1 agreement {agreeing}/{len(rows)} < {tol.min_top1_agreement:.3g}")
    return ParityReport(
        passed=not failures, failures=tuple(failures), tolerances=tol.model_dump(),
        max_abs=max(r.max_abs for r in rows), mean_abs=float(np.mean([r.mean_abs for r in rows])),
        max_rel=max(r.max_rel for r in rows), min_cosine=min(r.cosine for r in rows),
        top1_agreement=float(np.mean([r.top1_agree for r in rows])), top1_ties=sum(r.top1_tie for r in rows),
        mean_top5_overlap=float(np.mean([r.top5_overlap for r in rows])), per_input=rows,
    )
