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


@pytest.mark.parametrize("backend", ["cudnn", "flash3", "sage", "triton_int8", "triton_fp8"])
@torch.no_grad()
def test_attention_backends_match_sdpa(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not importable here")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 1000, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    ref = attention(q.float(), k.float(), v.float(), backend="sdpa")
    err = rel_l2(attention(q, k, v, backend=backend), ref)
    record(f"attention {backend} bf16 vs fp32 sdpa: rel L2 = {err:.2e}")
    assert err < {"sage": 5e-2, "triton_int8": 3e-2, "triton_fp8": 9e-2}.get(backend, 1e-2)


@each_case("dit")
@torch.no_grad()
def test_compiled_dit_with_triton_attention(case_name):
    """torch.compile'd blocks call the Triton kernel through its custom op (no graph break)."""
    from infinitetalk_dist.parallel import compile_blocks

    c = case(case_name)
    # The golden weights with half the heads: head_dim 32, what 8-bit MMAs need (the 14B has 128).
    model = InfiniteTalkDiT(DiTConfig.from_dict({**config(c), "num_heads": config(c)["num_heads"] // 2})).eval()
    model.load_state_dict(weights(c), strict=True)
    model = model.to("cuda", torch.bfloat16)
    inputs = _dit_inputs(c, torch.bfloat16)
    ref = model(**inputs)[0]
    model.set_attn_backend("triton_int8")
    compile_blocks(model)
    err = rel_l2(model(**inputs)[0], ref)
    record(f"{case_name} compiled DiT, triton_int8 attention vs eager sdpa (bf16): rel L2 = {err:.2e}")
    assert err < 5e-2


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


@pytest.mark.gpu
@torch.no_grad()
def test_cudnn_backend_really_runs_cudnn():
    """SDPA keeps its own priority unless told: the cudnn backend must not silently be flash."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 4096, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    assert not torch.equal(attention(q, k, v, backend="cudnn"), attention(q, k, v, backend="flash2"))


@pytest.mark.gpu
@torch.no_grad()
def test_fp8_scaled_mm_matches_the_cpu_emulation():
    from infinitetalk_dist.kernels.fp8 import Fp8Linear, fp8_supported

    if not fp8_supported("cuda"):
        pytest.skip("fp8 matmul needs compute capability >= 8.9")
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(512, 256).requires_grad_(False)
    lin.weight.copy_(torch.randn(256, 512, generator=g) / 20)
    x = torch.randn(100, 512, generator=g).bfloat16()  # the same input quantises the same way
    fp8 = Fp8Linear.from_linear(lin)
    emulated = fp8(x).float()
    on_gpu = fp8.cuda()(x.cuda()).float().cpu()
    err = rel_l2(on_gpu, emulated)
    record(f"fp8 linear: torch._scaled_mm vs CPU emulation: rel L2 = {err:.2e}")
    assert err < 5e-3  # bf16 output rounding and fast accumulation only
