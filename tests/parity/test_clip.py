"""CLIP vision tower (penultimate block) against the reference golden cases."""

from __future__ import annotations

import re

import torch

from infinitetalk_dist.models.clip import CLIPVisionConfig, CLIPVisionEncoder
from infinitetalk_dist.models.state_dict_adapter import clip_visual_state_dict
from tests.parity.golden import assert_close, case, config, each_case, record, rel_l2, tensors, weights

BLOCK = re.compile(r"block(\d+)_out")


def _model(c: dict, dtype: torch.dtype = torch.float32) -> CLIPVisionEncoder:
    cfg = CLIPVisionConfig.from_dict(config(c))
    model = CLIPVisionEncoder(cfg).eval()
    model.load_state_dict(clip_visual_state_dict(weights(c), cfg.vision_layers), strict=True)
    return model.to(dtype)


@each_case("clip")
@torch.no_grad()
def test_clip_visual_parity(case_name):
    c = case(case_name)
    model = _model(c)
    image = tensors(c, "inputs.safetensors")["image"]
    inter = tensors(c, "intermediates.safetensors")
    out_golden = tensors(c, "outputs.safetensors")["out"]

    blocks = {int(m.group(1)): name for name in inter if (m := BLOCK.fullmatch(name))}
    assert blocks, "no block{i}_out intermediates in the case"
    captured: dict[int, torch.Tensor] = {}
    handles = [
        model.transformer[i].register_forward_hook(lambda _m, _a, out, i=i: captured.__setitem__(i, out))
        for i in blocks
    ]
    try:
        pixels = model.preprocess(image)
        out = model.encode(pixels)
    finally:
        for h in handles:
            h.remove()

    assert_close(f"{case_name}/preprocessed", pixels, inter["preprocessed"])
    for i, name in sorted(blocks.items()):
        assert_close(f"{case_name}/{name}", captured[i], inter[name])
    assert_close(f"{case_name}/out", out, out_golden)
    # forward() = preprocess + encode
    assert_close(f"{case_name}/forward", model(image), out_golden)


@each_case("clip")
@torch.no_grad()
def test_clip_visual_bf16(case_name):
    c = case(case_name)
    model = _model(c, torch.bfloat16)
    out = model(tensors(c, "inputs.safetensors")["image"])
    assert out.dtype == torch.bfloat16
    err = rel_l2(out, tensors(c, "outputs.safetensors")["out"])
    record(f"{case_name}/out bf16: rel L2 = {err:.2e} (bound 3e-2)")
    assert err < 3e-2
