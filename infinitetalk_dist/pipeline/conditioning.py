"""Per-window conditioning inputs: output size, reference frames, speaker masks, audio windows.

All of this is what the reference computes before its DiT calls (``wan/multitalk.py``
``generate_infinitetalk`` and ``resize_and_centercrop``), in plain functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "BUCKETS",
    "audio_window_indices",
    "audio_windows",
    "center_crop",
    "image_to_tensor",
    "pick_bucket",
    "resize_and_centercrop",
    "speaker_masks",
]

# Output sizes (height, width) keyed by their h/w ratio, as the reference's ASPECT_RATIO_627
# ("infinitetalk-480") and ASPECT_RATIO_960 ("infinitetalk-720") tables. The keys are the
# reference's rounded ratio strings: the nearest key decides, not the size's exact ratio.
BUCKETS: dict[str, dict[str, tuple[int, int]]] = {
    "480": {
        "0.26": (320, 1216), "0.38": (384, 1024), "0.50": (448, 896), "0.67": (512, 768),
        "0.82": (576, 704), "1.00": (640, 640), "1.22": (704, 576), "1.50": (768, 512),
        "1.86": (832, 448), "2.00": (896, 448), "2.50": (960, 384), "2.83": (1088, 384),
        "3.60": (1152, 320), "3.80": (1216, 320), "4.00": (1280, 320),
    },
    "720": {
        "0.22": (448, 2048), "0.29": (512, 1792), "0.36": (576, 1600), "0.45": (640, 1408),
        "0.55": (704, 1280), "0.63": (768, 1216), "0.76": (832, 1088), "0.88": (896, 1024),
        "1.00": (960, 960), "1.14": (1024, 896), "1.31": (1088, 832), "1.50": (1152, 768),
        "1.58": (1216, 768), "1.82": (1280, 704), "1.91": (1344, 704), "2.20": (1408, 640),
        "2.30": (1472, 640), "2.67": (1536, 576), "2.89": (1664, 576), "3.62": (1856, 512),
        "3.75": (1920, 512),
    },
}


# The tiny preset's table: the 480 table scaled by 1/10 (multiples of 16, so the latent grid
# splits into 2x2 patches), small enough for a laptop CPU.
BUCKETS["tiny"] = {k: (max(32, round(h / 160) * 16), max(32, round(w / 160) * 16)) for k, (h, w) in BUCKETS["480"].items()}


def pick_bucket(height: int, width: int, size: str = "480") -> tuple[int, int]:
    """The (H, W) of the bucket whose ratio key is nearest ``height / width`` (first on ties)."""
    table = BUCKETS[str(size).removeprefix("infinitetalk-")]
    ratio = height / width
    key = min(table, key=lambda k: abs(float(k) - ratio))
    return table[key]


def _cover_size(orig_h: int, orig_w: int, target_h: int, target_w: int) -> tuple[int, int]:
    # Scale so the image covers the target in both directions (same float expression as the
    # reference, so the ceil lands on the same pixel count).
    scale = max(target_h / orig_h, target_w / orig_w)
    return math.ceil(scale * orig_h), math.ceil(scale * orig_w)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two dims to ``size`` around the centre (torchvision's offsets: Python
    ``round`` of half the excess, i.e. ties to even). ``x`` must be at least ``size``."""
    h, w = x.shape[-2:]
    th, tw = size
    if th > h or tw > w:
        raise ValueError(f"cannot centre-crop {h}x{w} to {th}x{tw}")
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def resize_and_centercrop(image: Image.Image | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale to cover ``size`` = (H, W) and centre-crop, as the reference.

    PIL image -> uint8 ``[1, 3, 1, H, W]`` (bilinear resize of the RGB image).
    Tensor ``[C, h, w]`` -> ``[C, H, W]`` (nearest; used for the speaker masks).
    """
    if isinstance(image, torch.Tensor):
        _, h, w = image.shape
        final = _cover_size(h, w, *size)
        resized = F.interpolate(image[None], size=final, mode="nearest")
        return center_crop(resized, size)[0].contiguous()
    if image.mode != "RGB":
        image = image.convert("RGB")
    final_h, final_w = _cover_size(image.height, image.width, *size)
    resized = np.array(image.resize((final_w, final_h), resample=Image.BILINEAR))
    pixels = torch.from_numpy(resized).permute(2, 0, 1)[None]
    return center_crop(pixels, size)[:, :, None].contiguous()


def image_to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A reference frame as the model takes it: ``[3, H, W]`` float32 in [-1, 1]."""
    pixels = resize_and_centercrop(image, size)[0, :, 0]
    return (pixels / 255 - 0.5) * 2


def speaker_masks(
    image_hw: tuple[int, int],
    target_hw: tuple[int, int],
    latent_hw: tuple[int, int],
    speakers: int = 1,
    bboxes: Sequence[Sequence[float]] | None = None,
    face_scale: float = 0.05,
) -> torch.Tensor:
    """The DiT's ``ref_target_masks`` [3, h, w] (speaker 1, speaker 2, background) on the latent grid.

    Built on the source image's pixel grid ``image_hw``, resized/cropped like the image to
    ``target_hw``, then sampled (nearest) to ``latent_hw`` and binarised.

    One speaker: all ones (the DiT does not use them then).
    Two speakers: ``bboxes`` = one ``[x_min, y_min, x_max, y_max]`` per speaker in source
    pixels. As in the reference, **x indexes rows** (height) and y columns:
    ``mask[x_min:x_max, y_min:y_max] = 1``. Without bboxes the speakers are the left and right
    halves, inset by ``face_scale`` of the height (top/bottom) and of the half width.
    """
    src_h, src_w = image_hw
    if speakers == 1:
        masks = torch.ones(3, src_h, src_w)
    elif speakers == 2:
        if bboxes is not None:
            if len(bboxes) != 2:
                raise ValueError(f"two speakers need two bboxes, got {len(bboxes)}")
            people = []
            for x_min, y_min, x_max, y_max in bboxes:
                m = torch.zeros(src_h, src_w)
                m[int(x_min) : int(x_max), int(y_min) : int(y_max)] = 1
                people.append(m)
        else:
            top, bottom = int(src_h * face_scale), int(src_h * (1 - face_scale))
            half = src_w // 2
            left = (int(half * face_scale), int(half * (1 - face_scale)))
            right = (int(half * face_scale + half), int(half * (1 - face_scale) + half))
            people = [torch.zeros(src_h, src_w), torch.zeros(src_h, src_w)]
            people[0][top:bottom, left[0] : left[1]] = 1
            people[1][top:bottom, right[0] : right[1]] = 1
        background = ((people[0] + people[1]) == 0).float()
        masks = torch.stack([*people, background])
    else:
        raise ValueError(f"1 or 2 speakers are supported, got {speakers}")

    masks = resize_and_centercrop(masks, target_hw)
    masks = F.interpolate(masks[None], size=tuple(latent_hw), mode="nearest")[0]
    return (masks > 0).float()


def audio_window_indices(start: int, frames: int, length: int, radius: int = 2) -> torch.Tensor:
    """Rows of an audio embedding for video frames ``start .. start+frames-1``: each frame
    with its ``radius`` neighbours on both sides, clamped to ``[0, length-1]``.
    Returns ``[frames, 2*radius+1]`` int64."""
    centres = torch.arange(start, start + frames).unsqueeze(1)
    offsets = torch.arange(-radius, radius + 1).unsqueeze(0)
    return (centres + offsets).clamp(0, length - 1)


def audio_windows(embeddings: Sequence[torch.Tensor], start: int, frames: int, radius: int = 2) -> torch.Tensor:
    """Windowed audio of one chunk for the DiT: ``[speakers, frames, 2*radius+1, *feature]``
    from per-speaker embeddings ``[N_i, *feature]`` (each clamped to its own length)."""
    rows = []
    for emb in embeddings:
        idx = audio_window_indices(start, frames, emb.shape[0], radius).to(emb.device)
        rows.append(emb[idx])
    return torch.stack(rows)
