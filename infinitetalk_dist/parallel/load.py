"""The one DiT loader: the official checkpoint files straight into this rank's part of the model.

:func:`load_dit` never holds a full copy of the model: it is built on the meta device,
parallelised for the replica (Ulysses seams; FSDP2-sharded over all ranks unless
``fsdp=False``), allocated at its local size (``to_empty``), then each tensor of the official
checkpoint files is read on its own and only this rank's rows are kept. In one process
(``state=None``) a rank's rows are all rows. From a safetensors file (the DiT shards and
infinitetalk.safetensors are) only those rows are read (``get_slice``, mmap); with LoRAs the
whole tensor is read once, merged in float32 and sliced. Peak memory per rank = its shards
(total / N, 37.8 GB / N at 14B in bf16) + the rows of one tensor being copied; with a LoRA,
one whole tensor in the file's dtype plus its float32 merge (at most the 13824 x 5120 FFN
weight: 0.14 + 0.28 GB).

:func:`random_sharded_dit` likewise draws one whole tensor at a time (float32, on the
generator's device) and keeps its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from infinitetalk_dist.models.checkpoint import CheckpointError, check_keys, expected_shapes
from infinitetalk_dist.models.dit import DiTConfig, InfiniteTalkDiT
from infinitetalk_dist.models.lora import LoraMerge
from infinitetalk_dist.models.random_init import randomize_
from infinitetalk_dist.models.weights import dit_config, dit_sources

from .parallelize import parallelize_dit
from .state import ParallelState

__all__ = ["load_dit", "random_sharded_dit"]

# A reader returns rows [start, stop) of a full tensor (all of it for None).
RowReader = Callable[[slice | None], torch.Tensor]


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
    if list(model.buffers()):
        raise ValueError("sharded loading handles parameters only; the DiT has no buffers")
    model = model.to(dtype)  # on meta: only the recorded dtype changes
    parallelize_dit(model, state, fsdp=fsdp, dtype=dtype, **parallel_kw)
    model.to_empty(device=device)
    return model


def _state_device(state: ParallelState | None, device) -> tuple[ParallelState, torch.device]:
    if state is None:
        state = ParallelState.single(device if device is not None else "cpu")
    return state, torch.device(device) if device is not None else state.device


def _safetensors_reader(handle, name: str) -> RowReader:
    def read(rows: slice | None) -> torch.Tensor:
        sl = handle.get_slice(name)
        return sl[:] if rows is None else sl[rows.start : rows.stop]

    return read


def load_dit(
    wan_dir: str | Path,
    infinitetalk_file: str | Path,
    state: ParallelState | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
    loras: Sequence[tuple[str | Path, float]] = (),
    attn_backend: str | None = None,
    fsdp: bool = True,
) -> InfiniteTalkDiT:
    """The InfiniteTalk DiT: the Wan I2V shards with the InfiniteTalk file merged over them,
    ``loras`` (file, strength) merged in float32 before the cast to ``dtype``.

    ``state=None`` is one process (``ParallelState.single(device or "cpu")``): the whole model.
    With a distributed ``state`` the model is parallelised for it and, with ``fsdp`` (and
    world > 1), FSDP-sharded: each rank reads and keeps only its rows of every tensor; with
    ``fsdp=False`` every rank holds the whole model. ``device`` defaults to the state's.
    Keys and shapes of every file are checked before any tensor data is read; problems raise
    one :class:`CheckpointError`.
    """
    from safetensors import safe_open

    state, device = _state_device(state, device)
    cfg = dit_config(wan_dir, attn_backend=attn_backend)
    sources = dit_sources(wan_dir, infinitetalk_file)
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
    state: ParallelState | None,
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
    fsdp: bool = True,
    **parallel_kw,
) -> InfiniteTalkDiT:
    """A parallelised (FSDP-sharded) DiT with the exact weights ``randomize_(model, generator)``
    gives an unsharded one: each parameter is drawn whole in the same order (one at a time, on
    the generator's device) and only this rank's rows are kept. ``state=None``: one process."""
    state, device = _state_device(state, device)
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
