"""FlashAttention-3 (Hopper) in bf16 and fp8 e4m3, from the ``fa3-fwd`` package.

``fa3-fwd`` (import ``fa3_fwd_interface``) is FlashAttention-3's forward kernel alone, built
on torch's stable ABI: it loads under the GPU image's torch unchanged (the ``[hopper]`` extra).
Both paths go through one custom op, so a compiled block keeps the call as one node.

The fp8 path quantises Q, K and V itself, because the kernel takes one descale per
(batch, head) and FA3's e4m3 has 3 mantissa bits:

- **K smoothing**: ``K - mean_tokens(K)`` per (batch, head, channel). Every logit of a query
  row moves by the same ``q . mean`` and softmax is unchanged, but K's range (often a large
  shared offset) shrinks before it is rounded.
- Q, K and V: one scale per (batch, head), the finest the kernel takes. V per channel (divide
  by each channel's max, multiply the output back: exact) is there as an option and buys
  nothing: e4m3 is a float format with 2^15 of normal range, so an outlier channel costs the
  others no precision, and the rounding of the probabilities dominates the error
  (tests/test_fa3.py).

:func:`emulate_fp8` runs the same quantisation and the kernel's rounding of the softmax
probabilities to e4m3 in float32 on any device: CPU tests and the golden tiny DiT measure
the error of each choice without a GPU; the GPU tests check the kernel against it.
"""

from __future__ import annotations

import importlib.util

import torch

__all__ = ["fa3_available", "fa3_attention", "fa3_supports", "emulate_fp8", "quantize_qkv"]

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
FA3_PACKAGE = "fa3_fwd_interface"
_INSTALLED = importlib.util.find_spec(FA3_PACKAGE) is not None  # once: _auto asks on every call
_HEAD_DIMS = (64, 96, 128, 192, 256)  # the head dims this build has kernels for


def fa3_available(device: torch.device | str | None = None) -> bool:
    """fa3-fwd imports (and, given a ``device``, it is a Hopper GPU: the kernels are sm90 only)."""
    if not _INSTALLED:
        return False
    if device is None:
        return True
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def fa3_supports(q: torch.Tensor) -> bool:
    """bf16 CUDA tensors of a head dim the kernel has (this wheel has no fp16 kernels). Plain
    attribute checks: it runs inside compiled blocks."""
    return q.is_cuda and q.dtype == torch.bfloat16 and q.shape[-1] in _HEAD_DIMS


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, smooth_k: bool = True,
                 v_channels: bool = False):
    """``[B, L, H, D]`` Q, K, V -> e4m3 tensors, the kernel's float32 descales ``[B, H]`` and
    the per-channel V scale ``[B, 1, H, D]`` to multiply the output by (None without
    ``v_channels``). Plain torch ops in the inputs' dtype (a compiled block fuses them); each
    scale is rounded to that dtype first, so the descale is exactly what was divided by."""
    if smooth_k:
        k = k - k.mean(dim=1, keepdim=True, dtype=torch.float32).to(k.dtype)

    def to_fp8(x, s):
        s = (s.float().clamp(min=1e-12) / FP8_MAX).to(x.dtype)
        return (x / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s.float()

    def per_head(x):  # one scale per (batch, head), over tokens and channels
        x8, s = to_fp8(x, x.abs().amax(dim=(1, 3), keepdim=True))
        return x8, s[:, 0, :, 0]

    q8, q_s = per_head(q)
    k8, k_s = per_head(k)
    if not v_channels:
        v8, v_s = per_head(v)
        return q8, k8, v8, q_s, k_s, v_s, None
    v8, v_out = to_fp8(v, v.abs().amax(dim=1, keepdim=True))
    return q8, k8, v8, q_s, k_s, torch.ones_like(q_s), v_out


def emulate_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *,
                smooth_k: bool = True, v_channels: bool = False) -> torch.Tensor:
    """What the fp8 path computes, in float32 on any device: the quantised Q, K, V, the
    probabilities rounded to e4m3 before the P.V product (FA3 fp8 does so; the row sums stay
    exact). ``[B, L, H, D]`` in, q's dtype out."""
    q8, k8, v8, q_s, k_s, v_s, v_out = quantize_qkv(q, k, v, smooth_k=smooth_k, v_channels=v_channels)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qd = q8.float() * q_s[:, None, :, None]
    kd = k8.float() * k_s[:, None, :, None]
    logits = torch.einsum("blhd,bmhd->bhlm", qd, kd) * scale
    p = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    out = torch.einsum("bhlm,bmhd->blhd", p.to(FP8).float(), v8.float()) / p.sum(-1).transpose(1, 2)[..., None]
    out = out * v_s[:, None, :, None]
    if v_out is not None:
        out = out * v_out
    return out.to(q.dtype)


@torch.library.custom_op("infinitetalk::fa3", mutates_args=())
def _fa3_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, q_descale: torch.Tensor | None,
            k_descale: torch.Tensor | None, v_descale: torch.Tensor | None) -> torch.Tensor:
    # One opaque node for torch.compile; the fp8 quantisation stays outside it (fused there).
    from fa3_fwd_interface import flash_attn_func

    out = flash_attn_func(q, k, v, softmax_scale=scale, q_descale=q_descale, k_descale=k_descale,
                          v_descale=v_descale)
    return out[0] if isinstance(out, tuple) else out


@_fa3_op.register_fake
def _(q, k, v, scale, q_descale, k_descale, v_descale):
    return torch.empty(q.shape, dtype=torch.bfloat16, device=q.device)  # fp8 in, bf16 out


def fa3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                  *, fp8: bool = False, smooth_k: bool = True) -> torch.Tensor:
    """Attention of ``[B, L, H, D]`` bf16 CUDA tensors by FlashAttention-3 (``fp8``: Q, K, V in
    e4m3, quantised as the module says; ``smooth_k=False`` only to measure what it gains)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not fp8:
        return _fa3_op(q, k, v, scale, None, None, None)
    q8, k8, v8, q_s, k_s, v_s, _ = quantize_qkv(q, k, v, smooth_k=smooth_k)  # per-head V: no output scale
    return _fa3_op(q8, k8, v8, scale, q_s, k_s, v_s).to(q.dtype)
