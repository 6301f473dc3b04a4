"""The official quantised DiTs (``InfiniteTalk/quant_models/infinitetalk_<variant>_<int8|fp8>.safetensors``
and the JSON quantisation map beside each) loaded into our DiT, without optimum-quanto.

The file holds the whole DiT (the Wan base and the audio adapter, LoRA-merged already in the
``*_lora`` files) under the official key names, which are ours; every module the map names
becomes a :class:`~infinitetalk_dist.kernels.quant.WeightQuantLinear` holding the 8-bit weight.
Keys, shapes and data types are checked against the model before any tensor is read. The
8-bit weights are not FSDP-sharded: a quantised replica keeps the whole DiT on each rank
(Ulysses still splits the sequence).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from infinitetalk_dist.kernels.quant import QUANTO_WEIGHTS, WeightQuantLinear
from infinitetalk_dist.models.checkpoint import CheckpointError, TensorSource, check_keys, expected_shapes
from infinitetalk_dist.models.dit import InfiniteTalkDiT
from infinitetalk_dist.models.weights import dit_config, quant_map_path

from .load import _state_device, fill_
from .parallelize import parallelize_dit
from .state import ParallelState

__all__ = ["load_quantized_dit", "quant_map_path", "read_quant_map"]

_DATA, _SCALE = ".weight._data", ".weight._scale"
_UNUSED = (".input_scale", ".output_scale")  # activation scales of weight-only quantisation


def read_quant_map(quant_file: str | Path) -> dict[str, torch.dtype]:
    """module name -> the 8-bit dtype of its weight, from the map; raises :class:`CheckpointError`
    for a missing or unreadable map and for anything but weight-only int8 / fp8."""
    path = quant_map_path(quant_file)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: the quantisation map of {Path(quant_file).name} is missing "
                              "(it is downloaded beside the .safetensors file)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a quantisation map ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise CheckpointError(f"{path}: not a quantisation map (expected {{module: {{weights, activations}}}})")
    out = {}
    for name, spec in doc.items():
        weights, acts = spec.get("weights"), spec.get("activations", "none")
        if weights not in QUANTO_WEIGHTS:
            raise CheckpointError(f"{path}: {name}: weights {weights!r} are not supported "
                                  f"(only {', '.join(QUANTO_WEIGHTS)})")
        if acts not in (None, "none"):
            raise CheckpointError(f"{path}: {name}: quantised activations ({acts}) are not supported")
        out[name] = QUANTO_WEIGHTS[weights]
    return out


def _file_key(key: str) -> str | None:
    """A key of the quantised file -> ours (None: the unused activation scales)."""
    if key.endswith(_DATA):
        return key[: -len(_DATA)] + ".weight_data"
    if key.endswith(_SCALE):
        return key[: -len(_SCALE)] + ".weight_scale"
    return None if key.endswith(_UNUSED) else key


def _swap_linears(model: nn.Module, qmap: dict[str, torch.dtype], dtype: torch.dtype, where: Path) -> None:
    for name, data_dtype in qmap.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{where}: the quantisation map names {name}, which the DiT does not have") from None
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"{where}: {name} is a {type(linear).__name__}, not a Linear layer")
        parent, _, leaf = name.rpartition(".")
        swapped = WeightQuantLinear(linear.in_features, linear.out_features, linear.bias is not None, data_dtype,
                                    dtype, device="meta")
        setattr(model.get_submodule(parent) if parent else model, leaf, swapped)


def load_quantized_dit(
    wan_dir: str | Path,
    quant_file: str | Path,
    state: ParallelState | None = None,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str | None = None,
    attn_backend: str | None = None,
    fsdp: bool = True,
) -> InfiniteTalkDiT:
    """The InfiniteTalk DiT from an official quantised file (config from ``wan_dir``). Plain
    tensors and the weight scales are cast to ``dtype``; the 8-bit data stays as stored."""
    state, device = _state_device(state, device)
    if fsdp and state.world_size > 1:
        raise CheckpointError("a quantised DiT is not FSDP-sharded: set parallel.fsdp=false "
                              "(each rank then holds the whole 8-bit DiT)")
    quant_file = Path(quant_file)
    qmap = read_quant_map(quant_file)
    src = TensorSource(quant_file, key_map=_file_key)
    with torch.device("meta"):
        model = InfiniteTalkDiT(dit_config(wan_dir, attn_backend=attn_backend)).to(dtype)
    _swap_linears(model, qmap, dtype, quant_file)
    shapes = expected_shapes(model)
    check_keys(shapes, [src], "the quantised InfiniteTalk DiT")  # missing, extra, wrong shapes
    parallelize_dit(model, state, fsdp=False)
    model.to_empty(device=device)
    buffers = dict(model.named_buffers())
    params = [k for k in shapes if k not in buffers]
    with torch.no_grad():
        for key, tensor in src.tensors(list(buffers)):
            want = buffers[key].dtype
            if key.endswith(".weight_data") and tensor.dtype != want:
                raise CheckpointError(f"{quant_file}: {key[:-12]}: weight data is {tensor.dtype}, "
                                      f"the map says {want}")
            buffers[key].copy_(tensor.to(want))
        fill_(model, ((k, lambda rows, t=t: t) for k, t in src.tensors(params)), dtype)
    return model.eval().requires_grad_(False)
