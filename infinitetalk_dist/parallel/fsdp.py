"""FSDP2 sharding of the DiT over a replica's ranks (inference) and loading straight into shards.

Units: every DiT block, plus the three large embedding modules of the root (text embedding,
timestep projection, audio projector), plus the root (the rest: patch/time/CLIP embeddings,
head). Every unit reshards after its forward, the root included, so between forwards a
rank holds 1/N of the weights; during a forward one block (~0.46 B parameters at 14B) plus
the next one (prefetched: its all-gather overlaps this block's compute) and the root's
small remainder are whole.

Loading (:func:`load_sharded_dit`) never holds a full copy of the model: the model is built
on the meta device, sharded, allocated shard-sized (``to_empty``), then each tensor of the
official checkpoint files is read on its own and only this rank's rows are kept. From a
safetensors file (the DiT shards and infinitetalk.safetensors are) only those rows are read
(``get_slice``, mmap); with LoRAs the whole tensor is read once, merged in float32 and
sliced. Peak memory per rank = its shards (total / N, 37.8 GB / N at 14B in bf16) + the
rows of one tensor being copied; with a LoRA, one whole tensor in the file's dtype plus
its float32 merge (at most the 13824 x 5120 FFN weight: 0.14 + 0.28 GB).
:func:`random_sharded_dit` likewise draws one whole tensor at a time (float32, on the
generator's device) and keeps its rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from infinitetalk_dist.models.checkpoint import CheckpointError, TensorSource, check_keys, expected_shapes
from infinitetalk_dist.models.dit import DiTConfig, InfiniteTalkDiT
from infinitetalk_dist.models.random_init import randomize_

from .state import ParallelState

__all__ = ["fully_shard_dit", "is_sharded", "load_sharded_dit", "local_param_bytes", "random_sharded_dit"]

# Root children big enough to be their own unit (freed right after use); the rest stays in the root.
ROOT_UNITS = ("text_embedding", "time_projection", "audio_proj")

# A reader returns rows [start, stop) of a full tensor (all of it for None).
RowReader = Callable[[slice | None], torch.Tensor]


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


def _rows(p: torch.Tensor) -> slice | None:
    """The rows of a parameter this rank holds: None for a plain (whole) parameter."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(p, DTensor):
        return None
    if tuple(p.placements) != (Shard(0),):
        raise ValueError(f"expected FSDP's Shard(0) placement, got {p.placements}")
    n, world = p.shape[0], p.device_mesh.size()
    chunk = -(-n // world)
    start = min(p.device_mesh.get_local_rank() * chunk, n)
    return slice(start, min(start + chunk, n))


@torch.no_grad()
def fill_(model: nn.Module, items: Iterable[tuple[str, RowReader]], dtype: torch.dtype | None) -> set[str]:
    """Copy each named tensor into the (sharded or whole) parameter, reading only this rank's rows.

    Returns the names filled. The model must already be materialised (``to_empty``).
    """
    params = dict(model.named_parameters())
    done = set()
    for name, read in items:
        p = params[name]
        rows = _rows(p)
        local = p.to_local() if rows is not None else p
        if rows is not None and rows.stop - rows.start != local.shape[0]:
            raise RuntimeError(f"{name}: FSDP shard has {local.shape[0]} rows, expected rows {rows}")
        if rows is not None and rows.start == rows.stop:
            done.add(name)
            continue
        value = read(rows)
        if tuple(value.shape) != tuple(local.shape):
            raise RuntimeError(f"{name}: read {tuple(value.shape)} for a local shard of {tuple(local.shape)}")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        local.copy_(value)
        done.add(name)
    return done


def _prepare(model: InfiniteTalkDiT, state: ParallelState, dtype: torch.dtype, device, fsdp: bool, **parallel_kw):
    """Meta model -> parallelised (sharded) and allocated on ``device`` (uninitialised values)."""
    from .parallelize import parallelize_dit

    if list(model.buffers()):
        raise ValueError("sharded loading handles parameters only; the DiT has no buffers")
    model = model.to(dtype)  # on meta: only the recorded dtype changes
    parallelize_dit(model, state, fsdp=fsdp, dtype=dtype, **parallel_kw)
    model.to_empty(device=device)
    return model


def _safetensors_reader(handle, name: str) -> RowReader:
    def read(rows: slice | None) -> torch.Tensor:
        sl = handle.get_slice(name)
        return sl[:] if rows is None else sl[rows.start : rows.stop]

    return read


def load_sharded_dit(
    wan_dir: str | Path,
    infinitetalk_file: str | Path,
    state: ParallelState,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
    loras: Sequence[tuple[str | Path, float]] = (),
    attn_backend: str | None = None,
    fsdp: bool = True,
) -> InfiniteTalkDiT:
    """The InfiniteTalk DiT from the official layout, parallelised for ``state`` and FSDP-sharded.

    Like :func:`infinitetalk_dist.models.weights.load_dit` (same files, key/shape checks and
    LoRA merging, same values) but each rank reads and keeps only its shard of every tensor.
    With ``fsdp=False`` (or one process) every rank holds the whole model.
    """
    from safetensors import safe_open

    from infinitetalk_dist.models.lora import LoraMerge
    from infinitetalk_dist.models.weights import dit_shards

    wan_dir = Path(wan_dir)
    device = torch.device(device) if device is not None else state.device
    try:
        config_json = json.loads((wan_dir / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{wan_dir / 'config.json'}: {e}") from None
    cfg = DiTConfig.from_dict({**config_json, "attn_backend": attn_backend})
    sources = [TensorSource(p) for p in dit_shards(wan_dir)] + [TensorSource(infinitetalk_file)]
    with torch.device("meta"):
        model = InfiniteTalkDiT(cfg)
    shapes = expected_shapes(model)
    owner = check_keys(shapes, sources, "the InfiniteTalk DiT")  # before any tensor data is read
    lora = LoraMerge(loras, shapes) if loras else None
    model = _prepare(model, state, dtype, device, fsdp)

    done: set[str] = set()
    for src in sources:
        keys = [k for k, s in owner.items() if s is src]
        if not keys:
            continue
        if src.path.suffix == ".safetensors" and lora is None:
            with safe_open(str(src.path), framework="pt") as f:
                # TensorSource without a key map: our keys are the file's keys.
                done |= fill_(model, ((k, _safetensors_reader(f, k)) for k in keys), dtype)
        else:  # whole tensors (a .pth file, or a LoRA delta to merge), then this rank's rows
            def items():
                for key, tensor in src.tensors(keys):
                    if lora is not None:
                        tensor = lora.apply(key, tensor)
                    yield key, (lambda rows, t=tensor: t if rows is None else t[rows])
            done |= fill_(model, items(), dtype)
    missing = set(shapes) - done
    if missing:
        raise CheckpointError(f"{len(missing)} DiT tensors were not filled: {sorted(missing)[:5]}")
    return model.eval().requires_grad_(False)


def _holder(name: str, shape: torch.Size) -> nn.Module:
    """A meta module tree with one parameter at the dotted path ``name`` (for :func:`randomize_`)."""
    root = nn.Module()
    mod = root
    *path, leaf = name.split(".")
    for part in path:
        child = nn.Module()
        mod.add_module(part, child)
        mod = child
    mod.register_parameter(leaf, nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False))
    return root


def random_sharded_dit(
    config: DiTConfig,
    state: ParallelState,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
    fsdp: bool = True,
    **parallel_kw,
) -> InfiniteTalkDiT:
    """A parallelised (FSDP-sharded) DiT with the exact weights ``randomize_(model, generator)``
    gives an unsharded one: each parameter is drawn whole in the same order (one at a time, on
    the generator's device) and only this rank's rows are kept."""
    device = torch.device(device) if device is not None else state.device
    with torch.device("meta"):
        model = InfiniteTalkDiT(config)
    order = [(k, p.shape) for k, p in model.named_parameters()]
    model = _prepare(model, state, dtype, device, fsdp, **parallel_kw)

    def items():
        for name, shape in order:
            holder = randomize_(_holder(name, shape), generator, dtype, generator.device)
            full = holder.get_parameter(name)
            yield name, (lambda rows, t=full: (t if rows is None else t[rows]).to(device))

    fill_(model, items(), dtype)
    return model.eval().requires_grad_(False)
