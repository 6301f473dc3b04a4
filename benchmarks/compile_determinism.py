"""Are compiled DiT blocks bit-reproducible across processes, and what does Inductor's
deterministic mode cost? (A window re-rendered after a killed actor must give the same bytes.)

Each run is a fresh process (Inductor's kernel-config timing happens once per process) sharing
one fresh Inductor cache, as a rebuilt replica or a later ``farm=local`` run does. Every process
builds the same seeded DiT (the 14B widths, ``--layers`` blocks), applies its variant, times one
forward (one branch, ``--frames`` frames at ``--size``; median of ``--repeats`` after a warm-up
call that includes compilation) and hashes the output's bytes:

    eager     no compile
    compile   torch.compile of every block, Inductor's defaults (times some kernel configs)
    det       torch.compile with ``INDUCTOR_OPTIONS`` (deterministic mode: no timing), the product's

Prints per variant the distinct output hashes over its processes (1 = reproducible), seconds
per forward and the relative L2 against eager.

    python benchmarks/compile_determinism.py --layers 8 --runs 3 --json det.json
    python benchmarks/compile_determinism.py --device cpu --preset tiny --size 64x64 --frames 9 --runs 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_forward import rel_l2  # noqa: E402
from dit_parallel import Timer, make_branches  # noqa: E402

from infinitetalk_dist.models.dit import dit_14b, dit_tiny  # noqa: E402
from infinitetalk_dist.models.random_init import seeded  # noqa: E402
from infinitetalk_dist.parallel import INDUCTOR_OPTIONS, ParallelState, compile_blocks, random_sharded_dit  # noqa: E402

VARIANTS = {"eager": None, "compile": {}, "det": INDUCTOR_OPTIONS}


def child(args) -> None:
    """One process: build, apply ``args.child``, time, hash; the output goes to ``args.save``."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = replace(dit_14b() if args.preset == "14b" else dit_tiny(), num_layers=args.layers)
    model = random_sharded_dit(cfg, ParallelState.single(device), seeded(0, device), dtype=dtype, device=device,
                               fsdp=False)
    options = VARIANTS[args.child]
    if options is not None:
        compile_blocks(model, options=options)
    h, w = (int(v) for v in args.size.split("x"))
    x = make_branches(cfg, h, w, args.frames, 1, device, dtype)["cond"]
    x.pop("ref_target_masks")
    out = {}

    def call():  # keeps the last output: hashed below without another forward
        out["y"] = model(**x)

    with torch.inference_mode():
        timer = Timer(device)
        warm = timer(call, 0, 1)[0]
        seconds = statistics.median(timer(call, 0, args.repeats))
    y = out["y"].float().cpu()
    torch.save(y, args.save)
    print(json.dumps(dict(sha=hashlib.sha256(y.numpy().tobytes()).hexdigest(), seconds=seconds, warmup_s=warm)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=["14b", "tiny"], default="14b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=8, help="DiT blocks (the 14B model has 40; all share one graph)")
    ap.add_argument("--size", default="448x896", help="HxW of the video")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--runs", type=int, default=3, help="processes per compiled variant")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="eager,compile,det")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="itd-det-") as tmp:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "TRITON_CACHE_DIR": f"{tmp}/triton"}
        base = [sys.executable, __file__, "--preset", args.preset, "--device", args.device, "--layers",
                str(args.layers), "--size", args.size, "--frames", str(args.frames), "--repeats", str(args.repeats)]
        ref = None
        for variant in args.variants.split(","):
            runs = []
            for i in range(1 if variant == "eager" else args.runs):
                save = f"{tmp}/{variant}{i}.pt"
                p = subprocess.run([*base, "--child", variant, "--save", save], env=env, capture_output=True, text=True)
                if p.returncode:
                    sys.exit(f"{variant} run {i} failed:\n{p.stderr[-3000:]}")
                r = json.loads(p.stdout.strip().splitlines()[-1])
                y = torch.load(save)
                ref = y if ref is None else ref
                r["rel_l2_vs_first"] = rel_l2(y, ref)
                runs.append(r)
                print(f"{variant:<8} run {i}: {r['seconds']:.4f} s (first call {r['warmup_s']:.1f} s) "
                      f"sha {r['sha'][:12]} rel L2 vs first {r['rel_l2_vs_first']:.2e}", flush=True)
            results[variant] = runs
            rows.append((variant, len(runs), len({r["sha"] for r in runs}), statistics.median(r["seconds"] for r in runs),
                         max(r["warmup_s"] for r in runs), max(r["rel_l2_vs_first"] for r in runs)))
            if args.json:
                Path(args.json).write_text(json.dumps(dict(card=card, args=vars(args), results=results), indent=1))
    print(f"\ncard {card}, {args.layers} blocks at the {args.preset} widths, {args.frames} frames at {args.size}, "
          "one branch")
    print("| variant | processes | distinct outputs | s/forward (median) | first call s (max) | rel L2 vs first variant (max) |")
    print("|---|---:|---:|---:|---:|---:|")
    for v, n, d, s, w, e in rows:
        print(f"| {v} | {n} | **{d}** | {s:.4f} | {w:.1f} | {e:.1e} |")


if __name__ == "__main__":
    main()
