"""Merge LoRA files (lightx2v 4-step, FusionX 8-step, ...) into DiT weights at load time.

Merging once costs nothing per step, unlike keeping adapters on the side. The delta of a
low-rank pair is ``strength * (alpha / rank) * up @ down`` (alpha absent -> scale 1, as the
reference does); full-tensor ``diff``/``diff_b`` entries (norm gains, biases) are added
times strength. Deltas are added in fp32 to the checkpoint tensor *before* it is cast to the
run dtype, so a bf16 model is rounded once, not twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .checkpoint import CheckpointError, _first, read_state_dict
from .state_dict_adapter import lora_key


class LoraMerge:
    """The weight deltas of one or more LoRA files, checked against the model's shapes."""

    def __init__(self, files: Sequence[tuple[str | Path, float]], shapes: Mapping[str, tuple]):
        self._parts: dict[str, list[tuple[str, dict[str, torch.Tensor], float]]] = defaultdict(list)
        for path, strength in files:
            entries = _parse(path)
            unknown = [t for t, parts in entries.items() if not _targets(t, parts) <= shapes.keys()]
            if unknown:
                raise CheckpointError(f"{path}: {len(unknown)} LoRA target(s) not in the DiT: {_first(unknown)}")
            for target, parts in entries.items():
                _check(path, target, parts, shapes)
                for key in _targets(target, parts):
                    self._parts[key].append((str(path), parts, strength))

    def keys(self) -> set[str]:
        return set(self._parts)

    def apply(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (a checkpoint value) with every LoRA delta for ``key`` added, in fp32."""
        if key not in self._parts:
            return tensor
        out = tensor.float()
        for _, parts, strength in self._parts[key]:
            out = out + strength * _delta(parts, key.endswith(".bias"), out.shape).to(out.device)
        return out


def _parse(path) -> dict[str, dict[str, torch.Tensor]]:
    entries: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    skipped = []
    for key, tensor in read_state_dict(path).items():
        parsed = lora_key(key)
        if parsed is None:
            skipped.append(key)
        else:
            entries[parsed[0]][parsed[1]] = tensor
    if skipped:
        raise CheckpointError(f"{path}: {len(skipped)} key(s) that are not LoRA entries: {_first(skipped)}")
    if not entries:
        raise CheckpointError(f"{path}: no LoRA entries found")
    return entries


def _targets(target: str, parts: dict) -> set[str]:
    """Model keys a LoRA entry changes: the weight (low-rank pair, diff) and/or the bias."""
    keys = {f"{target}.bias"} if "diff_b" in parts else set()
    if parts.keys() - {"diff_b", "alpha"}:
        keys.add(f"{target}.weight")
    return keys


def _check(path, target: str, parts: dict, shapes: Mapping[str, tuple]) -> None:
    weight, bias = shapes.get(f"{target}.weight"), shapes.get(f"{target}.bias")
    if ("down" in parts) != ("up" in parts):
        raise CheckpointError(f"{path}: {target} has only one half of its low-rank pair")
    if "down" in parts:
        down, up = parts["down"].flatten(1), parts["up"].flatten(1)
        numel = torch.Size(weight).numel()
        if up.shape[1] != down.shape[0] or up.shape[0] != weight[0] or up.shape[0] * down.shape[1] != numel:
            raise CheckpointError(
                f"{path}: {target}: LoRA shapes up {list(up.shape)} / down {list(down.shape)} "
                f"do not fit the weight {list(weight)}"
            )
    for part, shape in (("diff", weight), ("diff_b", bias)):
        if part in parts and tuple(parts[part].shape) != tuple(shape):
            raise CheckpointError(
                f"{path}: {target}.{part} has shape {list(parts[part].shape)}, expected {list(shape)}"
            )


def _delta(parts: dict[str, torch.Tensor], bias: bool, shape) -> torch.Tensor:
    if bias:
        return parts["diff_b"].float()
    delta = torch.zeros(shape)
    if "down" in parts:
        down, up = parts["down"].float().flatten(1), parts["up"].float().flatten(1)
        scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        delta = delta + (up @ down).reshape(shape) * scale
    if "diff" in parts:
        delta = delta + parts["diff"].float()
    return delta
