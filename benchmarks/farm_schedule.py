"""Farm scheduling at scale, simulated: 200 windows of mixed lengths on 16 replicas.

Each window's cost is its chunk count x the measured seconds of one chunk on one H100
(`benchmarks/RESULTS.md`: 547 s for the 40-step preset, 38.7 s for 4-step, 480p), so the
figures are in hours of a real 480p job; the schedule itself is the farm's own code
(``farm.schedule.simulate``: longest first onto the earliest free replica). Printed next to the
lower bound max(longest window, total / replicas) that no schedule can beat.

    python benchmarks/farm_schedule.py [--windows 200 --replicas 16 --seeds 5]
"""

from __future__ import annotations

import argparse
import random

from infinitetalk_dist.farm.plan import FPS, chunks_for
from infinitetalk_dist.farm.schedule import lower_bound, simulate

CHUNK_S = {"40-step": 547.0, "4-step": 38.7}  # one 81-frame chunk, 1 x H100, 480p (RESULTS.md)

MIXES = {  # window length distributions in seconds
    "shots (lognormal, 2-120 s)": lambda r: min(120.0, max(2.0, r.lognormvariate(2.8, 0.8))),
    "uniform 10-60 s": lambda r: r.uniform(10, 60),
    "mostly 30 s, a few 120 s": lambda r: 120.0 if r.random() < 0.05 else r.uniform(25, 35),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--preset", choices=sorted(CHUNK_S), default="40-step")
    a = ap.parse_args()
    print(f"{a.windows} windows on {a.replicas} replicas, {a.preset} preset ({CHUNK_S[a.preset]:.0f} s per chunk)")
    print(f"{'window lengths':<28} {'seed':>4} {'film min':>9} {'makespan h':>11} {'bound h':>8} {'ratio':>6}")
    worst = 0.0
    for name, draw in MIXES.items():
        for seed in range(a.seeds):
            r = random.Random(seed)
            lengths = [draw(r) for _ in range(a.windows)]
            costs = [chunks_for(round(s * FPS)) * CHUNK_S[a.preset] for s in lengths]
            makespan, _ = simulate(costs, a.replicas)
            bound = lower_bound(costs, a.replicas)
            worst = max(worst, makespan / bound)
            print(f"{name:<28} {seed:>4} {sum(lengths) / 60:>9.1f} {makespan / 3600:>11.2f} {bound / 3600:>8.2f} "
                  f"{makespan / bound:>6.3f}")
    print(f"worst makespan / lower bound: {worst:.3f}")


if __name__ == "__main__":
    main()
