"""Apply the replica's parallelism to an InfiniteTalk DiT from outside (the torchtitan pattern).

:func:`parallelize_dit` swaps the model's sequence seams for sharded ones (Ulysses around
every self-attention core, this rank's token slice through the blocks, the two-speaker map
gathered) and FSDP2-shards the weights over all ranks of the replica. CFG-parallel needs no
change to the model: :func:`infinitetalk_dist.parallel.cfg.predict_branches` picks the
branches each cfg rank runs.
"""

from __future__ import annotations

import torch

from infinitetalk_dist.models.dit import AttentionCore, InfiniteTalkDiT

from .fsdp import fully_shard_dit
from .state import ParallelState
from .ulysses import SequenceShard, ShardedSpeakerMap, UlyssesAttention, check_heads

__all__ = ["INDUCTOR_OPTIONS", "compile_blocks", "fp8_linears", "parallelize_dit"]


def parallelize_dit(model: InfiniteTalkDiT, state: ParallelState, *, fsdp: bool = True,
                    dtype: torch.dtype | None = None) -> InfiniteTalkDiT:
    """Make ``model`` (built or on the meta device) run as this rank's part of the replica; in place.

    - sp > 1: Ulysses sequence parallelism (heads must divide by sp);
    - fsdp and world > 1: FSDP2 over all cfg*sp ranks, params kept/gathered in ``dtype``
      (default: the model's parameter dtype). A materialised model must hold the same
      weights on every rank; a meta model is then allocated shard-sized with ``to_empty``.

    After this, every rank calls the model with the same full-size inputs and gets the same
    full-size output. One process (``ParallelState.single()``) leaves the model unchanged.
    """
    if state.sp_size > 1:
        check_heads(model.config.num_heads, state.sp_size)
        group = state.sp_group
        for block in model.blocks:
            attn = block.self_attn
            if not isinstance(attn.attn_core, AttentionCore):
                raise ValueError(f"self_attn.attn_core is already wrapped ({type(attn.attn_core).__name__})")
            attn.attn_core = UlyssesAttention(attn.attn_core, state.sp_size, group)
            attn.speaker_map = ShardedSpeakerMap(state.sp_size, state.sp_rank, group)
        model.sequence = SequenceShard(state.sp_size, state.sp_rank, group)
    if fsdp and state.world_size > 1:
        fully_shard_dit(model, state, dtype)
    return model


# Inductor picks some reduction kernels' block sizes by timing candidates on the device, once per
# process; a near tie can flip the pick, and the summation order with it, between processes
# (pytorch#189121). A farm window re-rendered after a killed actor must give the same bytes:
# deterministic mode (pytorch#163589) picks without timing. Cost and bytes per process:
# benchmarks/compile_determinism.py (RESULTS.md).
INDUCTOR_OPTIONS = {"deterministic": True}


def compile_blocks(model: InfiniteTalkDiT, **compile_kw) -> InfiniteTalkDiT:
    """``torch.compile`` each DiT block in place (parameter names unchanged): Inductor fuses the
    elementwise chain around the matmuls and attention (float32 modulation, LayerNorm/RMSNorm,
    RoPE, gates, tanh-GELU). The blocks share one compiled graph (same code, parameters as
    inputs). Apply after :func:`parallelize_dit` so the swapped-in seams are traced too.
    Inductor runs in :data:`INDUCTOR_OPTIONS` unless ``options`` says otherwise."""
    compile_kw.setdefault("options", INDUCTOR_OPTIONS)
    for block in model.blocks:
        block.compile(**compile_kw)
    return model


def fp8_linears(model: InfiniteTalkDiT) -> InfiniteTalkDiT:
    """Replace the blocks' linear layers by fp8 row-scaled ones (``kernels.fp8``), in place.

    The embeddings, the head and the float32 time projections stay as they are. Costs one
    quantisation pass over the weights and halves their memory; the output error against the
    bf16 path is reported by ``benchmarks/dit_forward.py``. Not for FSDP-sharded models.
    """
    from infinitetalk_dist.kernels.fp8 import Fp8Linear

    for block in model.blocks:
        for name, mod in list(block.named_modules()):
            if type(mod) is torch.nn.Linear and mod.in_features % 16 == 0 and mod.out_features % 16 == 0:
                parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
                setattr(parent, name.rpartition(".")[2], Fp8Linear.from_linear(mod))
    return model
