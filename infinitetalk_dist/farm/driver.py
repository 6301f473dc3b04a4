"""The driver's bookkeeping of one run of a job, the same for every backend.

A backend (``farm/local.py``, ``farm/ray_farm.py``) only moves windows to workers and results
back; :class:`JobRun` owns the rest: the queue (longest first, bounded attempts), the record
of every attempt (the report's Gantt chart), the Prometheus metrics, the progress bar, the
manifest updates (the driver is the store's only manifest writer) and, at the end, the job
report and ``metrics.prom``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .metrics import FarmMetrics
from .render import window_tracks
from .schedule import Attempt, WindowFailed, WindowQueue

__all__ = ["JobRun"]

log = logging.getLogger(__name__)


class JobRun:
    """One run of a prepared job (:class:`~.job.Job`) on ``replicas`` replicas; a context
    manager: on exit the progress bar closes and the report and metrics are written, also when
    the run failed."""

    def __init__(self, job, *, backend: str, replicas: int, ranks: int = 1, gpu: bool = False):
        self.job, self.backend, self.replicas, self.ranks, self.gpu = job, backend, replicas, ranks, gpu
        self.queue = WindowQueue(job.todo, max_attempts=job.farm.max_attempts)
        self.metrics = FarmMetrics(len(job.plan.windows), done=len(job.done), job=job.output.name)
        self.attempts: list[Attempt] = []
        self.setups: list[dict] = []  # each replica build that came up: when, and its load time
        self.windows: list[dict] = []  # each finished window: where, how long, its stage times
        self.placement_s = 0.0
        self.t0 = time.perf_counter()
        self.bar = None
        self._steps_seen: dict[int, tuple[int, int]] = {}  # replica -> (window, steps reported)
        self._done_windows: set[int] = set()

    def __enter__(self) -> JobRun:
        farm = self.job.farm
        if farm.metrics_port is not None:
            port = self.metrics.serve(int(farm.metrics_port), farm.metrics_addr)
            log.info("metrics: http://%s:%d/metrics", farm.metrics_addr, port)
        if self.job.request.progress:
            from tqdm import tqdm

            desc = "farm" if self.backend == "local" else f"farm ({self.replicas} replicas)"
            self.bar = tqdm(total=len(self.job.todo), unit="window", desc=desc, dynamic_ncols=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.bar is not None:
            self.bar.close()
        for a in self.attempts:  # an attempt interrupted by the failure
            if a.end is None:
                self._close(a, "failed", f"{exc_type.__name__}: {exc}" if exc_type else "interrupted")
        self.metrics.write(self.job.store)
        self._report(f"{exc_type.__name__}: {exc}" if exc_type else None)
        self.metrics.close()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def placed(self) -> None:
        """The backend has the resources for every replica (farm=ray: placement groups ready)."""
        self.placement_s = self.now()

    def replica_ready(self, replica: int, info: list[dict]) -> None:
        """A replica's ranks finished setup (``info``: what each rank's setup returned)."""
        load = max(i["load_s"] for i in info)
        self.setups.append({"replica": replica, "ready_at_s": round(self.now(), 3), "load_s": round(load, 3)})
        log.info("replica %d ready in %.1f s (%d rank(s), pids %s, %d CPU threads each)", replica, load, len(info),
                 [i["pid"] for i in info], min(i.get("threads", 1) for i in info))

    def take(self, replica: int):
        """The next window for ``replica``: ``(window, attempt, its audio tracks)``."""
        w = self.queue.take()
        a = Attempt(w.index, replica, self.now())
        self.attempts.append(a)
        self.metrics.started()
        log.info("window #%d (frames [%d, %d), attempt %d) -> replica %d", w.index, w.start, w.end,
                 self.queue.attempts[w.index], replica)
        return w, a, self.tracks(w)

    def report(self, replica: int, info: dict) -> None:
        """A replica's report after a sampling step (farm/progress.py): the step metrics and the
        progress bar move inside a window."""
        window, done = self._steps_seen.get(replica, (None, 0))
        new = info["done"] - done if window == info["window"] and info["done"] >= done else info["done"]
        self._steps_seen[replica] = (info["window"], info["done"])
        if info["window"] in self._done_windows:  # a report that came in after its window's result
            self.metrics.steps.inc(new)
            return
        self.metrics.stepped(replica, new, info["done"] / max(info["chunks"] * info["steps"], 1))
        if self.bar is not None:
            self.bar.set_postfix_str(f"replica {replica}: window #{info['window']} chunk {info['chunk'] + 1}/"
                                     f"{info['chunks']} step {info['step']}/{info['steps']}")

    def tracks(self, w) -> list[np.ndarray]:
        return window_tracks(self.job.sources.audio.tracks, w.start, w.end)

    def finished(self, w, a: Attempt, result: dict) -> None:
        """Record a window its worker uploaded (a store error fails the job at once)."""
        try:
            self.job.store.record_window(w.index, result["sha256"], result["size"])
        except Exception as e:
            self._close(a, "failed", str(e))
            raise
        self._close(a, "done")
        t = result.get("timings") or {}
        self.windows.append({"window": w.index, "replica": a.replica, "frames": result["frames"],
                             "seconds": round(result["seconds"], 3), "stages": t.get("stages", {}),
                             "compile_warmup_s": t.get("compile_warmup_s", 0.0), "gpu_peak_gib": t.get("gpu_peak_gib"),
                             "card": t.get("card")})
        self.metrics.finished(result["frames"], result["seconds"], result["step_seconds"], replica=a.replica,
                              gpu_peak_bytes=result["gpu_peak_bytes"])
        self._done_windows.add(w.index)
        log.info("window #%d done on replica %d in %.1f s", w.index, a.replica, result["seconds"])
        if self.bar is not None:
            self.bar.update(1)

    def failed(self, w, a: Attempt, cause: str, *, lost: bool = False) -> None:
        """A window's attempt failed (or lost its actor): back in the queue, or
        :class:`WindowFailed` once it has failed ``farm.max_attempts`` times."""
        self._close(a, "lost" if lost else "failed", cause)
        try:
            self.queue.failed(w, cause)
        except WindowFailed:
            self.metrics.failed()
            raise
        self.metrics.retried()

    def fatal(self, a: Attempt, cause: str) -> None:
        """An attempt that fails the job at once (a store error: retrying cannot help)."""
        self._close(a, "failed", cause)
        self.metrics.failed()

    def _close(self, a: Attempt, outcome: str, cause: str = "") -> None:
        a.end, a.outcome, a.cause = self.now(), outcome, cause

    def summary(self) -> dict:
        """Where the run's time went: placement, each replica's setup, the first finished window,
        every window's stages, and the GPU busy share (DiT + VAE seconds over wall x replicas)."""
        wall = self.now()
        done = [a.end for a in self.attempts if a.outcome == "done"]

        def total(*names: str) -> float:
            return round(sum(w["stages"].get(n, 0.0) for w in self.windows for n in names), 3)

        seconds = sorted(w["seconds"] for w in self.windows)
        gpu_busy = total("dit", "vae_encode", "vae_decode")
        return {
            "backend": self.backend, "replicas": self.replicas, "ranks": self.ranks, "gpu": self.gpu,
            "wall_s": round(wall, 3), "placement_s": round(self.placement_s, 3), "setups": self.setups,
            "first_window_done_s": round(min(done), 3) if done else None,
            "window_median_s": seconds[len(seconds) // 2] if seconds else None,
            "dit_s": total("dit"), "vae_s": total("vae_encode", "vae_decode"),
            "encoders_s": total("wav2vec2", "t5", "clip"),
            "gpu_busy_share": round(gpu_busy / max(wall * self.replicas, 1e-9), 3),
            "retries": sum(a.outcome != "done" for a in self.attempts),
            "windows": self.windows,
        }

    def _report(self, error: str | None) -> None:
        """Write the job report into the store (a failure to write it only warns)."""
        from .report import write_report

        job = self.job
        try:
            path = write_report(job.store, job.plan, self.attempts, replicas=self.replicas, wall_s=self.now(),
                                wave_16k=job.sources.audio.mix, backend=self.backend,
                                ranks=self.ranks, gpu=self.gpu, already_done=len(job.done), error=error,
                                summary=self.summary())
            log.info("job report: %s", path)
        except Exception as e:  # the report must never hide the job's own outcome
            log.warning("could not write the job report (%s: %s)", type(e).__name__, e)
