"""Parity of pipeline/sampler.py, color.py and conditioning.py with the reference's golden
``sampler`` case. Every tensor of a kind is checked; parameters come from the key names
(and, for APG's eta, from the tensor's documented meaning)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from infinitetalk_dist.pipeline.color import match_and_blend_colors
from infinitetalk_dist.pipeline.conditioning import pick_bucket, resize_and_centercrop
from infinitetalk_dist.pipeline.sampler import (
    GuidanceState,
    MomentumBuffer,
    adaptive_projected_guidance,
    add_noise,
    combine_guidance,
    euler_step,
    guidance_branches,
    timesteps,
)
from tests.parity.golden import assert_close, case, each_case, record, tensors

NUM = r"(-?[\d.]+)"


def _load(case_name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    c = case(case_name)
    return c, tensors(c, "sampler.safetensors")


def _matching(t: dict, pattern: str) -> list[tuple[str, re.Match]]:
    found = [(k, m) for k in sorted(t) if (m := re.fullmatch(pattern, k))]
    assert found, f"no golden tensor matches {pattern}"
    return found


@each_case("sampler")
def test_timesteps(case_name):
    _, t = _load(case_name)
    for key, m in _matching(t, rf"timesteps_steps(\d+)_shift{NUM}"):
        ours = timesteps(int(m[1]), float(m[2]))
        assert ours.dtype == torch.float32
        assert torch.equal(ours, t[key]), f"{key}: max diff {(ours - t[key]).abs().max().item():.3e}"
        record(f"{case_name} {key}: bit-exact")


@each_case("sampler")
def test_add_noise(case_name):
    _, t = _load(case_name)
    ours = torch.stack([add_noise(t["add_noise_original"], t["add_noise_noise"], torch.tensor([v]))
                        for v in t["add_noise_t"].tolist()])
    assert_close(f"{case_name} add_noise_out", ours, t["add_noise_out"], tol=1e-6)


@each_case("sampler")
def test_euler_step_matches_reference_expression(case_name):
    """x + (-v) * ((t_i - t_i+1) / 1000) on [1] tensors, as the reference's update."""
    _, t = _load(case_name)
    key, m = _matching(t, rf"timesteps_steps(\d+)_shift{NUM}")[0]
    ts, x, v = t[key], t["add_noise_original"], t["add_noise_noise"]
    for i in range(len(ts) - 1):
        dt = (ts[i : i + 1] - ts[i + 1 : i + 2]) / 1000
        expected = x + (-v) * dt[:, None, None, None]
        assert torch.equal(euler_step(x, v, ts[i : i + 1], ts[i + 1 : i + 2]), expected)


def _cfg_inputs(t: dict, step: int) -> dict[str, torch.Tensor]:
    return {b: t[f"cfg_in_{b}"][step] for b in ("cond", "drop_text", "uncond", "drop_audio")}


@each_case("sampler")
def test_guidance(case_name):
    _, t = _load(case_name)
    pattern = rf"cfg_out_(vanilla|apg)_text{NUM}_audio{NUM}(?:_mom{NUM}_thr{NUM})?"
    for key, m in _matching(t, pattern):
        text, audio = float(m[2]), float(m[3])
        # One state (two momentum buffers) shared over the steps on dim 0, as in a chunk.
        state = GuidanceState(float(m[4]), float(m[5])) if m[1] == "apg" else None
        steps = t[key].shape[0]
        outs = []
        for s in range(steps):
            preds = _cfg_inputs(t, s)
            # Only the branches the scheme runs are given, so a wrong branch choice fails.
            outs.append(combine_guidance({b: preds[b] for b in guidance_branches(text)}, text, audio, state))
        assert_close(f"{case_name} {key}", torch.stack(outs), t[key], tol=1e-5)


@each_case("sampler")
def test_adaptive_projected_guidance(case_name):
    c, t = _load(case_name)
    for key, m in _matching(t, rf"apg_out_(?:mom{NUM}|nomom)_thr{NUM}"):
        meaning = c["tensors"][key]["meaning"]
        eta = float(re.search(r"eta=([\d.]+)", meaning)[1])
        buffer = MomentumBuffer(float(m[1])) if m[1] is not None else None
        outs = [adaptive_projected_guidance(t["apg_diff"][s], t["cfg_in_cond"][s], buffer, eta=eta,
                                            norm_threshold=float(m[2]))
                for s in range(t[key].shape[0])]
        assert_close(f"{case_name} {key} (eta {eta})", torch.stack(outs), t[key], tol=1e-5)


@each_case("sampler")
def test_color_match(case_name):
    _, t = _load(case_name)
    for key, m in _matching(t, rf"color_out_strength{NUM}"):
        ours = match_and_blend_colors(t["color_source"], t["color_reference"], float(m[1]))
        assert ours.dtype == t["color_source"].dtype
        assert_close(f"{case_name} {key}", ours, t[key], tol=1e-4)
    assert match_and_blend_colors(t["color_source"], t["color_reference"], 0.0) is t["color_source"]


