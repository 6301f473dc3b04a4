"""Flow-matching sampler pieces: timestep schedule, noising, guidance (CFG / APG), Euler step.

Everything here is a pure tensor function (or a tiny state object) so the chunk loop
(``pipeline/loop.py``) reads as the algorithm and each piece is checked on its own against
the reference golden data. The arithmetic order follows the reference so that float32
results are bit-compatible with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

__all__ = [
    "BRANCHES",
    "MomentumBuffer",
    "GuidanceState",
    "adaptive_projected_guidance",
    "add_noise",
    "combine_guidance",
    "euler_step",
    "guidance_branches",
    "timesteps",
]

# Guidance branches, in the order the reference runs the model. The integer codes are the
# ones the golden data records (call_branch).
BRANCHES = {"cond": 0, "drop_text": 1, "uncond": 2, "drop_audio": 3}


def timesteps(steps: int, shift: float, num_timesteps: int = 1000) -> torch.Tensor:
    """The ``steps + 1`` shifted timesteps, from ``num_timesteps`` down to exactly 0.

    ``linspace(num_timesteps, 1, steps)`` (computed by numpy in float64, then rounded to
    float32 as the reference does) followed by 0, each mapped by
    ``t' = s*t / (1 + (s-1)*t)`` on ``t / num_timesteps``. All arithmetic is float32, as in
    the reference, which applies the same expression to one-element float32 tensors.
    """
    base = np.linspace(num_timesteps, 1, steps, dtype=np.float32)
    t = torch.cat([torch.from_numpy(base), torch.zeros(1, dtype=torch.float32)])
    t = t / num_timesteps
    t = shift * t / (1 + (shift - 1) * t)
    return t * num_timesteps


def add_noise(original: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float,
              num_timesteps: int = 1000) -> torch.Tensor:
    """Flow-matching interpolation ``(1 - t/N) * original + t/N * noise``.

    ``t`` is a number, a one-element tensor, or one value per leading (batch) entry.
    """
    t = torch.as_tensor(t, device=noise.device).float().reshape(-1) / num_timesteps
    t = t.view(t.shape + (1,) * (noise.ndim - 1))
    return (1 - t) * original + t * noise


def euler_step(latent: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
               num_timesteps: int = 1000) -> torch.Tensor:
    """One Euler step of the flow ODE from ``t`` to ``t_next``: ``x - v * (t - t_next) / N``.

    ``velocity`` is the (guided) model prediction; the velocity points from data to noise,
    so stepping towards t = 0 subtracts it. Written as ``x + (-v) * dt``, the reference's
    exact operation order.
    """
    dt = (t - t_next) / num_timesteps
    return latent + (-velocity) * dt


class MomentumBuffer:
    """Running average for APG: ``avg <- update + momentum * avg`` (starting from 0).

    State lives in the instance; the loop creates fresh buffers for every chunk, as the
    reference does.
    """

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.running_average: torch.Tensor | float = 0.0

    def update(self, value: torch.Tensor) -> torch.Tensor:
        self.running_average = value + self.momentum * self.running_average
        return self.running_average


def _project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``v0`` into parts parallel and orthogonal to ``v1`` (per leading entry, over the
    last four dims), in float64 as the reference does; returned in ``v0``'s dtype."""
    dims = [-1, -2, -3, -4]
    dtype = v0.dtype
    v0, v1 = v0.double(), v1.double()
    v1 = torch.nn.functional.normalize(v1, dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    orthogonal = v0 - parallel
    return parallel.to(dtype), orthogonal.to(dtype)


def adaptive_projected_guidance(diff: torch.Tensor, pred_cond: torch.Tensor,
                                momentum_buffer: MomentumBuffer | None = None, eta: float = 0.0,
                                norm_threshold: float = 55.0) -> torch.Tensor:
    """APG (arXiv 2410.02416): momentum-smoothed, norm-clipped guidance difference with its
    component along ``pred_cond`` scaled by ``eta`` (0 drops it). Norms over the last 4 dims."""
    if momentum_buffer is not None:
        diff = momentum_buffer.update(diff)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=[-1, -2, -3, -4], keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), norm_threshold / norm)
    parallel, orthogonal = _project(diff, pred_cond)
    return orthogonal + eta * parallel


class GuidanceState:
    """APG settings plus the two momentum buffers (text and audio) of one chunk."""

    def __init__(self, momentum: float = -0.75, norm_threshold: float = 55.0):
        self.norm_threshold = norm_threshold
        self.text = MomentumBuffer(momentum)
        self.audio = MomentumBuffer(momentum)


def _text_guidance_off(text_scale: float) -> bool:
    # The reference switches to the 2-pass scheme when the text scale is (close to) 1.
    return math.isclose(text_scale, 1.0)


def guidance_branches(text_scale: float) -> tuple[str, ...]:
    """The model passes needed per step, in the reference's call order."""
    return ("cond", "drop_audio") if _text_guidance_off(text_scale) else ("cond", "drop_text", "uncond")


def combine_guidance(preds: Mapping[str, torch.Tensor], text_scale: float, audio_scale: float,
                     apg: GuidanceState | None = None) -> torch.Tensor:
    """Combine the branch predictions into the guided velocity (before the Euler step).

    3 passes (text scale != 1): ``u + s_t (c - nt) + s_a (nt - u)``; with APG
    ``c + (s_t - 1) APG(c - nt) + (s_a - 1) APG(nt - u)``.
    2 passes (text scale == 1): ``na + s_a (c - na)``; with APG ``c + (s_a - 1) APG(c - na)``.
    (c = cond, nt = drop_text, u = uncond, na = drop_audio.)
    """
    cond = preds["cond"]
    if _text_guidance_off(text_scale):
        drop_audio = preds["drop_audio"]
        if apg is None:
            return drop_audio + audio_scale * (cond - drop_audio)
        return cond + (audio_scale - 1) * adaptive_projected_guidance(
            cond - drop_audio, cond, apg.audio, norm_threshold=apg.norm_threshold)

    drop_text, uncond = preds["drop_text"], preds["uncond"]
    if apg is None:
        return uncond + text_scale * (cond - drop_text) + audio_scale * (drop_text - uncond)
    text_term = adaptive_projected_guidance(cond - drop_text, cond, apg.text, norm_threshold=apg.norm_threshold)
    audio_term = adaptive_projected_guidance(drop_text - uncond, cond, apg.audio, norm_threshold=apg.norm_threshold)
    return cond + (text_scale - 1) * text_term + (audio_scale - 1) * audio_term
