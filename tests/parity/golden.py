"""Access to the reference implementation's golden cases (``$INFINITETALK_GOLDEN``).

Cases are found through ``manifest.json`` and classified by what produced them, so any new
case of a known kind (other seeds, sizes, head or layer counts) is picked up without code
changes. Nothing here hard-codes a shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(os.environ.get("INFINITETALK_GOLDEN", REPO.parent / "shared" / "golden"))

# Achieved errors, printed in pytest's terminal summary (tests/conftest.py).
RECORDS: list[str] = []


def manifest() -> dict:
    path = GOLDEN / "manifest.json"
    if not path.is_file():
        pytest.skip(f"no golden data at {GOLDEN} (set INFINITETALK_GOLDEN)")
    return json.loads(path.read_text())


def case_kind(case: dict) -> str:
    """Kind of a case from its ``produced_by`` line (and whether it expects an error)."""
    src = case.get("produced_by", "")
    if "WanModel.forward" in src:
        return "dit_padded" if "expected" in case else "dit"
    for needle, kind in (
        ("vae.py", "vae"),
        ("clip.py", "clip"),
        ("t5.py", "t5"),
        ("wav2vec2", "wav2vec2"),
        ("timestep_transform", "sampler"),
    ):
        if needle in src:
            return kind
    return "unknown"


def _case_names(kind: str) -> list[str]:
    path = GOLDEN / "manifest.json"
    if not path.is_file():
        return ["<no golden data>"]
    names = [c["case"] for c in json.loads(path.read_text())["cases"] if case_kind(c) == kind]
    return names or [f"<no {kind} case>"]


def each_case(kind: str):
    """``@each_case("dit")``: parametrize a test over every case of that kind (by name)."""
    return pytest.mark.parametrize("case_name", _case_names(kind))


def case(name: str) -> dict:
    """The case dict (from its ``case.json``) with ``dir`` added; fails if the kind has none."""
    if name.startswith("<"):
        if name == "<no golden data>":
            pytest.skip(f"no golden data at {GOLDEN} (set INFINITETALK_GOLDEN)")
        pytest.fail(f"the golden manifest at {GOLDEN} lists {name[1:-1]}")
    d = GOLDEN / name
    c = json.loads((d / "case.json").read_text())
    c["dir"] = d
    return c


def tensors(c: dict, filename: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file of a case; clones so CPU GEMMs see aligned memory."""
    return {k: v.clone() for k, v in load_file(str(c["dir"] / filename)).items()}


def weights(c: dict) -> dict[str, torch.Tensor]:
    """The case's weights (``case["weights"]`` is relative to the golden root)."""
    return {k: v.clone() for k, v in load_file(str(GOLDEN / c["weights"])).items()}


def config(c: dict) -> dict:
    return json.loads((c["dir"] / "config.json").read_text())


def assert_close(label: str, ours: torch.Tensor, golden: torch.Tensor, tol: float = 1e-4) -> float:
    """max|ours - golden| <= tol * max|golden|; records and returns the achieved ratio."""
    assert tuple(ours.shape) == tuple(golden.shape), f"{label}: shape {tuple(ours.shape)} != {tuple(golden.shape)}"
    ours, golden = ours.detach().double().cpu(), golden.detach().double().cpu()
    assert torch.isfinite(ours).all(), f"{label}: non-finite values"
    scale = golden.abs().max().item() or 1.0
    ratio = (ours - golden).abs().max().item() / scale
    RECORDS.append(f"{label}: max|ours-golden|/max|golden| = {ratio:.2e} (tol {tol:.0e})")
    assert ratio <= tol, f"{label}: max|ours-golden|/max|golden| = {ratio:.3e} > {tol:.0e}"
    return ratio


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def record(line: str) -> None:
    RECORDS.append(line)
