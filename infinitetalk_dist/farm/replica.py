"""One rank of one farm replica (a Ray actor; ``farm/ray_farm.py`` wraps it with ``ray.remote``).

A replica is G actors, one GPU each, on one node (a STRICT_PACK placement group); they form one
torch.distributed group (NCCL on GPUs, gloo on CPU) and together render one window at a time,
the DiT sharded exactly as under torchrun (:func:`~infinitetalk_dist.pipeline.generate.replica_runtime`).
Rank 0 writes the window's MP4 and uploads it to the job store; the driver records it.

This module imports neither Ray nor anything Ray-specific at import time, so the class can be
unit-tested as a plain object.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["ReplicaWorker"]


class ReplicaWorker:
    """Rank ``rank`` of a replica of ``world`` ranks rendering windows of the job ``cfg_yaml``."""

    def __init__(self, cfg_yaml: str, store_url: str, rank: int, world: int):
        self.cfg = OmegaConf.create(cfg_yaml)
        self.store_url, self.rank, self.world = store_url, int(rank), int(world)
        self.runtime = self.sources = None
        if self.cfg.device.startswith("cuda"):
            self.cfg.device = "cuda:0"  # Ray shows each actor its own GPU(s) through CUDA_VISIBLE_DEVICES

    def rendezvous(self) -> str:
        """Rank 0: ``tcp://<this node's IP>:<free port>`` for the replica's process group."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def setup(self, init_method: str | None) -> int:
        """Join the replica's process group, build (or load) the models, open the inputs.
        Returns this process's PID (the driver logs it; fault tests kill it)."""
        import torch
        import torch.distributed as dist

        from infinitetalk_dist.parallel import ParallelState
        from infinitetalk_dist.pipeline.generate import replica_runtime, resolve_sources

        device = torch.device(self.cfg.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if self.world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            kw = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, init_method=init_method, rank=self.rank, world_size=self.world,
                                    timeout=timedelta(seconds=600), **kw)
        state = ParallelState.create(cfg=int(self.cfg.parallel.cfg), device=device)
        self.runtime = replica_runtime(self.cfg, state)
        self.sources = resolve_sources(self.cfg, Path(self.cfg.output))
        return os.getpid()

    def render(self, window: dict) -> dict | None:
        """Render one window (a :class:`~.plan.Window` as a dict). Rank 0 uploads the MP4 to
        the store and returns ``{"sha256", "size", "frames", "seconds", "step_seconds",
        "gpu_peak_bytes"}``; the other ranks return None."""
        import torch

        from .plan import Window
        from .render import render_window
        from .store import JobStore

        w = Window(**window)
        device = torch.device(self.cfg.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        steps: list[float] = []
        last = [time.perf_counter()]

        def on_step(_p) -> None:
            now = time.perf_counter()
            steps.append(now - last[0])
            last[0] = now

        t0 = time.perf_counter()
        scratch = tempfile.mkdtemp(prefix="itd-window-") if self.runtime.writer else None
        try:
            local = os.path.join(scratch, f"{w.index:05d}.mp4") if scratch else None
            render_window(self.cfg, self.runtime.models, self.sources, w, local, progress=on_step,
                          predict=self.runtime.predict)
            if local is None:
                return None
            digest, size = JobStore(self.store_url).upload_window(w.index, local)
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return {"sha256": digest, "size": size, "frames": w.frames, "seconds": time.perf_counter() - t0,
                "step_seconds": steps,
                "gpu_peak_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0}

    def pid(self) -> int:
        return os.getpid()
