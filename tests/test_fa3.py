"""FlashAttention-3 backends (kernels/fa3.py): the fp8 quantisation on the CPU (what K
smoothing and per-channel V fix, exact descales, the emulation against exact attention), the
dispatch, and on a Hopper GPU with fa3-fwd the kernels against SDPA and the emulation."""

from __future__ import annotations

import pytest
import torch

from infinitetalk_dist.kernels import attention, resolve_backend
from infinitetalk_dist.kernels.fa3 import FP8_MAX, emulate_fp8, fa3_available, quantize_qkv


def _qkv(seed=0, b=1, l=384, h=4, d=64, k_offset=0.0, v_outlier=1.0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, l, h, d, generator=g) for _ in range(3))
    k = k + k_offset * torch.randn(1, 1, h, d, generator=g)  # a shared offset over tokens
    v[..., 3] *= v_outlier
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))


def _rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_descales_are_exact_and_values_fill_e4m3():
    q, k, v = _qkv(v_outlier=30.0)
    q8, k8, v8, q_s, k_s, v_s, v_out = quantize_qkv(q, k, v, v_channels=True)
    assert q8.dtype == k8.dtype == v8.dtype == torch.float8_e4m3fn
    assert q_s.shape == k_s.shape == v_s.shape == (1, 4) and v_out.shape == (1, 1, 4, 64)
    for x8 in (q8, k8, v8):
        assert float(x8.float().abs().max()) == FP8_MAX  # each scale maps its max onto 448
    # e4m3 keeps 3 mantissa bits: every value within 2^-4 relative (plus the subnormal floor)
    back = q8.float() * q_s[:, None, :, None]
    assert float(((back - q).abs() - q.abs() / 16).max()) <= q_s.max() * 2 ** -9 * FP8_MAX / 448 + 1e-6
    torch.testing.assert_close(v8.float() * v_out, v, rtol=1 / 16, atol=float(v_out.max()) * 2 ** -9)


def test_k_smoothing_cuts_the_error_and_v_channels_do_not_matter():
    q, k, v = _qkv(k_offset=8.0)
    exact = attention(q, k, v, backend="sdpa")
    plain, smooth = (_rel(emulate_fp8(q, k, v, smooth_k=s), exact) for s in (False, True))
    assert smooth < 0.5 * plain, (plain, smooth)  # K's shared offset no longer eats its precision
    assert smooth < 6e-2
    # e4m3 is a float format (2^15 of normal range): a 50x outlier channel in V costs the
    # others nothing, and the probabilities' rounding dominates. Per-channel V buys nothing.
    q, k, v = _qkv(v_outlier=50.0)
    exact = attention(q, k, v, backend="sdpa")
    per_head, per_channel = (_rel(emulate_fp8(q, k, v, v_channels=c), exact) for c in (False, True))
    assert abs(per_channel - per_head) < 0.1 * per_head, (per_head, per_channel)


def test_smoothing_alone_is_exact():
    q, k, v = _qkv(k_offset=8.0)
    shifted = k - k.mean(dim=1, keepdim=True)
    torch.testing.assert_close(attention(q, shifted, v, backend="sdpa"), attention(q, k, v, backend="sdpa"),
                               rtol=1e-4, atol=1e-5)


def test_dispatch_names_and_cpu_fallback():
    assert resolve_backend(None) == "auto"
    q, k, v = _qkv()
    for name in ("auto", "fa3", "fa3_fp8") if fa3_available() else ("auto",):
        assert torch.equal(attention(q, k, v, backend=name), attention(q, k, v, backend="sdpa"))
    if not fa3_available():
        with pytest.raises(ValueError, match="needs the package 'fa3_fwd_interface'"):
            resolve_backend("fa3")


def _hopper_fa3() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9 and fa3_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper_fa3(), reason="needs a Hopper GPU with fa3-fwd installed")
def test_fa3_kernels_on_hopper():
    q, k, v = _qkv(l=4096, h=8, d=128, k_offset=4.0, v_outlier=20.0, dtype=torch.bfloat16, device="cuda")
    exact = attention(q.float(), k.float(), v.float(), backend="sdpa")
    sdpa = attention(q, k, v, backend="sdpa")
    fa3 = attention(q, k, v, backend="fa3")
    assert attention(q, k, v, backend="auto").equal(fa3)  # the Hopper default
    assert _rel(fa3, exact) <= 1.5 * _rel(sdpa, exact) + 1e-3
    fp8 = attention(q, k, v, backend="fa3_fp8")
    # Quantised from the same bf16 tensors: the kernel sees exactly these Q, K, V; it rounds the
    # probabilities as the emulation does, block by block against a running max (other positions).
    emulated = emulate_fp8(q, k, v).float()
    assert _rel(fp8, exact) < 6e-2
    assert _rel(fp8, emulated) < 0.5 * _rel(emulated, exact) + 5e-3  # the kernel computes what we emulate
    compiled = torch.compile(lambda a, b, c: attention(a, b, c, backend="fa3_fp8"), fullgraph=True)
    # One opaque node in a compiled graph (fullgraph). Inductor quantises in float32 without
    # eager's intermediate bf16 roundings, so it lands on other e4m3 values: as accurate, not equal.
    assert _rel(compiled(q, k, v), exact) < 6e-2


def test_device_backend_makes_auto_concrete():
    from infinitetalk_dist.kernels import device_backend

    assert device_backend(None, "cpu") == "sdpa" and device_backend("auto", "cpu") == "sdpa"
    assert device_backend("flash2", "cpu") == "flash2"  # an explicit choice stays
    if torch.cuda.is_available():
        want = "fa3" if torch.cuda.get_device_capability()[0] == 9 and fa3_available() else "sdpa"
        assert device_backend(None, "cuda") == want
