"""Where one render's time goes (``timings=true``): stage times, peak memory, GPU-s per output s.

Every timed call is bracketed by CUDA synchronisations, so a stage's time is its own (the
price: the CPU no longer runs ahead of the GPU between stages, a few milliseconds per call).
torch.compile compiles on a block's first call, so the warm-up is estimated as the first DiT
call's time less the median of the others.
"""

from __future__ import annotations

import json
import logging
import resource
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from infinitetalk_dist.media.atomic import atomic_write

__all__ = ["StageTimer", "maybe_stage"]

log = logging.getLogger(__name__)


def maybe_stage(timer: StageTimer | None, name: str):
    """``timer.stage(name)``, or nothing when there is no timer."""
    return timer.stage(name) if timer is not None else nullcontext()


class StageTimer:
    """Seconds per named stage of one render on ``device``."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.t0 = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str):
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            dt = time.perf_counter() - t
            self.seconds[name] += dt
            self.calls[name].append(dt)

    def wrap(self, name: str, fn):
        """``fn`` timed as ``name`` (None stays None)."""
        if fn is None:
            return None

        def timed(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)

        return timed

    def report(self, *, frames: int, fps: float, gpus: int, **facts) -> dict:
        """The figures of the render (``facts``: what was rendered, e.g. size, chunks, steps)."""
        wall = time.perf_counter() - self.t0
        dit = self.calls.get("dit", [])
        warmup = max(0.0, dit[0] - statistics.median(dit[1:])) if len(dit) > 1 else 0.0
        out_s = frames / fps
        stages = {k: round(v, 3) for k, v in self.seconds.items()}
        stages["other"] = round(wall - sum(self.seconds.values()), 3)
        cuda = self.device.type == "cuda"
        return {
            **facts, "card": torch.cuda.get_device_name(self.device) if cuda else "cpu", "frames": frames,
            "output_s": round(out_s, 3), "wall_s": round(wall, 3), "stages": stages,
            "dit_calls": len(dit), "dit_call_median_s": round(statistics.median(dit), 4) if dit else None,
            "compile_warmup_s": round(warmup, 3),
            "gpu_peak_gib": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2) if cuda else None,
            "host_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "gpu_s_per_output_s": round(wall * gpus / out_s, 2),
            "render_gpu_s_per_output_s": round((wall - self.seconds.get("load", 0.0)) * gpus / out_s, 2),
        }

    def write(self, path: str | Path, report: dict) -> Path:
        """``report`` as JSON at ``path`` (atomically) and as one log line per stage."""
        path = Path(path)
        with atomic_write(path) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
        for name, sec in sorted(report["stages"].items(), key=lambda kv: -kv[1]):
            log.info("  %-12s %8.2f s", name, sec)
        log.info("timings: %s (%.2f GPU-s per output s; peak GPU %s GiB, host %s GiB)", path,
                 report["gpu_s_per_output_s"], report["gpu_peak_gib"], report["host_peak_gib"])
        return path
