"""The rendered crop back into the full-resolution source frame.

The crop (the bucket-sized render of the speaker's box) is resized to the box, colour-matched
to the source's pixels under the mask, and blended in with a feathered mask; the mask is
exactly 0 at and beyond the crop's border, so every pixel outside it is the source's pixel
(bit for bit: the frame is copied, only the box is written).

Masks, in the crop's own coordinates (the box is head and shoulders, the face about its middle):

    face   an ellipse over the head (centre 50% x 42%, radii 34% x 40% of the crop)
    lower  the part of that ellipse below the eyes (the mouth and jaw move; the eyes stay)
    box    the whole crop, feathered at its border
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

__all__ = ["MASKS", "Compositor", "feathered_mask"]

MASKS = ("face", "lower", "box")


@functools.lru_cache(maxsize=8)
def feathered_mask(height: int, width: int, shape: str = "face", feather: float = 0.08) -> np.ndarray:
    """``float32 [height, width]`` in [0, 1]: 1 inside the shape, a smooth ramp of ``feather`` x
    min(height, width) pixels inward from its edge, exactly 0 outside and on the crop's border."""
    if shape not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {shape!r}")
    ramp = max(float(feather) * min(height, width), 1.0)
    y = (np.arange(height, dtype=np.float64) + 0.5)[:, None]
    x = (np.arange(width, dtype=np.float64) + 0.5)[None, :]
    # Signed distance (pixels, approximately) inside the shape's edge.
    border = np.minimum(np.minimum(x, width - x), np.minimum(y, height - y))
    if shape == "box":
        inside = border
    else:
        cy, cx, ry, rx = 0.42 * height, 0.5 * width, 0.40 * height, 0.34 * width
        r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        inside = np.minimum((1.0 - r) * min(rx, ry), border)
        if shape == "lower":  # from just under the eyes (38% down the crop) downward
            inside = np.minimum(inside, y - 0.38 * height)
    m = np.clip(inside / ramp, 0.0, 1.0)
    m = m * m * (3.0 - 2.0 * m)  # smoothstep: no visible edge where the ramp starts or ends
    m[border < 1.0] = 0.0  # the outermost pixel ring is the source's
    return m.astype(np.float32)


class Compositor:
    """Pastes rendered crops into source frames for one mask shape (masks cached per box size)."""

    def __init__(self, shape: str = "face", feather: float = 0.08, color_match: float = 1.0):
        feathered_mask(8, 8, shape, feather)  # checks the shape now, not at the first frame
        self.shape, self.feather, self.color_match = shape, float(feather), float(color_match)

    def __call__(self, source: np.ndarray, crop: np.ndarray, box) -> np.ndarray:
        """``source`` uint8 ``[H, W, 3]`` with ``crop`` (uint8 ``[h, w, 3]``, any size) blended into
        ``box`` (``left, top, right, bottom``); ``source`` itself is not modified."""
        left, top, right, bottom = (int(v) for v in box)
        bh, bw = bottom - top, right - left
        out = source.copy()
        under = source[top:bottom, left:right].astype(np.float32)
        if crop.shape[:2] != (bh, bw):
            crop = np.asarray(Image.fromarray(crop).resize((bw, bh), Image.Resampling.LANCZOS))
        gen = crop.astype(np.float32)
        mask = feathered_mask(bh, bw, self.shape, self.feather)
        if self.color_match > 0:
            gen = _match_colour(gen, under, mask, self.color_match)
        blend = under + mask[..., None] * (gen - under)
        out[top:bottom, left:right] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
        return out


def _match_colour(gen: np.ndarray, ref: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """Per-channel mean and spread of ``gen`` moved towards ``ref``'s, weighted by ``mask`` (the
    region that is pasted): the render's colour drift is removed where it would show."""
    w = mask[..., None].astype(np.float64)
    total = max(float(w.sum()), 1e-6)
    mg, mr = (gen * w).sum((0, 1)) / total, (ref * w).sum((0, 1)) / total
    sg = np.sqrt((((gen - mg) ** 2) * w).sum((0, 1)) / total) + 1e-3
    sr = np.sqrt((((ref - mr) ** 2) * w).sum((0, 1)) / total) + 1e-3
    matched = (gen - mg) * (sr / sg) + mr
    return (gen + strength * (matched - gen)).astype(np.float32)
