"""TeaCache: skip the DiT blocks on steps where the timestep embedding barely moved.

As the reference (``WanModel.forward`` with ``teacache_init``, ``use_ret_steps=True``): per
guidance branch, accumulate a polynomial rescaling of the relative L1 change of the time
modulation ``e0`` since that branch's previous call; while the sum stays under the threshold
the blocks are skipped and the branch's previous block residual is added instead. The first
5 steps of every chunk are always computed, and the state restarts with every
chunk. Embeddings and the head always run.

Differences from the reference, both deliberate: branches are counted by the actual number
of guidance passes (the reference always uses ``cnt % 3``, which mixes branches in the
two-pass mode), and the state lives in this object (one per window), not on the model class.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn

# Rescaling polynomials of the reference (use_ret_steps=True), by size bucket.
COEFFICIENTS = {
    "480": [2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01],
    "720": [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
}
RET_STEPS = 5  # always computed at the start of each chunk


class TeaCache(nn.Module):
    """A ``block_cache`` for :class:`~infinitetalk_dist.models.dit.InfiniteTalkDiT`.

    Use :func:`teacache_on` (installs it for one window); the model calls
    ``cache(x, e0, run_blocks)`` once per DiT call, one call per guidance branch in order.
    """

    def __init__(self, steps: int, branches: int, threshold: float = 0.2, size: str = "480"):
        super().__init__()
        self.steps, self.branches, self.threshold = steps, branches, threshold
        self.rescale = np.poly1d(COEFFICIENTS["720" if size == "720" else "480"])
        self.skipped = self.computed = 0
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.accumulated = [0.0] * self.branches
        self.previous_e0: list[torch.Tensor | None] = [None] * self.branches
        self.residual: list[torch.Tensor | None] = [None] * self.branches

    def forward(self, x: torch.Tensor, e0: torch.Tensor, run_blocks: Callable[[torch.Tensor], torch.Tensor]):
        if self.count >= self.steps * self.branches:
            self._reset()  # a new chunk
        call, branch = self.count, self.count % self.branches
        self.count += 1
        always = call < RET_STEPS * self.branches
        prev = self.previous_e0[branch]
        skip = False
        if not always and prev is not None and self.residual[branch] is not None:
            change = ((e0 - prev).abs().mean() / prev.abs().mean()).item()
            self.accumulated[branch] += float(self.rescale(change))
            skip = self.accumulated[branch] < self.threshold
        if not skip:
            self.accumulated[branch] = 0.0
        self.previous_e0[branch] = e0.clone()
        if skip:
            self.skipped += 1
            return x + self.residual[branch]
        self.computed += 1
        out = run_blocks(x)
        self.residual[branch] = out - x
        return out


@contextmanager
def teacache_on(model: nn.Module, steps: int, branches: int, threshold: float, size: str):
    """Install a fresh :class:`TeaCache` as ``model.block_cache`` for one window, then restore."""
    previous = model.block_cache
    model.block_cache = cache = TeaCache(steps, branches, threshold, size)
    try:
        yield cache
    finally:
        model.block_cache = previous
