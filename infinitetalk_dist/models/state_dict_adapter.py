"""Checkpoint key mapping: official file layouts -> our modules' state dicts.

Our modules use the reference implementation's parameter names, so most mappings are the
identity; this module holds the few that are not (it is the only place that knows them).
A mapping is a function ``file_key -> our_key``, or ``None`` for a key deliberately skipped.
"""

from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]


def clip_visual_key(key: str, vision_layers: int) -> str | None:
    """XLM-RoBERTa CLIP checkpoint key -> vision tower key, or None for unused parts.

    The pipeline uses the penultimate block's output, so the last block, ``post_norm``,
    ``head``, the text tower (``textual.*``) and ``log_scale`` are never built.
    """
    if not key.startswith("visual."):
        return None  # textual.*, log_scale
    k = key[len("visual."):]
    if k.startswith((f"transformer.{vision_layers - 1}.", "post_norm.", "head")):
        return None
    return k


def clip_visual_state_dict(full: StateDict, vision_layers: int) -> StateDict:
    out = {}
    for key, value in full.items():
        ours = clip_visual_key(key, vision_layers)
        if ours is not None:
            out[ours] = value
    return out


# LoRA files: kohya/lightx2v (`lora_down`/`lora_up` + `alpha`, `diff`, `diff_b`) and
# diffusers/peft (`lora_A`/`lora_B`), with or without a `diffusion_model.` prefix.
_LORA_PREFIXES = ("diffusion_model.", "model.diffusion_model.")
_LORA_SUFFIXES = {
    ".lora_down.weight": "down",
    ".lora_A.weight": "down",
    ".lora_up.weight": "up",
    ".lora_B.weight": "up",
    ".alpha": "alpha",
    ".diff": "diff",
    ".diff_b": "diff_b",
}
_LORA_RE = re.compile("(" + "|".join(re.escape(s) for s in _LORA_SUFFIXES) + ")$")


def lora_key(key: str) -> tuple[str, str] | None:
    """LoRA file key -> (target module path in our DiT, part), or None if not a LoRA key."""
    m = _LORA_RE.search(key)
    if m is None:
        return None
    base = key[: m.start()]
    for prefix in _LORA_PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix):]
            break
    return base, _LORA_SUFFIXES[m.group(1)]
