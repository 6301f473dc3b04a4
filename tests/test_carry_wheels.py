"""benchmarks/carry_wheels.py packs wheels into one tree: installed layout, dropped folders
and suffixes gone, executables still executable (Ray's raylet and GCS binaries)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from carry_wheels import pack  # noqa: E402


@pytest.mark.skipif(shutil.which("xz") is None, reason="needs xz")
def test_pack_unpacks_wheels_without_dropped_members(tmp_path):
    wheel = tmp_path / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"
    files = {"ray/__init__.py": b"x = 1\n", "ray/jars/ray_dist.jar": b"\0" * 1000, "ray/rllib/algo.py": b"pass\n",
             "ray/dashboard/agent.py": b"agent\n", "ray/dashboard/client/build/index.html": b"<html>",
             "ray/__pycache__/x.cpython-312.pyc": b"\0", "ray/core/src/ray/raylet/raylet": b"\x7fELF",
             "silero_vad/data/silero_vad.onnx": b"onnx", "silero_vad/data/silero_vad.jit": b"jit",
             "ray-2.60.0.data/scripts/ray": b"#!python\n", "ray-2.60.0.dist-info/METADATA": b"Name: ray\n"}
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith("raylet") else 0o644) << 16
            z.writestr(info, data)
    out = pack([wheel], tmp_path / "carry" / "site.tar.xz")
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run(["tar", "-xJf", str(out), "-C", str(site)], check=True)
    got = {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    assert got == {"ray/__init__.py", "ray/dashboard/agent.py", "ray/core/src/ray/raylet/raylet",
                   "silero_vad/data/silero_vad.jit", "ray-2.60.0.dist-info/METADATA"}
    assert (site / "ray/core/src/ray/raylet/raylet").stat().st_mode & 0o111
    assert not list(out.parent.glob("*.part"))
