"""benchmarks/dit_parallel.py's control flow on CPU (gloo, tiny preset) under torchrun, as the GPU run uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "benchmarks" / "dit_parallel.py"), "--preset", "tiny", "--device", "cpu",
           "--frames", "9", "--warmup", "0", "--repeats", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)


def test_dit_parallel_benchmark_cpu(tmp_path):
    one, two, check = tmp_path / "one.json", tmp_path / "two.json", tmp_path / "check.pt"
    common = ["--resolutions", "64x64,48x80", "--speakers", "2", "--dtype", "float32", "--check-resolution", "64x96"]
    r = _torchrun(1, "--modes", "sp", *common, "--json", str(one), "--check-save", str(check))
    assert r.returncode == 0, r.stdout + r.stderr
    r = _torchrun(2, *common, "--baseline-json", str(one), "--check-against", str(check), "--json", str(two))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(two.read_text())["rows"]
    assert {(x["resolution"], x["mode"]) for x in rows} == {
        (res, m) for res in ("64x64", "48x80") for m in ("sp", "batched2", "cfg2", "batched3", "cfgpar3")}
    assert all(x["efficiency"] is not None and x["seconds"] > 0 for x in rows)
    # Same seeded weights and inputs as the 1-process run: fp32, equal up to kernel rounding.
    assert all(x["check_rel_l2"] is not None and x["check_rel_l2"] < 1e-5 for x in rows), rows
    assert "| 64x64 | 48 | cfgpar3 | 2 x 1 | 3 |" in r.stdout  # the markdown table
    assert "CHECK FAILED" not in r.stdout
    # Two speakers: cond (2 speakers) and the silent branch cannot share a forward.
    assert {x["mode"]: x["forwards_per_rank"] for x in rows if x["resolution"] == "64x64"} == {
        "sp": 1, "batched2": 2, "cfg2": 1, "batched3": 2, "cfgpar3": 1}


def test_dit_parallel_benchmark_fails_loudly(tmp_path):
    r = _torchrun(2, "--modes", "nonsense", "--resolutions", "64x64")
    assert r.returncode != 0 and "unknown mode" in r.stdout + r.stderr