@each_case("sampler")
def test_resize_and_centercrop(case_name):
    _, t = _load(case_name)
    pil_out = t["resize_pil_out"]
    ours = resize_and_centercrop(Image.fromarray(t["resize_pil_in"].numpy()), tuple(pil_out.shape[-2:]))
    assert ours.dtype == torch.uint8 and ours.shape == pil_out.shape
    diff = (ours.int() - pil_out.int()).abs().max().item()
    record(f"{case_name} resize_pil_out: max |diff| = {diff} (uint8)")
    assert diff == 0

    tensor_out = t["resize_tensor_out"]
    ours = resize_and_centercrop(t["resize_tensor_in"], tuple(tensor_out.shape[-2:]))
    assert torch.equal(ours, tensor_out)
    record(f"{case_name} resize_tensor_out: bit-exact")


@pytest.mark.parametrize("size", ["480", "720"])
def test_pick_bucket_nearest_ratio(size):
    from infinitetalk_dist.pipeline.conditioning import BUCKETS

    table = BUCKETS[size]
    for key, hw in table.items():
        # An image of exactly the key's ratio picks that bucket.
        assert pick_bucket(int(float(key) * 1000), 1000, size) == hw
    ratios = sorted(float(k) for k in table)
    for lo, hi in zip(ratios, ratios[1:]):
        just_below_mid = (lo + hi) / 2 - 1e-3
        assert pick_bucket(int(just_below_mid * 10**6), 10**6, size) == table[f"{lo:.2f}"]
    assert pick_bucket(10, 10**6, size) == table[f"{ratios[0]:.2f}"]
    assert pick_bucket(10**6, 10, size) == table[f"{ratios[-1]:.2f}"]


def test_resize_crop_offsets_round_half_to_even():
    """torchvision's centre crop rounds the offset with Python's round (ties to even)."""
    x = torch.arange(7.0).view(1, 1, 7).expand(1, 7, 7).contiguous()
    assert resize_and_centercrop(x, (7, 2))[0, 0].tolist() == [2.0, 3.0]  # (7-2)/2 = 2.5 -> 2
    assert resize_and_centercrop(x, (7, 4))[0, 0].tolist() == [2.0, 3.0, 4.0, 5.0]  # 1.5 -> 2
    img = Image.fromarray(np.zeros((5, 9, 3), np.uint8))
    assert resize_and_centercrop(img, (10, 10)).shape == (1, 3, 1, 10, 10)


def test_speaker_masks():
    from infinitetalk_dist.pipeline.conditioning import speaker_masks

    # One speaker: all ones on the latent grid.
    assert torch.equal(speaker_masks((50, 70), (32, 48), (4, 6), speakers=1), torch.ones(3, 4, 6))

    # Two speakers from bboxes [x_min, y_min, x_max, y_max] where x indexes ROWS (reference
    # quirk). Source 8x8 -> target 8x8 -> latent 4x4 (nearest takes every other pixel).
    bboxes = [[0, 0, 4, 8], [4, 2, 8, 6]]  # speaker 1: top half; speaker 2: bottom rows, middle columns
    m = speaker_masks((8, 8), (8, 8), (4, 4), speakers=2, bboxes=bboxes)
    s1 = torch.zeros(4, 4)
    s1[:2] = 1
    s2 = torch.zeros(4, 4)
    s2[2:, 1:3] = 1
    assert torch.equal(m, torch.stack([s1, s2, 1 - s1 - s2]))

    # Without bboxes: left/right halves inset by face_scale (here 0: exact halves).
    m = speaker_masks((8, 8), (8, 8), (4, 4), speakers=2, face_scale=0.0)
    left = torch.zeros(4, 4)
    left[:, :2] = 1
    assert torch.equal(m, torch.stack([left, 1 - left, torch.zeros(4, 4)]))


def test_audio_window_indices():
    from infinitetalk_dist.pipeline.conditioning import audio_window_indices, audio_windows

    idx = audio_window_indices(0, 4, length=3)
    assert idx.tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2], [1, 2, 2, 2, 2]]
    emb = [torch.arange(10.0).view(10, 1), torch.arange(6.0).view(6, 1)]
    w = audio_windows(emb, 5, 3)
    assert w.shape == (2, 3, 5, 1)
    assert w[0, :, :, 0].tolist() == [[3, 4, 5, 6, 7], [4, 5, 6, 7, 8], [5, 6, 7, 8, 9]]
    assert w[1, :, :, 0].tolist() == [[3, 4, 5, 5, 5], [4, 5, 5, 5, 5], [5, 5, 5, 5, 5]]
