"""Deterministic random weights for the tiny preset, tests and benchmarks.

Models are built on the meta device (no global RNG, no wasted init of 14B parameters) and
then filled from an explicit ``torch.Generator``: matrices N(0, 1/fan_in), vectors named like
norm gains ~1, biases and other vectors small. Same seed -> same weights on any machine.
"""

from __future__ import annotations

import math

import torch

def random_tensor(name: str, shape, generator: torch.Generator) -> torch.Tensor:
    """The float32 values :func:`randomize_` gives parameter ``name`` (drawn where the
    generator lives: a CUDA generator fills 14B parameters in seconds)."""
    values = torch.empty(shape, dtype=torch.float32, device=generator.device)
    if len(shape) >= 2:
        values.normal_(0.0, 1.0 / math.sqrt(math.prod(shape[1:])), generator=generator)
    elif ("norm" in name or name.endswith("gamma")) and not name.endswith("bias"):  # norm gains
        values.normal_(1.0, 0.1, generator=generator)
    else:
        values.normal_(0.0, 0.1, generator=generator)
    return values


@torch.no_grad()
def randomize_(model: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.nn.Module:
    """Materialise a (possibly meta) model on ``device`` with seeded random weights."""
    model.to_empty(device=device)
    for name, p in model.named_parameters():
        p.copy_(random_tensor(name, tuple(p.shape), generator).to(p.dtype))
    for b in model.buffers():
        if b.is_floating_point():
            b.zero_()
    return model.to(dtype).eval().requires_grad_(False)


def seeded(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
