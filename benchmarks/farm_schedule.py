"""Farm scheduling at scale, simulated: 200 windows of mixed lengths on 16 replicas.

Each window's cost is its chunk count x the measured seconds of one chunk on one H100
(`benchmarks/RESULTS.md`: 547 s for the 40-step preset, 38.7 s for 4-step, 480p), so the
figures are in hours of a real 480p job; the schedule itself is the farm's own code
(``farm.schedule.simulate``: longest first onto the earliest free replica). Printed next to the
lower bound max(longest window, total / replicas) that no schedule can beat.

    python benchmarks/farm_schedule.py [--windows 200 --replicas 16 --seeds 5]
    python benchmarks/farm_schedule.py --layouts      # one host, replicas of 1/2/4 GPUs (issue 8 projection)

``--layouts`` plans a real job (``farm.plan.make_plan``: a 2-minute track, forced cuts, the
plan's own target length for R replicas) and schedules it on R replicas of G GPUs of one host,
a window costing chunks x (forwards x DiT seconds / (G x Ulysses efficiency) + VAE seconds):
the projected wall time, the GPUs' busy share, and a 90-minute film's time at that rate.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from infinitetalk_dist.farm.plan import make_plan
from infinitetalk_dist.farm.schedule import lower_bound, simulate
from infinitetalk_dist.timeline import FPS, num_chunks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sizing import DIT_S, PRESETS, REPLICA_EFF, SCHED, VAE_S  # noqa: E402  (the measured figures)

CHUNK_S = {"40-step": 547.0, "4-step": 38.7}  # one 81-frame chunk, 1 x H100, 480p (RESULTS.md)

MIXES = {  # window length distributions in seconds
    "shots (lognormal, 2-120 s)": lambda r: min(120.0, max(2.0, r.lognormvariate(2.8, 0.8))),
    "uniform 10-60 s": lambda r: r.uniform(10, 60),
    "mostly 30 s, a few 120 s": lambda r: 120.0 if r.random() < 0.05 else r.uniform(25, 35),
}


def layouts(preset: str, job_s: float = 120.0, gpus=(4, 8)) -> None:
    """Window costs from the sizing guide's measured one-H100 figures (compiled bf16 DiT, TF32
    VAE with the I2V reference-encode reuse, Ulysses efficiency per replica size)."""
    vae_first, vae_later = VAE_S["480p"]
    print(f"{preset}, 448x896, a {job_s:g} s job on one host (projection from measured 1-GPU figures)")
    print("| host GPUs | replicas x GPUs | windows | wall s | GPU busy share | 90-min film h |")
    print("|---:|---|---:|---:|---:|---:|")
    for total in gpus:
        for g in (1, 2, 4):
            if g > total or ("480p", g) not in REPLICA_EFF:
                continue
            r = total // g
            plan = make_plan(round(job_s * FPS), replicas=r, min_s=5.0, steps=4)
            chunk = PRESETS[preset] * DIT_S["480p"] / (g * REPLICA_EFF[("480p", g)])
            costs = [num_chunks(w.frames, 81, 9) * chunk + vae_first + (num_chunks(w.frames, 81, 9) - 1) * vae_later
                     for w in plan.windows]
            makespan, _ = simulate(costs, r)
            busy = sum(costs) / (r * makespan)
            print(f"| {total} | {r} x {g} | {len(plan.windows)} | {makespan:.0f} | {busy:.0%} | "
                  f"{sum(costs) * 90 * 60 / job_s / r / 3600 * SCHED:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--preset", choices=sorted(CHUNK_S), default="40-step")
    ap.add_argument("--layouts", action="store_true", help="one host: replicas of 1/2/4 GPUs on a 2-minute job")
    a = ap.parse_args()
    if a.layouts:
        layouts("4-step")
        return
    print(f"{a.windows} windows on {a.replicas} replicas, {a.preset} preset ({CHUNK_S[a.preset]:.0f} s per chunk)")
    print(f"{'window lengths':<28} {'seed':>4} {'film min':>9} {'makespan h':>11} {'bound h':>8} {'ratio':>6}")
    worst = 0.0
    for name, draw in MIXES.items():
        for seed in range(a.seeds):
            r = random.Random(seed)
            lengths = [draw(r) for _ in range(a.windows)]
            costs = [num_chunks(round(s * FPS), 81, 9) * CHUNK_S[a.preset] for s in lengths]
            makespan, _ = simulate(costs, a.replicas)
            bound = lower_bound(costs, a.replicas)
            worst = max(worst, makespan / bound)
            print(f"{name:<28} {seed:>4} {sum(lengths) / 60:>9.1f} {makespan / 3600:>11.2f} {bound / 3600:>8.2f} "
                  f"{makespan / bound:>6.3f}")
    print(f"worst makespan / lower bound: {worst:.3f}")


if __name__ == "__main__":
    main()
