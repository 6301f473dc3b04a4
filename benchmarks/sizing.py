"""Sizing guide: GPU-hours per minute of output and GPUs for a film in a target wall time.

Three rows are measured end to end through the CLI; the 40-step 720p row is projected (marked
so in the table) from the per-forward benchmarks of `benchmarks/RESULTS.md`:

    measured, H200 through `generate` (e2e.py), compile auto (the DiT blocks; the VAE eager),
    cuDNN attention (the fa3-fwd wheel was not carried):
      4-step 480p   case (a), 20 s I2V, LightX2V + LoRA, 7 chunks: DiT 6.49 s a step
      40-step 480p  case (b), V2V, one chunk: DiT 9.73 s a step (3 guidance branches)
      4-step 720p   case (c), one chunk (2026-12-04): DiT 23.30 s a step, mux 2.27 s per 3.2 s
      VAE and mux   case (a) on the eager VAE: 22.1 s over 7 chunks, mux 10.3 s per 20 s; at
                    720p the 7-chunk VAE figure is scaled by the one-chunk 720p / 480p ratio of
                    the same run (cases c and d: 3.93 + 6.20 s against 1.78 + 2.74 s)
    The farm on the same card (farm_gpu.py, 40 s in 4 windows, compile=false) ran 8.0 s a step
    and wrote 1000 frames in 598 s of window time: the uncompiled path costs ~20% more.

    projected, H100 80GB (same GH100 compute as the H200: 3.17 vs 3.12 s per compiled forward):
    DiT s/forward, 1 GPU        448x896: 3.170   704x1280: 11.558   (table of record, issue 6)
    VAE + CLIP s/chunk, TF32    448x896: 5.27 first chunk of a window, 3.35 later (I2V reuse)
                                704x1280: x2.22 (the fp32 720p/480p VAE ratio, 37.375 / 16.861)
    replica efficiency          Ulysses 89% at 2 GPUs, 86% at 4 (480p), 92% at 4 (720p) (issue 4;
                                the 4-GPU columns are projections for every row)

A chunk is 81 frames, 72 of them new (9 motion frames): 2.88 s of output. The 40-step default
runs 3 guidance branches (120 batched forwards per chunk), the 4-step LightX2V preset 2
branches (8). Farm overhead: windows of 60 s with a 1 s overlap (+1.7% frames) and one full
reference encode per window; the scheduler's makespan is within 2.4% of the bound
(`farm_schedule.py`), taken as 3%. Loading a replica (85-96 s, measured) is paid once per job.

    python benchmarks/sizing.py [--film-min 90 --wall-h 4 8 24]
"""

from __future__ import annotations

import argparse
import math

DIT_S = {"480p": 3.170, "720p": 11.558}
VAE_S = {"480p": (5.27, 3.35), "720p": (5.27 * 37.375 / 16.861, 3.35 * 37.375 / 16.861)}
REPLICA_EFF = {("480p", 1): 1.0, ("480p", 2): 0.89, ("480p", 4): 0.86, ("720p", 1): 1.0, ("720p", 4): 0.92}
PRESETS = {"40-step": 40 * 3, "4-step": 4 * 2}  # batched forwards (branches x steps) per chunk
CHUNK_OUT_S, WINDOW_S, OVERLAP_S, SCHED = 72 / 25, 60.0, 1.0, 1.03
# (preset, size) -> (DiT s per chunk, VAE s per chunk, mux s per output s), measured through the CLI
VAE_EAGER, MUX = 22.1 / 7, 10.3 / 20
VAE_720P = VAE_EAGER * (3.933 + 6.195) / (1.775 + 2.742)
MEASURED = {("4-step", "480p"): (4 * 6.49, VAE_EAGER, MUX), ("40-step", "480p"): (40 * 9.73, VAE_EAGER, MUX),
            ("4-step", "720p"): (4 * 23.30, VAE_720P, 2.273 / 3.2)}


def window_seconds(size: str, preset: str) -> float:
    """One 60 s window (+ overlap) on a 1-GPU replica."""
    chunks = math.ceil((WINDOW_S + OVERLAP_S) / CHUNK_OUT_S)
    if (preset, size) in MEASURED:
        dit, vae, mux = MEASURED[(preset, size)]
        return chunks * (dit + vae) + mux * WINDOW_S
    first, later = VAE_S[size]
    return chunks * PRESETS[preset] * DIT_S[size] + first + (chunks - 1) * later


def gpu_hours_per_output_minute(size: str, preset: str) -> float:
    return window_seconds(size, preset) / WINDOW_S * 60 / 3600 * SCHED


def table(film_min: float, walls: list[float]) -> str:
    lines = ["| preset | size | basis | one 60 s window, 1 GPU / 4-GPU replica | GPU-s per output s "
             "| GPU-h per output minute | " + " | ".join(
                 f"GPUs for a {film_min:g}-min film in {w:g} h (1-GPU / 4-GPU replicas)" for w in walls) + " |",
             "|---|---|---|---:|---:|---:|" + "---:|" * len(walls)]
    for preset in PRESETS:
        for size in DIT_S:
            g = gpu_hours_per_output_minute(size, preset)
            cells = []
            for w in walls:
                one = math.ceil(g * film_min / w)
                four = 4 * math.ceil(g * film_min / w / REPLICA_EFF[(size, 4)] / 4)
                cells.append(f"{one} / {four}")
            w1 = window_seconds(size, preset) / 3600
            w4 = w1 / 4 / REPLICA_EFF[(size, 4)]
            basis = "**measured** per chunk (H200, CLI)" if (preset, size) in MEASURED else "projected (H100 benchmarks)"
            lines.append(f"| {preset} | {size} | {basis} | {w1:.2f} h / {w4:.2f} h | {g * 60:.1f} | {g:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--film-min", type=float, default=90)
    ap.add_argument("--wall-h", type=float, nargs="+", default=[4, 8, 24])
    a = ap.parse_args()
    print(table(a.film_min, a.wall_h))


if __name__ == "__main__":
    main()
