"""How a long job is cut into windows and where they render (``farm.*``; ``farm=local|ray``)."""

from __future__ import annotations

from dataclasses import dataclass

from infinitetalk_dist.errors import InputError

__all__ = ["WINDOW_EXT", "FarmOptions"]

WINDOW_EXT = {"ffv1": "mkv", "h264": "mp4"}  # farm.window_codec -> the window files' extension


@dataclass
class FarmOptions:
    backend: str = "local"
    """local (every window in this process) | ray (replicas on a Ray cluster)."""
    replicas: int = 1
    """Replicas the plan balances windows over (farm=ray: replicas started)."""
    max_attempts: int = 3
    """A window failing this many times fails the job."""
    store: str | None = None
    """Job store (local path or fsspec URL); null: <output>.job next to the output."""
    min_s: float = 10.0
    """Shortest window the planner aims for, seconds."""
    max_s: float = 120.0
    """Longest window the planner aims for, seconds."""
    target_s: float | None = None
    """Window length in seconds; null: from the duration and the replicas."""
    overlap_s: float = 1.0
    """Cross-fade at forced cuts, seconds."""
    window_codec: str = "ffv1"
    """How the store keeps rendered windows: ffv1 (lossless .mkv: the film is encoded once, at
    the stitch) | h264 (.mp4 at crf 12: ~5x smaller, a second generation of loss). Conform jobs: ffv1."""
    min_pause_s: float = 0.3
    """Silences shorter than this are not cut points."""
    shot_threshold: float = 27.0
    """Shot-cut detector threshold (PySceneDetect ContentDetector; V2V)."""
    metrics_port: int | None = 0
    """Prometheus metrics on this port (0: any free port; null: off)."""
    metrics_addr: str = "127.0.0.1"
    """Address the metrics endpoint binds: loopback by default (the k8s manifests set 0.0.0.0 for
    the pod's scraper)."""
    gpus_per_replica: int = 1
    """farm=ray: actors (ranks) per replica, one GPU each; 0: CPU-only actors."""
    address: str | None = None
    """farm=ray: the Ray cluster; null: the one `ray job submit` / RAY_ADDRESS names, else a new local one."""
    cpus_per_actor: float | None = None
    """farm=ray: CPUs each actor reserves (Ray gives it as many CPU threads); null: a GPU actor
    takes the cluster's CPUs per GPU (loading, the LoRA merge and encoding run on them), a CPU actor 1.
    A device=cpu window renders with this many threads (default 1) on both backends: CPU results
    depend on the thread count, and farm=local must write the bytes farm=ray writes."""
    placement_timeout_s: float = 600.0
    """farm=ray: wait this long for a replica's GPUs, then fail naming what is missing."""

    def __post_init__(self):
        if self.backend not in ("local", "ray"):
            raise InputError(f"farm.backend must be local or ray, got {self.backend!r}")
        for name in ("replicas", "max_attempts"):
            if getattr(self, name) < 1:
                raise InputError(f"farm.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.min_s <= self.max_s:
            raise InputError(f"farm.min_s must be in (0, farm.max_s={self.max_s}], got {self.min_s}")
        if self.target_s is not None and not self.min_s <= self.target_s <= self.max_s:
            raise InputError(f"farm.target_s must be within [farm.min_s, farm.max_s] = [{self.min_s}, {self.max_s}], "
                             f"got {self.target_s}")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise InputError(f"farm.cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.window_codec not in WINDOW_EXT:
            raise InputError(f"farm.window_codec must be one of {', '.join(WINDOW_EXT)}, got {self.window_codec!r}")
        if self.gpus_per_replica < 0:
            raise InputError(f"farm.gpus_per_replica must be >= 0, got {self.gpus_per_replica}")

    def cpu_threads(self) -> int:
        """Torch threads a device=cpu window renders with (see ``cpus_per_actor``)."""
        return max(1, int(self.cpus_per_actor or 1))

    def window_ext(self, conform: bool = False) -> str:
        """The window files' extension; a conform job needs lossless crops to composite."""
        if conform and self.window_codec != "ffv1":
            raise InputError(f"farm.window_codec={self.window_codec} cannot hold a conform job's windows: "
                             "the composite needs lossless crops (use ffv1)")
        return WINDOW_EXT[self.window_codec]

    def store_url(self, output: str) -> str:
        """The job store: ``store`` or ``<output>.job`` next to the output."""
        return str(self.store or f"{output}.job")
