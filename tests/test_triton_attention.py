"""The Triton attention kernel under Triton's CPU interpreter (the same kernel code the GPU runs).

Errors are measured against float64 attention and printed (``pytest -s`` shows them).
"""

import math
import os

import pytest
import torch

triton = pytest.importorskip("triton")

from infinitetalk_dist.kernels import attention  # noqa: E402
from infinitetalk_dist.kernels import triton_attention as ta  # noqa: E402
from tests.parity.golden import record, rel_l2  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and Triton's interpreter is off (tests/conftest.py turns it on)", allow_module_level=True)


# Bounds per precision on unit-variance inputs with logits of std ~2 (what the 14B DiT's
# RMS-normalised Q/K give); the GPU benchmark measures the same figures at full size. The
# tests feed float32: exact under the interpreter, TF32 tensor-core products on a GPU.
BOUNDS = {"bf16": 1e-5 if DEVICE == "cpu" else 3e-3, "int8": 2.5e-2, "fp8": 9e-2}


def qkv(b, lq, lk, h, d, seed=0, k_offset=0.0, logit_std=2.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g) * logit_std  # logits q.k/sqrt(d) of std logit_std
    k = torch.randn(b, lk, h, d, generator=g) + k_offset * torch.randn(1, 1, h, d, generator=g)
    v = torch.randn(b, lk, h, d, generator=g)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def reference(q, k, v):
    q, k, v = (t.cpu().double() for t in (q, k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


@pytest.mark.parametrize("precision", ["bf16", "int8", "fp8"])
@pytest.mark.parametrize("shape", [(2, 37, 45, 3, 32), (1, 16, 16, 2, 64), (1, 50, 7, 1, 32)])
def test_matches_float64_attention(precision, shape):
    q, k, v = qkv(*shape)
    err = rel_l2(ta.triton_attention(q, k, v, precision=precision), reference(q, k, v))
    record(f"triton attention {precision} {shape} on {DEVICE}: rel L2 {err:.2e} "
           f"(bound {BOUNDS[precision]:.0e})")
    assert err < BOUNDS[precision]


def test_low_precision_inputs():
    q, k, v = qkv(2, 33, 40, 2, 32, seed=1)
    ref = reference(q, k, v)
    for dtype, bound in ((torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)):
        out = ta.triton_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        assert out.dtype == dtype
        err = rel_l2(out, ref)
        print(f"triton bf16 kernel, {dtype} inputs: rel L2 {err:.2e}")
        assert err < bound


def test_smoothing_keeps_int8_exact_under_key_offsets():
    """A large shared offset on K (as the DiT's K has per channel) must not cost int8 accuracy:
    the kernel subtracts K's mean before quantising, which leaves each softmax row unchanged."""
    plain = rel_l2(ta.triton_attention(*qkv(1, 40, 48, 2, 32, seed=2), precision="int8"),
                reference(*qkv(1, 40, 48, 2, 32, seed=2)))
    q, k, v = qkv(1, 40, 48, 2, 32, seed=2, k_offset=30.0)
    shifted = rel_l2(ta.triton_attention(q, k, v, precision="int8"), reference(q, k, v))
    print(f"int8 rel L2: {plain:.2e} plain, {shifted:.2e} with a K offset of 30")
    assert shifted < 2 * plain + 1e-3


def test_strided_inputs_equal_contiguous():
    """Q, K and V as views into one packed projection (unit stride on head_dim only)."""
    b, l, h, d = 1, 21, 2, 32
    packed = torch.randn(b, l, 3, h, d, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    q, k, v = packed.unbind(2)
    assert not q.is_contiguous()
    for precision in ta.PRECISIONS:
        assert torch.equal(ta.triton_attention(q, k, v, precision=precision),
                           ta.triton_attention(q.contiguous(), k.contiguous(), v.contiguous(), precision=precision))


def test_quantize_round_trip():
    q, k, v = (t.cpu() for t in qkv(1, 70, 70, 2, 32, seed=4))
    q8, qs, k8, ks, vt8, vs = ta.quantize_qkv(q, k, v, 32, 16, qk_dtype=torch.int8)
    assert q8.dtype == torch.int8 and qs.shape == (1, 2, 3) and ks.shape == (1, 2, 5)
    deq = q8.float().view(1, 70, 2, 32) * qs.repeat_interleave(32, dim=2)[:, :, :70].transpose(1, 2)[..., None]
    assert (deq - q).abs().max() <= qs.max() / 2 + 1e-6  # int8 rounding: half a step
    assert vt8.shape == (1, 2, 32, 80) and vt8.dtype == torch.float8_e4m3fn  # tokens padded to 16
    v_back = vt8[..., :70].float().permute(0, 3, 1, 2) * vs[:, None]
    assert rel_l2(v_back, v.double()) < 3e-2  # e4m3: 3 mantissa bits


def test_bad_inputs_fail_clearly():
    q, k, v = qkv(1, 8, 8, 1, 32)
    with pytest.raises(ValueError, match="unknown precision"):
        ta.triton_attention(q, k, v, precision="int4")
    with pytest.raises(ValueError, match="shapes disagree"):
        ta.triton_attention(q, k[:, :, :, :16], v)
    with pytest.raises(ValueError, match="head_dim"):
        ta.triton_attention(q[..., :24], k[..., :24], v[..., :24])
    with pytest.raises(ValueError, match="head_dim >= 32"):
        ta.triton_attention(q[..., :16], k[..., :16], v[..., :16], precision="int8")
    assert ta.triton_attention(q[..., :16], k[..., :16], v[..., :16]).shape == (1, 8, 1, 16)  # bf16 takes 16
    if DEVICE == "cuda":  # on a GPU machine the interpreter is off: CPU tensors are refused
        with pytest.raises(ValueError, match="CUDA tensors"):
            ta.triton_attention(q.cpu(), k.cpu(), v.cpu())


def test_backends_fall_back_to_sdpa_off_gpu():
    q, k, v = (t.cpu() for t in qkv(1, 9, 9, 2, 16))
    for name in ("triton_int8", "triton_fp8"):
        assert torch.equal(attention(q, k, v, backend=name), attention(q, k, v))
