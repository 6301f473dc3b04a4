"""GPU checks (run by hand on the lent GPU: ``pytest -m gpu``; CI has no GPU and skips them).

The golden DiT cases on CUDA in fp32 (same tolerance as on CPU) and bf16, every attention
backend available there against SDPA, and the VAE round trip on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from infinitetalk_dist.kernels import attention, available_backends
from infinitetalk_dist.models.dit import DiTConfig, InfiniteTalkDiT
from infinitetalk_dist.models.vae import VAEConfig, WanVAE
from tests.parity.golden import assert_close, case, config, each_case, record, rel_l2, tensors, weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _dit(c, dtype):
    model = InfiniteTalkDiT(DiTConfig.from_dict(config(c))).eval()
    model.load_state_dict(weights(c), strict=True)
    return model.to("cuda", dtype)


def _dit_inputs(c, dtype):
    i = tensors(c, "inputs.safetensors")
    return dict(x=i["x"][None].cuda().to(dtype), t=i["t"].cuda(), context=i["context_0"][None].cuda().to(dtype),
                clip_fea=i["clip_fea"].cuda().to(dtype), y=i["y"][None].cuda().to(dtype),
                audio=i["audio"][None].cuda().to(dtype), ref_target_masks=i["ref_target_masks"].cuda(),
                seq_len=c["seq_len"])


@each_case("dit")
@torch.no_grad()
def test_dit_golden_on_cuda(case_name):
    c = case(case_name)
    golden = tensors(c, "outputs.safetensors")["out"][0]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = _dit(c, torch.float32)(**_dit_inputs(c, torch.float32))[0]
    assert_close(f"{case_name} out (cuda fp32)", out, golden)
    out16 = _dit(c, torch.bfloat16)(**_dit_inputs(c, torch.bfloat16))[0]
    err = rel_l2(out16, golden)
    record(f"{case_name} out (cuda bf16): rel L2 vs fp32 golden = {err:.2e} (bound 2e-2)")
    assert err < 2e-2


@pytest.mark.parametrize("backend", ["cudnn", "flash3", "sage"])
@torch.no_grad()
def test_attention_backends_match_sdpa(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not importable here")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 1000, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    ref = attention(q.float(), k.float(), v.float(), backend="sdpa")
    err = rel_l2(attention(q, k, v, backend=backend), ref)
    record(f"attention {backend} bf16 vs fp32 sdpa: rel L2 = {err:.2e}")
    assert err < (5e-2 if backend == "sage" else 1e-2)


@each_case("vae")
@torch.no_grad()
def test_vae_golden_on_cuda(case_name):
    c = case(case_name)
    model = WanVAE(VAEConfig.from_dict(config(c))).eval()
    model.load_state_dict(weights(c), strict=True)
    model = model.cuda()
    inp, out = tensors(c, "inputs.safetensors"), tensors(c, "outputs.safetensors")
    assert_close(f"{case_name} latent (cuda fp32)", model.encode(inp["video"][None].cuda())[0], out["latent"])
    assert_close(f"{case_name} decoded (cuda fp32)", model.decode(out["latent"][None].cuda())[0], out["decoded"])
