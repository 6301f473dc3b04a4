"""Parity of models/vae.py (Wan2.1 causal 3-D VAE) with the reference's golden cases."""

from __future__ import annotations

import torch

from infinitetalk_dist.models.vae import VAEConfig, WanVAE, tiny_vae, wan21_vae
from tests.parity.golden import assert_close, case, config, each_case, record, rel_l2, tensors, weights


def _model(c: dict, dtype: torch.dtype = torch.float32) -> WanVAE:
    # Built on meta and loaded with assign=True, as the checkpoint loader does.
    with torch.device("meta"):
        model = WanVAE(VAEConfig.from_dict(config(c)))
    model.load_state_dict(weights(c), strict=True, assign=True)
    return model.to(dtype).eval()


@each_case("vae")
@torch.no_grad()
def test_vae_matches_reference(case_name):
    c = case(case_name)
    model = _model(c)
    inp, out = tensors(c, "inputs.safetensors"), tensors(c, "outputs.safetensors")

    assert_close(f"{case_name} latent", model.encode(inp["video"][None])[0], out["latent"])
    assert_close(
        f"{case_name} latent_condlike", model.encode(inp["video_condlike"][None])[0], out["latent_condlike"]
    )
    # Decode the golden latent, as the reference decoded its own (identical) latent.
    z = out["latent"][None]
    assert_close(f"{case_name} decoded", model.decode(z)[0], out["decoded"])
    assert_close(f"{case_name} decoded_unclamped", model.decode(z, clamp=False)[0], out["decoded_unclamped"])


@each_case("vae")
@torch.no_grad()
def test_vae_bf16(case_name):
    c = case(case_name)
    model = _model(c, torch.bfloat16)
    inp, out = tensors(c, "inputs.safetensors"), tensors(c, "outputs.safetensors")

    latent = model.encode(inp["video"][None].bfloat16())[0]
    decoded = model.decode(out["latent"][None].bfloat16(), clamp=False)[0]
    assert latent.dtype == decoded.dtype == torch.bfloat16
    err_enc, err_dec = rel_l2(latent, out["latent"]), rel_l2(decoded, out["decoded_unclamped"])
    record(f"{case_name} bf16 encode: rel L2 vs fp32 golden = {err_enc:.2e} (bound 5e-2)")
    record(f"{case_name} bf16 decode (unclamped): rel L2 vs fp32 golden = {err_dec:.2e} (bound 5e-2)")
    assert err_enc < 5e-2 and err_dec < 5e-2


@each_case("vae")
@torch.no_grad()
def test_vae_causal_first_frame(case_name):
    """Latent 0 of [frame0, zeros...] equals the latent of [frame0] alone.

    This is what lets the pipeline's per-chunk encode of [cond_image, 80 zero frames] skip
    the zero frames for latent 0. Also reports (without asserting) whether the latents of
    the all-zero tail depend on frame0 and whether they repeat from slice to slice.
    """
    c = case(case_name)
    model = _model(c)
    video = tensors(c, "inputs.safetensors")["video"][None]
    stride = model.config.temporal_stride
    frame0 = video[:, :, :1]

    def with_zero_tail(first: torch.Tensor, frames: int) -> torch.Tensor:
        tail = first.new_zeros(*first.shape[:2], frames - 1, *first.shape[3:])
        return torch.cat([first, tail], dim=2)

    alone = model.encode(frame0)
    padded = model.encode(with_zero_tail(frame0, video.shape[2]))
    diff = (padded[:, :, :1] - alone).abs().max().item()
    record(f"{case_name} causal: max|latent0([f0, 0...]) - latent0([f0])| = {diff:.2e} (bit-exact: {diff == 0})")
    assert_close(f"{case_name} causal latent0", padded[:, :, :1], alone, tol=1e-6)

    # Report only: a longer zero tail, encoded after two different first frames.
    frames = 1 + 8 * stride
    other = torch.flip(frame0, dims=(-1,)) * 0.5
    a = model.encode(with_zero_tail(frame0, frames))[:, :, 1:]
    b = model.encode(with_zero_tail(other, frames))[:, :, 1:]
    scale = a.abs().max().item()
    by_frame0 = [f"{(a[:, :, j] - b[:, :, j]).abs().max().item() / scale:.1e}" for j in range(a.shape[2])]
    repeat = [f"{(a[:, :, j] - a[:, :, j - 1]).abs().max().item() / scale:.1e}" for j in range(1, a.shape[2])]
    record(f"{case_name} causal zero tail, latents 1..: rel. change with frame0 = {by_frame0}")
    record(f"{case_name} causal zero tail, latents 2..: rel. change from previous latent = {repeat}")


@each_case("vae")
@torch.no_grad()
def test_vae_calls_are_independent(case_name):
    """No run state lives on the module: interleaved calls match fresh ones."""
    c = case(case_name)
    model = _model(c)
    inp, out = tensors(c, "inputs.safetensors"), tensors(c, "outputs.safetensors")
    before = {name: dict(m.__dict__) for name, m in model.named_modules()}

    first = model.encode(inp["video"][None])
    model.encode(inp["video_condlike"][None])
    model.decode(out["latent"][None])
    again = model.encode(inp["video"][None])
    assert torch.equal(first, again)
    # Batched encode equals per-sample encode (the cache is per call, not per sample).
    both = model.encode(torch.stack([inp["video"], inp["video_condlike"]]))
    assert_close(f"{case_name} batched latent", both[1], out["latent_condlike"])

    after = {name: dict(m.__dict__) for name, m in model.named_modules()}
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].keys() == after[name].keys(), f"{name!r} gained attributes"


def test_presets():
    official = wan21_vae()
    assert (official.dim, official.z_dim, official.dim_mult) == (96, 16, [1, 2, 4, 4])
    assert official.temperal_downsample == [False, True, True] and official.attn_scales == []
    assert (official.temporal_stride, official.spatial_stride) == (4, 8)
    assert tiny_vae().dim == 8

    with torch.device("meta"):
        model = WanVAE(official)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert shapes["encoder.head.2.weight"] == (32, 384, 3, 3, 3)
    assert shapes["decoder.head.2.weight"] == (3, 96, 3, 3, 3)
    assert shapes["conv1.weight"] == (32, 32, 1, 1, 1)


@each_case("vae")
def test_vae_golden_stats_are_official(case_name):
    cfg = VAEConfig.from_dict(config(case(case_name)))
    assert cfg.mean == wan21_vae().mean and cfg.std == wan21_vae().std
