"""One rank of one farm replica: the worker both backends drive.

``farm=local`` runs one worker in the driver's process; ``farm=ray`` wraps the class with
``ray.remote`` and runs G of them per replica, one GPU each, on one node (a STRICT_PACK
placement group), forming one torch.distributed group (NCCL on GPUs, gloo on CPU) that renders
one window at a time with the DiT sharded exactly as under torchrun
(:func:`~infinitetalk_dist.pipeline.runtime.replica_runtime`). Rank 0 writes the window's MP4
and uploads it to the job store; the driver records it.

The worker never decodes the job's inputs: the driver sends the reference (picture, or the
source video's path with its frame index already built) once and each window's audio slices
with the window. This module imports nothing Ray-specific at import time.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import time
from datetime import timedelta

from infinitetalk_dist.pipeline.request import GenerateRequest
from infinitetalk_dist.pipeline.sources import Reference

from .progress import reporter

__all__ = ["ReplicaWorker"]


class ReplicaWorker:
    """Rank ``rank`` of a replica of ``world`` ranks rendering windows of one job."""

    def __init__(self, request: GenerateRequest, store_url: str, rank: int, world: int, reference: Reference,
                 *, visible_gpu: bool = False, cpu_threads: int | None = None, window_ext: str = "mkv",
                 board=None, replica: int = 0):
        if visible_gpu and request.device.startswith("cuda"):
            # Ray shows each actor its own GPU through CUDA_VISIBLE_DEVICES.
            request = dataclasses.replace(request, device="cuda:0")
        self.request, self.reference = request, reference
        self.store_url, self.rank, self.world = store_url, int(rank), int(world)
        self.cpu_threads = cpu_threads  # device=cpu: the thread count fixes the bytes (FarmOptions.cpu_threads)
        self.window_ext = window_ext  # the store's: mkv (FFV1) or mp4 (H.264)
        self.runtime = self.hw = None
        # Rank 0 tells the driver's ProgressBoard after every sampling step (farm/progress.py).
        self.report = reporter(board if self.rank == 0 else None, replica)

    def rendezvous(self) -> str:
        """Rank 0: ``tcp://<this node's IP>:<free port>`` for the replica's process group."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def setup(self, init_method: str | None) -> dict:
        """Join the replica's process group and build (or load) the models. Returns this
        process's ``pid`` (the driver logs it; fault tests kill it), ``load_s`` and its CPU ``threads``."""
        import torch
        import torch.distributed as dist

        from infinitetalk_dist.parallel import ParallelState
        from infinitetalk_dist.pipeline.generate import output_hw
        from infinitetalk_dist.pipeline.runtime import replica_runtime

        t0 = time.perf_counter()
        device = torch.device(self.request.device)
        if device.type == "cuda" and device.index is not None:  # plain "cuda" (farm=local): the current one
            torch.cuda.set_device(device)
        if device.type == "cpu" and self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
        if self.world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            kw = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, init_method=init_method, rank=self.rank, world_size=self.world,
                                    timeout=timedelta(seconds=600), **kw)
            state = ParallelState.create(cfg=self.request.parallel.cfg, device=device)
        else:
            state = ParallelState.single(device)
        self.runtime = replica_runtime(self.request, state)
        self.hw = output_hw(self.request, self.reference)
        return {"pid": os.getpid(), "load_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}

    def render(self, window: dict, tracks) -> dict | None:
        """Render one window (a :class:`~.plan.Window` as a dict) from its audio ``tracks``.
        Rank 0 uploads the MP4 to the store and returns ``{"sha256", "size", "frames",
        "seconds", "step_seconds", "gpu_peak_bytes", "timings"}`` (``timings``: the stage
        report, :class:`~infinitetalk_dist.pipeline.profile.StageTimer`); the other ranks return None."""
        import torch

        from infinitetalk_dist.pipeline.profile import StageTimer
        from infinitetalk_dist.timeline import FPS

        from . import render
        from . import store as store_mod
        from .plan import Window
        from .store import JobStore

        w = Window(**window)
        device = torch.device(self.request.device)
        timer = StageTimer(device)  # also resets the peak memory counter
        steps: list[float] = []
        last = [time.perf_counter()]

        def on_step(p) -> None:
            now = time.perf_counter()
            steps.append(now - last[0])
            last[0] = now
            self.report({"window": w.index, "chunk": p.chunk, "chunks": p.chunks, "step": p.step,
                         "steps": p.steps, "done": len(steps), "step_s": steps[-1]})

        t0 = time.perf_counter()
        scratch = store_mod.scratch_dir() if self.runtime.writer else None
        try:
            local = os.path.join(scratch, f"{w.index:05d}.{self.window_ext}") if scratch else None
            render.render_window(self.request, self.runtime, self.reference, self.hw, w, tracks, local,
                                 progress=on_step, timer=timer)
            if local is None:
                return None
            with timer.stage("upload"):
                store = JobStore(self.store_url, window_ext=self.window_ext)
                digest, size = store.upload_window(w.index, local)
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return {"sha256": digest, "size": size, "frames": w.frames, "seconds": time.perf_counter() - t0,
                "step_seconds": steps,
                "gpu_peak_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0,
                "timings": timer.report(frames=w.frames, fps=FPS, gpus=self.world)}
