"""Where the conditioning encoders (umt5-xxl T5, CLIP ViT-H, wav2vec2) live between their calls: ``encoders=``.

T5 runs once per distinct prompt (a job has two: the prompt and the negative prompt), CLIP
once per chunk and wav2vec2 once per window, while the DiT and the VAE peak for the whole
render. Keeping them resident costs ~14 GB of GPU memory (T5 11.4 GB bf16, CLIP 2.5 GB fp32,
wav2vec2 0.4 GB) at that peak for nothing:

    gpu      resident on the GPU (the fastest; the most memory)
    offload  (default) weights in pinned host memory, copied to the GPU for each call and
             dropped after it (T5: ~0.5 s once per replica; CLIP: ~0.1 s per chunk)
    cpu      run on the CPU (the official tool's ``--t5_cpu``, for CLIP too; no GPU memory)

``offload`` gives the same numbers as ``gpu`` (the same kernels on the same weights); ``cpu``
runs other kernels (rel. error ~1e-3 in bf16).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["ENCODER_MODES", "host_resident", "placed"]

ENCODER_MODES = ("gpu", "offload", "cpu")


def host_resident(mode: str, device: str | torch.device) -> bool:
    """Whether the encoders are loaded into host memory rather than onto ``device``."""
    return mode != "gpu" and torch.device(device).type == "cuda"


def pin_(module: torch.nn.Module) -> torch.nn.Module:
    """Pin ``module``'s host tensors in place (fast, asynchronous copies to the GPU)."""
    if torch.cuda.is_available():
        for t in (*module.parameters(), *module.buffers()):
            if t.device.type == "cpu" and not t.is_pinned():
                t.data = t.data.pin_memory()
    return module


@contextmanager
def placed(module: torch.nn.Module, device: str | torch.device, mode: str) -> Iterator[torch.device]:
    """``module`` ready to run inside the block; yields the device to feed it on (its outputs
    are the caller's to move to ``device``). ``offload``: GPU copies of its tensors replace the
    host ones for the block only, then are freed and the cache returned to the driver."""
    device = torch.device(device)
    here = next(module.parameters()).device
    if mode != "offload" or here.type == device.type:
        yield here
        return
    swapped = []
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None:
                    swapped.append((table, name, t))
                    moved = t.detach().to(device, non_blocking=True)
                    table[name] = torch.nn.Parameter(moved, requires_grad=False) if isinstance(
                        t, torch.nn.Parameter) else moved
    try:
        yield device
    finally:
        for table, name, t in swapped:
            table[name] = t
        del swapped
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
