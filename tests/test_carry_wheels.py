"""benchmarks/carry_wheels.py trims a wheel: the dropped folders are gone and RECORD lists
exactly the members left, with their sha256 and size (what pip checks on install)."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from carry_wheels import trim_wheel  # noqa: E402


def test_trim_wheel_drops_folders_and_rewrites_record(tmp_path):
    wheel = tmp_path / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"
    files = {"ray/__init__.py": b"x = 1\n", "ray/jars/ray_dist.jar": b"\0" * 1000, "ray/rllib/algo.py": b"pass\n",
             "ray/dashboard/agent.py": b"agent\n", "ray/dashboard/client/build/index.html": b"<html>",
             "ray-2.60.0.dist-info/METADATA": b"Name: ray\n"}
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("ray-2.60.0.dist-info/RECORD", "\n".join(f"{n},," for n in files))
    trim_wheel(wheel)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("ray-2.60.0.dist-info/RECORD").decode().splitlines()
        kept = {n: z.read(n) for n in names if not n.endswith("RECORD")}
    assert kept.keys() == {"ray/__init__.py", "ray/dashboard/agent.py", "ray-2.60.0.dist-info/METADATA"}
    rows = {line.split(",")[0]: line.split(",")[1:] for line in record}
    assert set(rows) == set(kept) | {"ray-2.60.0.dist-info/RECORD"}
    for name, data in kept.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert rows[name] == [f"sha256={digest}", str(len(data))]
