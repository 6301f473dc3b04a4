"""Prometheus metrics of a farm job, kept and served by the driver.

Replicas report what they measured (frames, seconds per DiT step) with each finished window,
so one exporter on the driver covers a multi-node cluster without a per-actor endpoint.
Names (the Grafana dashboard and k8s PodMonitor use exactly these; ``METRIC_NAMES``):

    itd_windows{state="queued|running|done|failed"}   gauge: windows by state
    itd_windows_planned                               gauge: windows in the plan (a gauge: no _total)
    itd_window_retries_total                          counter: re-queued attempts
    itd_replica_restarts_total                        counter: replicas rebuilt after a fault
    itd_frames_rendered_total                         counter: frames of finished windows
    itd_frames_per_second                             gauge: rendered frames / job wall time
    itd_dit_step_seconds                              histogram: one sampling step of one window
    itd_window_seconds                                histogram: one window on one replica
    itd_gpu_memory_peak_bytes{replica}                gauge: peak CUDA memory of a replica's rank 0
    itd_dit_steps_total                               counter: sampling steps finished (moves inside a window)
    itd_window_progress{replica}                      gauge: share of its window's steps a replica has done

Every sample also carries ``itd_job="<name>"`` (the output's file name by default), so the
drivers of several jobs scraped by one Prometheus stay apart (``job`` itself is the scrape
job's label).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["METRIC_NAMES", "FarmMetrics"]

METRIC_NAMES = (
    "itd_windows", "itd_windows_planned", "itd_window_retries_total", "itd_replica_restarts_total",
    "itd_frames_rendered_total", "itd_frames_per_second", "itd_dit_step_seconds", "itd_window_seconds",
    "itd_gpu_memory_peak_bytes", "itd_dit_steps_total", "itd_window_progress",
)
STATES = ("queued", "running", "done", "failed")


class _JobRegistry(CollectorRegistry):
    """A registry whose every sample carries the job's label (prometheus_client has no
    constant labels on a registry)."""

    def __init__(self, job: str):
        super().__init__()
        self.job = job

    def collect(self):
        for family in super().collect():
            family.samples = [s._replace(labels={"itd_job": self.job, **s.labels}) for s in family.samples]
            yield family


class FarmMetrics:
    """The job's metrics in their own registry; ``serve(port)`` exposes them over HTTP."""

    def __init__(self, total: int, done: int = 0, job: str = "job"):
        self.registry = r = _JobRegistry(job)
        self.windows = Gauge("itd_windows", "Windows of the job by state", ["state"], registry=r)
        Gauge("itd_windows_planned", "Windows in the job's plan", registry=r).set(total)
        self.retries = Counter("itd_window_retries", "Window attempts re-queued after a failure", registry=r)
        self.restarts = Counter("itd_replica_restarts", "Replicas rebuilt after a fault", registry=r)
        self.frames = Counter("itd_frames_rendered", "Frames of finished windows", registry=r)
        self.fps = Gauge("itd_frames_per_second", "Rendered frames per second of job wall time", registry=r)
        self.step = Histogram("itd_dit_step_seconds", "Seconds of one sampling step", registry=r,
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80))
        self.window_s = Histogram("itd_window_seconds", "Seconds of one window on one replica", registry=r,
                                  buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400, 4800))
        self.gpu_peak = Gauge("itd_gpu_memory_peak_bytes", "Peak CUDA memory of a replica's rank 0",
                              ["replica"], registry=r)
        self.steps = Counter("itd_dit_steps", "Sampling steps finished, reported after each step", registry=r)
        self.progress = Gauge("itd_window_progress", "Share of its window's sampling steps a replica has done",
                              ["replica"], registry=r)
        for s in STATES:
            self.windows.labels(s).set(0)
        self.windows.labels("done").set(done)
        self.windows.labels("queued").set(total - done)
        self._t0 = time.monotonic()
        self._new_frames = 0
        self.server = None
        self.port: int | None = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Start the HTTP exporter on ``addr`` (``port`` 0: any free port; a taken port: any free
        one, with a warning, so two drivers on one host both run); returns the port."""
        import logging

        try:
            self.server, _thread = start_http_server(int(port), addr=addr, registry=self.registry)
        except OSError as e:
            if not port:
                raise
            logging.getLogger(__name__).warning("metrics port %d is taken (%s): serving on a free port", port, e)
            self.server, _thread = start_http_server(0, addr=addr, registry=self.registry)
        self.port = self.server.server_address[1]
        return self.port

    def write(self, store) -> None:
        """The final values as ``metrics.prom`` (Prometheus text format) in the job store, for
        batch jobs that end before a scrape. A failure only warns."""
        import logging
        import tempfile

        from prometheus_client import write_to_textfile

        try:
            with tempfile.TemporaryDirectory(prefix="itd-metrics-") as d:
                write_to_textfile(f"{d}/metrics.prom", self.registry)
                store.put_file("metrics.prom", f"{d}/metrics.prom")
        except Exception as e:
            logging.getLogger(__name__).warning("could not write metrics.prom (%s)", e)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def _move(self, src: str, dst: str) -> None:
        self.windows.labels(src).dec()
        self.windows.labels(dst).inc()

    def started(self) -> None:
        self._move("queued", "running")

    def finished(self, frames: int, seconds: float, step_seconds=(), replica: int | None = None,
                 gpu_peak_bytes: int | None = None) -> None:
        self._move("running", "done")
        self.frames.inc(frames)
        self._new_frames += frames
        self.fps.set(self._new_frames / max(time.monotonic() - self._t0, 1e-9))
        self.window_s.observe(seconds)
        for s in step_seconds:
            self.step.observe(s)
        if replica is not None:
            self.progress.labels(str(replica)).set(1.0)
        if replica is not None and gpu_peak_bytes:
            self.gpu_peak.labels(str(replica)).set(gpu_peak_bytes)

    def stepped(self, replica: int, new_steps: int, share: float) -> None:
        self.steps.inc(new_steps)
        self.progress.labels(str(replica)).set(share)

    def retried(self) -> None:
        self._move("running", "queued")
        self.retries.inc()

    def failed(self) -> None:
        self._move("running", "failed")
