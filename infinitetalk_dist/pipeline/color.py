"""Colour matching of generated chunks to the first reference frame (fights colour drift).

Per frame, each CIE-Lab channel of the chunk is shifted and scaled to the mean and standard
deviation of the reference image's channel, converted back to sRGB and blended with the
original frame. The colour conversions are scikit-image's ``rgb2lab`` / ``lab2rgb``
(sRGB, D65, 2° observer) written in torch, so it runs on the GPU and on whole chunks at once.
Computation is float64, the result has the input's dtype and device.
"""

from __future__ import annotations

import torch

__all__ = ["lab_to_rgb", "match_and_blend_colors", "rgb_to_lab"]

# sRGB (linear) -> XYZ, scikit-image's matrix; XYZ -> sRGB is its inverse.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# D65 white point, 2° observer (scikit-image's values).
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def _consts(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64, device=like.device)
    white = torch.tensor(_WHITE_D65, dtype=torch.float64, device=like.device)
    return m, torch.linalg.inv(m), white


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels last ``[..., 3]`` -> CIE-Lab (float64), as skimage ``rgb2lab``."""
    xyz_from_rgb, _, white = _consts(rgb)
    x = rgb.double()
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = (linear @ xyz_from_rgb.T) / white
    f = torch.where(xyz > 0.008856, torch.pow(xyz.clamp_min(0), 1 / 3), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(-1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE-Lab ``[..., 3]`` -> sRGB in [0, 1] (float64), as skimage ``lab2rgb`` (negative Z
    clipped to 0, result clipped to [0, 1])."""
    _, rgb_from_xyz, white = _consts(lab)
    L, a, b = lab.double().unbind(-1)
    fy = (L + 16.0) / 116.0
    fx = a / 500.0 + fy
    fz = (fy - b / 200.0).clamp_min(0)
    f = torch.stack([fx, fy, fz], dim=-1)
    xyz = torch.where(f > 0.2068966, f**3, (f - 16.0 / 116.0) / 7.787) * white
    linear = xyz @ rgb_from_xyz.T
    # skimage raises only positive values to 1/2.4; a negative linear value takes the 12.92 branch.
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0) ** (1 / 2.4) - 0.055, linear * 12.92)
    return rgb.clamp(0.0, 1.0)


def match_and_blend_colors(source: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """Match each frame of ``source`` [B, 3, T, H, W] to ``reference`` [B, 3, 1, H', W'] in Lab.

    Both in [-1, 1]. ``strength`` in [0, 1] blends the corrected frames with the originals
    (0 returns ``source`` itself). Statistics are per frame and channel over all pixels
    (population std); a flat source channel is set to the reference mean. The reference
    implementation assumes B = 1; here each batch entry uses its own reference.
    """
    if strength == 0.0:
        return source
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")

    src = ((source.double() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 4, 1)  # B T H W C
    ref = ((reference.double() + 1.0) / 2.0).clamp(0.0, 1.0)[:, :, :1].permute(0, 2, 3, 4, 1)

    src_lab, ref_lab = rgb_to_lab(src), rgb_to_lab(ref)
    pixel_dims = (2, 3)  # H, W
    mean_src = src_lab.mean(dim=pixel_dims, keepdim=True)
    std_src = src_lab.std(dim=pixel_dims, keepdim=True, unbiased=False)
    mean_ref = ref_lab.mean(dim=pixel_dims, keepdim=True)
    std_ref = ref_lab.std(dim=pixel_dims, keepdim=True, unbiased=False)

    flat = std_src == 0
    matched = (src_lab - mean_src) * (std_ref / torch.where(flat, 1.0, std_src)) + mean_ref
    matched = torch.where(flat, mean_ref, matched)

    corrected = lab_to_rgb(matched)  # already clipped to [0, 1]
    blended = (1 - strength) * src + strength * corrected
    out = (blended * 2.0 - 1.0).permute(0, 4, 1, 2, 3)
    return out.to(device=source.device, dtype=source.dtype).contiguous()
