"""The job report: what ran where and when, as Markdown with pictures, in the job folder.

    report.md     summary table (windows, attempts, retries, wall time, frames/s) + pictures
    plan.png      the plan's timeline over the audio waveform (farm.plan.draw_plan)
    gantt.png     one row per replica, one bar per window attempt (green done, red failed,
                  orange lost with its actor), window index on the bar
    timeline.json every attempt: window, replica, start/end seconds from the job start, outcome

Written to a local scratch folder and copied into the store (so remote stores get it too).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from .plan import Plan, draw_plan, save_png
from .schedule import Attempt

__all__ = ["draw_gantt", "write_report"]

_OUTCOME = {"done": (80, 170, 90), "failed": (210, 60, 50), "lost": (240, 150, 40), "running": (150, 150, 150)}


def draw_gantt(attempts: Sequence[Attempt], replicas: int, path_png: str | os.PathLike, *,
               width: int = 1200) -> str:
    """Per-replica Gantt chart of the window attempts (seconds since the job started)."""
    from PIL import Image, ImageDraw

    row, top, left = 22, 24, 70
    height = top + row * max(replicas, 1) + 30
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    end = max([a.end or a.start for a in attempts] + [1e-9])

    def x(t: float) -> int:
        return int(left + (width - left - 10) * t / end)

    d.text((left, 4), f"replicas x time: {len(attempts)} attempts, {end:.1f} s", fill=(0, 0, 0))
    for r in range(replicas):
        y = top + r * row
        d.text((4, y + 4), f"replica {r}", fill=(0, 0, 0))
        d.line([(left, y + row - 1), (width - 10, y + row - 1)], fill=(230, 230, 230))
    for a in attempts:
        y = top + a.replica * row
        d.rectangle([x(a.start), y + 2, max(x(a.end or end) - 1, x(a.start) + 1), y + row - 4],
                    fill=_OUTCOME.get(a.outcome, (150, 150, 150)), outline=(255, 255, 255))
        d.text((x(a.start) + 3, y + 5), str(a.window), fill=(0, 0, 0))
    lx = left
    for k, c in _OUTCOME.items():
        d.rectangle([lx, height - 16, lx + 10, height - 6], fill=c)
        d.text((lx + 14, height - 18), k, fill=(0, 0, 0))
        lx += 90
    return save_png(img, path_png)


def write_report(store, plan: Plan, attempts: Sequence[Attempt], *, replicas: int, wall_s: float,
                 wave_16k: np.ndarray | None, backend: str, ranks: int = 1, gpu: bool = False,
                 already_done: int = 0, error: str | None = None, summary: dict | None = None) -> str:
    """Write report.md, plan.png, gantt.png and timeline.json into ``store``; returns the
    report's path on the store."""
    done = [a for a in attempts if a.outcome == "done"]
    frames = sum(plan.windows[a.window].frames for a in done)
    busy = sum((a.end or wall_s) - a.start for a in attempts)
    lines = [
        "# infinitetalk-dist job report", "",
        f"- store: `{store.url}`",
        f"- backend: {backend}, {replicas} replica(s) x {ranks} rank(s) on {'GPU' if gpu else 'CPU'}",
        f"- plan: {len(plan.windows)} windows, {plan.frames} frames ({plan.frames / plan.fps:.1f} s)",
        f"- this run: {len(done)} windows rendered ({already_done} were already in the store), "
        f"{len(attempts) - len(done)} failed or lost attempts, {wall_s:.1f} s wall, "
        f"{frames / max(wall_s, 1e-9):.2f} frames/s",
        f"- replica busy share: {busy / max(wall_s * replicas, 1e-9):.0%}",
    ]
    if summary and summary.get("windows"):
        lines.append(f"- first window done after {summary['first_window_done_s']:.1f} s (placement "
                     f"{summary['placement_s']:.1f} s, setup {max(s['load_s'] for s in summary['setups']):.1f} s); "
                     f"{summary['window_median_s']:.1f} s per window (median); DiT + VAE busy "
                     f"{summary['gpu_busy_share']:.0%} of the wall time")
    if error:
        lines.append(f"- **failed**: {error}")
    lines += ["", "## Plan", "", "![plan](plan.png)", "", "## Replicas", "", "![gantt](gantt.png)", "",
              "| window | replica | start s | end s | outcome | cause |", "|---:|---:|---:|---:|---|---|"]
    for a in sorted(attempts, key=lambda a: (a.start, a.replica)):
        end = f"{a.end:.1f}" if a.end is not None else ""
        lines.append(f"| {a.window} | {a.replica} | {a.start:.1f} | {end} | {a.outcome} | {a.cause[:120]} |")
    scratch = tempfile.mkdtemp(prefix="itd-report-")
    try:
        draw_plan(plan, wave_16k, os.path.join(scratch, "plan.png"))
        draw_gantt(attempts, replicas, os.path.join(scratch, "gantt.png"))
        with open(os.path.join(scratch, "timeline.json"), "w") as f:
            json.dump([a.__dict__ for a in attempts], f, indent=1)
        with open(os.path.join(scratch, "report.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        for name in ("plan.png", "gantt.png", "timeline.json"):
            store.put_file(name, os.path.join(scratch, name))
        return store.put_file("report.md", os.path.join(scratch, "report.md"))
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
