"""The VAE in spatial tiles when the whole frame does not fit (``vae_tiling=auto|on|off``).

The Wan VAE's decoder holds activations of up to 384 channels at the full resolution of every
frame it decodes; at 720p that, not the weights, is what runs a 24 GB card out of memory.
Tiled, each call sees a ``TILE`` x ``TILE`` latent window (256 x 256 pixels) with ``OVERLAP``
latents shared with its neighbours, all frames at once (the causal time cache is unchanged),
and the outputs are blended with linear ramps over the overlap. Not exact: a tile's
convolutions see zero padding where the frame continues and its middle attention sees only
the tile (the error is measured: tests/test_vae_tiles.py, benchmarks/RESULTS.md).

``auto`` (the default) runs whole and falls back to tiles only when CUDA reports out of
memory, so every run that fits keeps the exact numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

__all__ = ["TILE", "OVERLAP", "VAE_TILING", "tiled_spatial", "vae_calls"]

log = logging.getLogger(__name__)

VAE_TILING = ("auto", "on", "off")
TILE, OVERLAP = 32, 8  # latent pixels (x8 in the video)
STRIDE = 8  # the VAE's spatial stride


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    return [*range(0, n - tile, step), n - tile]


def _ramp(n: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    w = torch.ones(n)
    ramp = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
    if not first:
        w[:overlap] = ramp
    if not last:
        w[n - overlap:] = ramp.flip(0)
    return w


def tiled_spatial(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, tile: int, overlap: int,
                  scale: float) -> torch.Tensor:
    """``fn`` over ``[..., H, W]`` tiles of ``x`` (``tile`` x ``tile``, ``overlap`` shared, in
    ``x``'s units), each output ``scale`` times the tile's size, blended into one output."""
    h, w = x.shape[-2:]
    out = weight = None
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y0 in ys:
        for x0 in xs:
            piece = fn(x[..., y0:y0 + tile, x0:x0 + tile])
            ph, pw = piece.shape[-2:]
            oy, ox, ov = round(y0 * scale), round(x0 * scale), round(overlap * scale)
            wy = _ramp(ph, ov, y0 == ys[0], y0 == ys[-1])
            wx = _ramp(pw, ov, x0 == xs[0], x0 == xs[-1])
            wt = (wy[:, None] * wx[None, :]).to(piece.device)
            if out is None:
                out = torch.zeros((*piece.shape[:-2], round(h * scale), round(w * scale)), device=piece.device)
                weight = torch.zeros(out.shape[-2:], device=piece.device)
            out[..., oy:oy + ph, ox:ox + pw] += piece.float() * wt
            weight[oy:oy + ph, ox:ox + pw] += wt
            dtype = piece.dtype
    return (out / weight).to(dtype)


def vae_calls(vae, mode: str = "auto") -> tuple[Callable, Callable]:
    """(encode, decode) of ``vae`` whole, tiled (``on``) or whole with a tiled retry on CUDA
    out-of-memory (``auto``)."""
    if mode not in VAE_TILING:
        raise ValueError(f"vae_tiling must be one of {', '.join(VAE_TILING)}, got {mode!r}")

    def encode_tiles(video):
        return tiled_spatial(vae.encode, video, tile=TILE * STRIDE, overlap=OVERLAP * STRIDE, scale=1 / STRIDE)

    def decode_tiles(z):
        return tiled_spatial(vae.decode, z, tile=TILE, overlap=OVERLAP, scale=STRIDE)

    if mode == "off":
        return vae.encode, vae.decode
    if mode == "on":
        return encode_tiles, decode_tiles

    def fallback(whole, tiles, what):
        def run(x):
            try:
                return whole(x)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                log.warning("VAE %s out of GPU memory at %s: retrying in %dx%d-latent tiles (not exact)",
                            what, tuple(x.shape), TILE, TILE)
                return tiles(x)
        return run

    return fallback(vae.encode, encode_tiles, "encode"), fallback(vae.decode, decode_tiles, "decode")
