"""The Python packages the GPU image lacks, packed into one file that travels in one call.

    python benchmarks/carry_wheels.py            # -> .carry/site.tar.xz (~49 MB, Ray included)
    python benchmarks/carry_wheels.py --no-ray   # without Ray (~26 MB: leaves room for other files)

The GPU image (torch 2.11, Python 3.12) has no PyAV, Hydra/OmegaConf, pyloudnorm, ftfy,
silero-vad, PySceneDetect or Ray; their wheels are 130 MB together, Ray's alone 79 MB, over one
call's 64 MiB. Here they are downloaded for cp312/manylinux, unpacked into one ``site`` tree
without what the product never loads — Ray's Java jars, dashboard web client, RLlib and Ray
Data/Serve/Train/Tune/LLM, silero-vad's ONNX models (it loads the TorchScript one), bytecode
caches — and packed with ``xz -9`` (binaries compress ~1.6x better than in a wheel's deflate).
On the device, before the command (the folder must be listed in ``.git/info/exclude``):

    run(carry=[".carry"]):  mkdir -p /tmp/site && tar -xJf .carry/site.tar.xz -C /tmp/site &&
                            export PYTHONPATH=$PWD:/tmp/site

(``$PWD`` too: Ray's worker processes import ``infinitetalk_dist`` from the checkout.)
antlr4-python3-runtime 4.9.3 (OmegaConf's parser) has no wheel on the index: it is built here
from its sdist (pure Python).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
            "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
BASE = ["av==18.0.0", "hydra-core==1.3.8", "omegaconf==2.3.1", "pyloudnorm==0.2.0", "ftfy==6.3.1", "wcwidth",
        "silero-vad==6.2.3", "scenedetect==0.7.2", "platformdirs"]
RAY = ["ray==2.60.0", "jsonschema==4.26.0", "referencing", "jsonschema-specifications", "rpds-py"]
# What the product never imports: Ray beyond core/placement groups/actors, unused model files.
DROP = ("ray/jars/", "ray/dashboard/client/", "ray/rllib/", "ray/data/", "ray/serve/", "ray/train/",
        "ray/tune/", "ray/llm/")
DROP_SUFFIX = (".onnx", ".pyc")


def download(names: list[str], folder: Path, python: str = sys.executable) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *PLATFORM,
                    "-d", str(folder), *names], check=True)


def unpack(wheel: Path, site: Path) -> int:
    """Unpack ``wheel`` into ``site`` (a wheel's purelib/platlib layout is the installed one)
    without the members under :data:`DROP` or ending in :data:`DROP_SUFFIX`; returns the
    members kept."""
    kept = 0
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if name.startswith(DROP) or name.endswith(DROP_SUFFIX) or ".data/scripts/" in name:
                continue
            z.extract(info, site)
            if info.external_attr >> 16 & 0o111:  # raylet, gcs_server: keep them executable
                (site / name).chmod(0o755)
            kept += 1
    return kept


def pack(wheels: list[Path], out: Path) -> Path:
    """Every wheel unpacked into one tree, written as ``out`` (tar, xz -9, atomically)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="itd-site-") as tmp:
        site = Path(tmp) / "site"
        for wheel in wheels:
            unpack(wheel, site)
        part = out.with_suffix(".part")
        with open(part, "wb") as f:
            tar = subprocess.Popen(["tar", "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-9", "-T0"], stdin=tar.stdout, stdout=f, check=True)
            if tar.wait():
                raise RuntimeError("tar failed")
        part.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-ray", action="store_true", help="leave Ray out (generate runs need no Ray)")
    ap.add_argument("--out", type=Path, default=REPO / ".carry" / "site.tar.xz")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="itd-wheels-") as tmp:
        folder = Path(tmp)
        download(BASE + ([] if args.no_ray else RAY), folder)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder),
                        "antlr4-python3-runtime==4.9.3"], check=True)
        wheels = sorted(folder.glob("*.whl"))
        out = pack(wheels, args.out)
    size = out.stat().st_size
    print(f"{out}: {len(wheels)} wheels, {size / 2**20:.1f} MiB")
    if size > 60 * 2**20:
        print("  close to one call's 64 MiB: carry it alone")


if __name__ == "__main__":
    main()
