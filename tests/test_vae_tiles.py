"""The VAE in spatial tiles (pipeline/vae_tiles.py): the blending is exact for a pointwise
map, the golden VAE's tiled encode and decode stay close to the whole-frame ones (error
recorded), and ``auto`` is exact unless CUDA runs out of memory, then retries in tiles."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from infinitetalk_dist.pipeline.vae_tiles import OVERLAP, STRIDE, TILE, tiled_spatial, vae_calls
from tests.parity.golden import case, each_case, record, rel_l2, tensors
from tests.parity.test_vae import _model


def test_blending_is_exact_for_a_pointwise_map():
    x = torch.randn(1, 4, 3, 70, 45)
    up = lambda t: F.interpolate(t, scale_factor=(1, 8, 8), mode="nearest") * 2 + 1  # noqa: E731
    torch.testing.assert_close(tiled_spatial(up, x, tile=TILE, overlap=OVERLAP, scale=8), up(x))
    down = lambda t: F.avg_pool3d(t, (1, 8, 8))  # noqa: E731
    v = torch.randn(1, 3, 2, 8 * 70, 8 * 45)
    torch.testing.assert_close(tiled_spatial(down, v, tile=TILE * 8, overlap=OVERLAP * 8, scale=1 / 8), down(v),
                               rtol=1e-5, atol=1e-6)


@each_case("vae")
@torch.no_grad()
def test_tiled_vae_error(case_name):
    c = case(case_name)
    vae = _model(c)
    z = tensors(c, "outputs.safetensors")["latent"][None][:, :, :2]  # two latent frames: both time paths
    # A frame of 1.5 x 1.25 tiles: the golden latent repeated (the error is at the seams).
    h, w = int(TILE * 1.5), int(TILE * 1.25)
    big = z.repeat(1, 1, 1, -(-h // z.shape[-2]), -(-w // z.shape[-1]))[..., :h, :w]
    encode, decode = vae_calls(vae, "on")
    video = vae.decode(big)
    dec_err = rel_l2(decode(big), video)
    enc_err = rel_l2(encode(video), vae.encode(video))
    record(f"{case_name} VAE in {TILE}x{TILE}-latent tiles ({OVERLAP} overlap), {h}x{w} latent: "
           f"decode rel L2 {dec_err:.2e}, encode rel L2 {enc_err:.2e}")
    assert dec_err < 0.15 and enc_err < 0.15


class _Tight:
    """A VAE stand-in whose calls run out of memory above one tile (as a small card would)."""

    def __init__(self):
        self.calls = []

    def decode(self, z):
        self.calls.append(tuple(z.shape[-2:]))
        if z.shape[-1] > TILE:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return F.interpolate(z, scale_factor=(1, STRIDE, STRIDE), mode="nearest")

    def encode(self, v):
        return F.avg_pool3d(v, (1, STRIDE, STRIDE))


def test_auto_retries_in_tiles_only_when_out_of_memory(caplog):
    tight = _Tight()
    _, decode = vae_calls(tight, "auto")
    small, big = torch.randn(1, 2, 1, 16, 16), torch.randn(1, 2, 1, 16, 80)
    assert torch.equal(decode(small), F.interpolate(small, scale_factor=(1, 8, 8), mode="nearest"))
    assert tight.calls == [(16, 16)]
    with caplog.at_level(logging.WARNING):
        out = decode(big)
    assert out.shape[-2:] == (128, 640) and "retrying in 32x32-latent tiles" in caplog.text
    assert all(w <= TILE for _, w in tight.calls[2:])
    with pytest.raises(ValueError, match="vae_tiling must be one of"):
        vae_calls(tight, "sometimes")
