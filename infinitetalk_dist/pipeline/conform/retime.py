"""25 fps generated frames onto the source's own timestamps.

The model renders at 25 fps (frame ``g`` shows time ``g / 25``); a conformed film keeps the
source's frames and timestamps (23.976, 24, 29.97, variable...), so the face for the source
frame at time ``t`` is taken at generated position ``p = t * 25``:

    nearest  frame ``round(p)``: shown up to 20 ms (half a 25 fps frame) early or late, which is
             more than half a source frame above 25 fps (16.7 ms at 30 fps)
    blend    ``(1 - a) * frame[floor(p)] + a * frame[floor(p) + 1]``, ``a = p - floor(p)``: no
             offset in the timing (the default)

Streaming: the generated frames are consumed in order, two at a time in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from infinitetalk_dist.timeline import FPS

__all__ = ["RETIME_MODES", "lip_sync_offset_s", "retimed"]

RETIME_MODES = ("blend", "nearest")


def lip_sync_offset_s(times: Sequence[float], mode: str) -> float:
    """The largest time between a source frame and the generated moment it shows."""
    if mode == "blend":
        return 0.0
    return max((abs(round(t * FPS) / FPS - t) for t in times), default=0.0)


def retimed(generated: Iterable[np.ndarray], times: Sequence[float], mode: str = "blend",
            fps: float = FPS) -> Iterator[np.ndarray]:
    """One uint8 frame per source time in ``times`` (increasing seconds) from ``generated``
    (uint8 frames at ``fps``, in order); past the last generated frame the last one is held."""
    if mode not in RETIME_MODES:
        raise ValueError(f"retime must be one of {', '.join(RETIME_MODES)}, got {mode!r}")
    it = iter(generated)
    window: list[np.ndarray] = []  # generated frames [base, base + len(window))
    base = 0

    def have(k: int) -> bool:
        """Make frame k (and what is before it) available; False past the end."""
        nonlocal base
        while base + len(window) <= k:
            nxt = next(it, None)
            if nxt is None:
                return False
            window.append(nxt)
            if len(window) > 2:
                window.pop(0)
                base += 1
        return True

    def frame(k: int) -> np.ndarray:
        if not have(k):
            if not window:
                raise ValueError("retimed: no generated frames")
            return window[-1]
        return window[k - base]

    for t in times:
        p = float(t) * fps
        if mode == "nearest":
            yield frame(int(math.floor(p + 0.5)))
            continue
        k = int(math.floor(p))
        a = p - k
        lo = frame(k)
        if a < 1e-6 or not have(k + 1):
            yield lo
            continue
        hi = frame(k + 1)
        yield np.clip(np.rint((1.0 - a) * lo.astype(np.float32) + a * hi.astype(np.float32)), 0, 255).astype(np.uint8)
