"""Peak GPU memory and seconds per chunk of `generate` for each memory setting, under emulated card sizes.

Each row is one `infinitetalk-dist generate` process (a 4-step lightx2v chunk of one 480p or
720p window, `timings=true compile=false`) started through this script with
``torch.cuda.set_per_process_memory_fraction`` capping it at ``--caps`` GB (0: the whole card):
an allocation past the cap fails as on a card that size. Settings:

    resident     every model on the GPU (encoders=gpu)
    encoders     T5, CLIP, wav2vec2 in host memory between calls (encoders=offload, the default)
    offload N    + DiT blocks past the first N streamed from host memory (offload.dit_resident_blocks=N)
    int8 / fp8   the official quantised DiT (--quant), + offload N as int8-offloadN

The bf16 rows run first; then the bf16 DiT shards are deleted and the quantised files written
into the same folder (the 64 GB disk of the GPU machine holds one or the other).

    python benchmarks/make_weights.py /tmp/itd-weights --lora-rank 0
    python benchmarks/memory.py --weights /tmp/itd-weights --sizes 480,720 --caps 0,48,24 \\
        --settings resident,encoders,offload20,offload0,int8,int8-offload0,fp8
    python benchmarks/memory.py --weights /tmp/itd-weights --rows 480:resident:0,720:int8-offload0:24

Each row's full stage report stays beside its video (``<out>/<size>-<setting>-<cap>.mp4.timings.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def child(cap_gb: float, argv: list[str]) -> int:
    """Run the CLI in this process under a memory cap."""
    import torch

    from infinitetalk_dist.launch.cli import main as cli

    if cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 2**30 / total))
    return cli(argv)


def setting_args(name: str) -> list[str]:
    if name == "resident":
        return ["encoders=gpu"]
    if name == "encoders":
        return []
    quant, _, rest = name.partition("-") if name.startswith(("int8", "fp8")) else ("", "", name)
    out = ["--quant", quant] if quant else []
    if rest.startswith("offload"):
        out.append(f"offload.dit_resident_blocks={int(rest[len('offload'):])}")
    return out


def run_row(weights: str, size: str, name: str, cap: float, files: dict, out: Path) -> dict:
    mp4 = out / f"{size}-{name}-{cap:g}.mp4"
    argv = ["generate", "--weights", weights, "--device", "cuda", "--dtype", "bfloat16", "--image", files["face"],
            "--audio", files["speech3"], "--sampler", "lightx2v", "--size", size, "--no-progress", "timings=true",
            "compile=false", "-o", str(mp4), *setting_args(name)]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", str(cap), "--", *argv], cwd=REPO,
                          capture_output=True, text=True)
    row = {"size": size, "setting": name, "cap_gb": cap, "wall_s": round(time.perf_counter() - t0, 1)}
    Path(f"{mp4}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        tail = (done.stderr or done.stdout)[-400:]
        row["status"] = "OOM" if "out of memory" in tail.lower() else f"failed: {tail.strip().splitlines()[-1][:120]}"
        return row
    rep = json.loads(Path(f"{mp4}.timings.json").read_text())
    st = rep["stages"]
    row.update(status="ok", peak_gib=rep.get("gpu_peak_gib"), host_gib=rep.get("host_peak_gib"),
               load_s=round(st.get("load", 0), 1), dit_s=round(st.get("dit", 0), 1),
               vae_s=round(st.get("vae_encode", 0) + st.get("vae_decode", 0), 1))
    return row


def quantise_in_place(weights: Path, kinds: list[str]) -> None:
    """Drop the bf16 DiT, write the official quantised files (random values) in its place."""
    import torch

    from make_weights import write_quant

    from infinitetalk_dist.models import weights as W
    from infinitetalk_dist.models.presets import PRESETS
    from infinitetalk_dist.models.random_init import seeded

    wan = weights / W.WAN_DIR
    for f in wan.glob("diffusion_pytorch_model*"):
        f.unlink()
    shutil.rmtree(weights / "InfiniteTalk" / "single", ignore_errors=True)
    shutil.rmtree(weights / "InfiniteTalk" / "multi", ignore_errors=True)
    g = seeded(1, "cuda" if torch.cuda.is_available() else "cpu")
    for kind in kinds:
        write_quant(weights, PRESETS["14b"]().dit, g, kind)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(float(sys.argv[2]), sys.argv[4:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, type=Path)
    ap.add_argument("--sizes", default="480,720")
    ap.add_argument("--caps", default="0", help="GB caps, 0: the whole card")
    ap.add_argument("--settings", default="resident,encoders,offload20,offload0,int8,int8-offload0,fp8")
    ap.add_argument("--rows", default="", help="size:setting:cap triples instead of the full grid, e.g. "
                    "480:resident:0,720:int8-offload0:24")
    ap.add_argument("--out", type=Path, default=Path("/tmp/itd-memory"))
    args = ap.parse_args()
    from e2e import write_inputs

    args.out.mkdir(parents=True, exist_ok=True)
    files = write_inputs(args.out / "inputs")
    if args.rows:
        grid = [(size, name, float(cap)) for size, name, cap in (r.split(":") for r in args.rows.split(","))]
    else:
        grid = [(size, name, float(cap)) for size in args.sizes.split(",") for name in args.settings.split(",")
                for cap in args.caps.split(",")]
    # The bf16 rows first: the quantised files replace the bf16 DiT on the machine's disk.
    grid.sort(key=lambda r: r[1].startswith(("int8", "fp8")))
    quant = sorted({name.split("-")[0] for _, name, _ in grid if name.startswith(("int8", "fp8"))})
    rows = []
    for size, name, cap in grid:
        if quant and name.startswith(("int8", "fp8")):
            quantise_in_place(args.weights, quant)
            quant = []
        rows.append(run_row(str(args.weights), size, name, cap, files, args.out))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / "memory.json").write_text(json.dumps(rows, indent=1))
    print("\n| size | setting | cap GB | status | peak GPU GiB | DiT s (4 steps) | VAE s | load s | wall s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']}p | {r['setting']} | {r['cap_gb']:g} | {r['status']} | {r.get('peak_gib', '')} "
              f"| {r.get('dit_s', '')} | {r.get('vae_s', '')} | {r.get('load_s', '')} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
