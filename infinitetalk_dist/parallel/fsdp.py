"""FSDP2 sharding of the DiT over a replica's ranks (inference).

Units: every DiT block, plus the three large embedding modules of the root (text embedding,
timestep projection, audio projector), plus the root (the rest: patch/time/CLIP embeddings,
head). Every unit reshards after its forward, the root included, so between forwards a
rank holds 1/N of the weights; during a forward one block (~0.46 B parameters at 14B) plus
the next one (prefetched: its all-gather overlaps this block's compute) and the root's
small remainder are whole.

Loading straight into the shards: :func:`infinitetalk_dist.parallel.load_dit`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from infinitetalk_dist.models.dit import InfiniteTalkDiT

from .state import ParallelState

__all__ = ["fully_shard_dit", "is_sharded", "local_param_bytes"]

# Root children big enough to be their own unit (freed right after use); the rest stays in the root.
ROOT_UNITS = ("text_embedding", "time_projection", "audio_proj")


def fully_shard_dit(model: InfiniteTalkDiT, state: ParallelState, dtype: torch.dtype | None = None) -> InfiniteTalkDiT:
    """FSDP2 ``fully_shard`` of the blocks, the big root children and the root over all ranks."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if state.replica_mesh is None:
        raise ValueError("FSDP needs a distributed ParallelState (world > 1)")
    dtype = dtype or next(model.parameters()).dtype
    # cast_forward_inputs=False: the timesteps must stay float32 (the model casts what it embeds).
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype, cast_forward_inputs=False)
    kw = dict(mesh=state.replica_mesh, mp_policy=mp, reshard_after_forward=True)
    for block in model.blocks:
        fully_shard(block, **kw)
    for name in ROOT_UNITS:
        fully_shard(getattr(model, name), **kw)
    fully_shard(model, **kw)  # explicit reshard_after_forward: the root frees its weights too
    # Issue block i+1's all-gather when block i starts, so it overlaps block i's compute
    # (at most two blocks are whole at a time).
    blocks = list(model.blocks)
    for block, nxt in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([nxt])
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def local_param_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank stores (its shards under FSDP)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total

