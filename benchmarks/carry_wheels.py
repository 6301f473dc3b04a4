"""Wheels the GPU image lacks, ready to carry to the lent GPU machine (64 MiB per call).

    python benchmarks/carry_wheels.py            # -> .whl/ (media, config, audio, farm planning)
    python benchmarks/carry_wheels.py --ray      # + .whl-ray/ (Ray 2.60 trimmed to ~40 MB)

The GPU image (torch 2.11, Python 3.12) has no PyAV, Hydra/OmegaConf, pyloudnorm, ftfy,
silero-vad, PySceneDetect or Ray. ``.whl/`` holds everything but Ray (~50 MB). Ray's wheel is
79 MB: this drops what the farm never loads — the Java jars, the dashboard's web client build,
RLlib, Ray Data/Serve/Train/Tune/LLM — rewrites the wheel's RECORD, and keeps the core (raylet,
GCS, the dashboard/runtime-env agents the raylet starts). Carry the two folders in two
consecutive calls on the warm machine (an ignored folder stays there between calls), then
install both into one ``--target``:

    run 1: carry [".whl-ray"]  (any command)
    run 2: carry [".whl"];  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl .whl-ray/*.whl

Both folders must be listed in ``.git/info/exclude``. antlr4-python3-runtime 4.9.3 (OmegaConf's
parser) has no wheel on the index: it is built here from its sdist (pure Python).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
            "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
BASE = ["av==18.0.0", "hydra-core==1.3.8", "omegaconf==2.3.1", "pyloudnorm==0.2.0", "ftfy==6.3.1", "wcwidth",
        "silero-vad==6.2.3", "scenedetect==0.7.2"]
RAY = ["ray==2.60.0", "jsonschema==4.26.0", "referencing", "jsonschema-specifications", "rpds-py"]
# Parts of the Ray wheel the farm never imports (it uses ray core, placement groups and actors).
RAY_DROP = ("ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/data/", "ray/serve/", "ray/train/",
            "ray/tune/", "ray/llm/")


def download(names: list[str], folder: Path, python: str = sys.executable) -> None:
    folder.mkdir(exist_ok=True)
    subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *PLATFORM,
                    "-d", str(folder), *names], check=True)


def trim_wheel(wheel: Path, drop: tuple[str, ...] = RAY_DROP) -> Path:
    """Rewrite ``wheel`` in place without the members under ``drop`` (RECORD updated)."""
    tmp = wheel.with_suffix(".trim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        kept = [n for n in src.namelist() if not n.startswith(drop) and n != record_name]
        lines = []
        for name in kept:
            data = src.read(name)
            dst.writestr(src.getinfo(name), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
        dst.writestr(record_name, "\n".join([*lines, f"{record_name},,"]) + "\n")
    tmp.replace(wheel)
    return wheel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray", action="store_true", help="also .whl-ray/ with the trimmed Ray wheel")
    args = ap.parse_args()
    base = REPO / ".whl"
    download(BASE, base)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base),
                    "antlr4-python3-runtime==4.9.3"], check=True)
    folders = [base]
    if args.ray:
        ray = REPO / ".whl-ray"
        download(RAY, ray)
        for wheel in ray.glob("ray-*.whl"):
            trim_wheel(wheel)
        folders.append(ray)
    for folder in folders:
        size = sum(p.stat().st_size for p in folder.glob("*.whl"))
        print(f"{folder.name}: {len(list(folder.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")
        if size > 64 * 2**20:
            print(f"  over one call's 64 MiB: carry {folder.name} alone")


if __name__ == "__main__":
    main()
