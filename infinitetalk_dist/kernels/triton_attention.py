"""Flash-style softmax attention in Triton, bf16 or 8-bit, forward only.

Why our own kernel: the GPU image has no FlashAttention-3 or SageAttention-2 build, and the
8-bit attention issue 6 asks for needs a kernel whose quantisation we control. One kernel,
three precisions (fp32 accumulation throughout):

- ``"bf16"``: the classic online-softmax loop in the inputs' dtype.
- ``"int8"``: Q and K in int8 with one scale per 128-token block and head, K first smoothed by
  subtracting its mean over tokens (that shifts every logit of a row by the same amount, so
  the softmax is unchanged, and removes the channel offsets that dominate K's range --
  SageAttention's recipe); P @ V stays bf16.
- ``"fp8"``: Q and K the same way in e4m3, and P (scaled by 448) and V (one scale per
  channel) in e4m3 too, so both matmuls run on the fp8 tensor cores.

Measured on an H100 (``benchmarks/attention_kernels.py``, RESULTS.md): none beats cuDNN's
bf16 attention there -- the loop is bound by the softmax (exp2 on the special-function units
takes as long as a 128x128 fp8 tile's matmuls), not by the tensor cores -- so these are
options, not defaults.

Inputs are ``[B, L, H, D]`` (the models' layout; unit stride on D) and the output is
``[B, Lq, H, D]`` contiguous. Runs on CUDA, and on CPU under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how CI tests it.
"""

from __future__ import annotations

import math
import os

import torch

from .limits import MIN_HEAD_DIM_8BIT

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernels layer must import without Triton (CPU-only installs)
    triton = None

__all__ = ["MIN_HEAD_DIM_8BIT", "PRECISIONS", "quantize_qkv", "triton_attention", "triton_available"]

PRECISIONS = ("bf16", "int8", "fp8")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
LOG2E = 1.4426950408889634


def triton_available(device: torch.device | str) -> bool:
    """True when the kernel can run on ``device``: CUDA, or CPU under Triton's interpreter."""
    if triton is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def _blocks(precision: str, device: torch.device, head_dim: int) -> dict:
    """Tile sizes: measured on an H100 (benchmarks/attention_kernels.py); small on the CPU
    interpreter, where every program is simulated in numpy."""
    if device.type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
    if precision != "bf16":
        return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64 if head_dim > 64 else 128, num_warps=8, num_stages=3)


def quantize_qkv(q, k, v, block_m: int, block_n: int, qk_dtype: torch.dtype = FP8):
    """8-bit operands for the kernel (``qk_dtype``: ``torch.float8_e4m3fn`` or ``torch.int8``).

    Returns ``(q8 [B, Lq, H, D], q_scale [B, H, nM], k8 [B, Lk, H, D], k_scale [B, H, nN],
    vt8 [B, H, D, Lk_pad], v_scale [B, H, D])`` with ``q ~= q8 * q_scale`` per block of
    ``block_m`` tokens, ``k - mean_L(k) ~= k8 * k_scale`` per block of ``block_n`` tokens and
    ``v ~= vt8^T * v_scale`` per channel in e4m3 (``None, None`` when ``v`` is None). V is stored
    transposed (tokens contiguous): Hopper's fp8 matmul wants the reduced dimension contiguous
    in both operands.
    """
    b, lk, h, d = k.shape

    def per_block(x, block):
        n = -(-x.shape[1] // block)
        pad = n * block - x.shape[1]
        xf = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, 0, pad))
        blocks = xf.view(b, n, block, h, d)
        top = FP8_MAX if qk_dtype == FP8 else 127.0
        scale = blocks.abs().amax(dim=(2, 4)).clamp(min=1e-12) / top  # [B, n, H]
        x8 = blocks / scale[:, :, None, :, None]
        x8 = (x8 if qk_dtype == FP8 else x8.round()).to(qk_dtype).view(b, n * block, h, d)[:, : x.shape[1]]
        return x8, scale.transpose(1, 2).contiguous()

    q8, q_scale = per_block(q, block_m)
    k8, k_scale = per_block(k - k.float().mean(dim=1, keepdim=True).to(k.dtype), block_n)
    if v is None:
        return q8, q_scale, k8, k_scale, None, None
    lk_pad = -(-lk // 16) * 16  # 16-byte aligned rows of the transposed V
    vf = v.float()
    v_scale = vf.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX  # [B, H, D]
    vt8 = torch.zeros(b, h, d, lk_pad, dtype=FP8, device=v.device)
    vt8[..., :lk] = (vf / v_scale[:, None]).permute(0, 2, 3, 1).to(FP8)
    return q8, q_scale, k8, k_scale, vt8, v_scale.contiguous()


if triton is not None:

    @triton.jit
    def _attn_block(acc, m_i, l_i, q, k_ptrs, v_ptrs, start, sks, svs, LK, scale, KS, offs_n,
                    BLOCK_N: tl.constexpr, QUANT_QK: tl.constexpr, FP8_PV: tl.constexpr, MASKED: tl.constexpr):
        """One key/value block of the online softmax (base 2)."""
        if MASKED:  # the last, partial block only
            keep = (start + offs_n) < LK
            kt = tl.load(k_ptrs + start * sks, mask=keep[None, :], other=0.0)
            v = tl.load(v_ptrs + start * svs, mask=keep[:, None], other=0.0)
        else:
            kt = tl.load(k_ptrs + start * sks)
            v = tl.load(v_ptrs + start * svs)
        if QUANT_QK:
            scale = scale * tl.load(KS + start // BLOCK_N)
        if q.dtype == tl.int8:
            s = tl.dot(q, kt, out_dtype=tl.int32).to(tl.float32) * scale
        else:
            s = tl.dot(q, kt) * scale
        if MASKED:
            s = tl.where(keep[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if FP8_PV:
            p = p * 448.0  # probabilities use e4m3's whole range
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        return acc, m_new, l_i

    @triton.jit
    def _attn_fwd(
        Q, K, V, O, QS, KS, VS,
        sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, svd, sob, sos, soh,
        H, LQ, LK, N_QBLK, N_KBLK, qk_scale,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QUANT_QK: tl.constexpr,
        FP8_PV: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqs + offs_d[None, :], mask=offs_m[:, None] < LQ,
                    other=0.0)
        k_ptrs = K + b * skb + h * skh + offs_n[None, :] * sks + offs_d[:, None]  # K^T tile [D, BLOCK_N]
        v_ptrs = V + b * svb + h * svh + offs_n[:, None] * svs + offs_d[None, :] * svd  # [BLOCK_N, D]
        scale = qk_scale  # softmax scale * log2(e): the loop works in base 2
        if QUANT_QK:
            scale = scale * tl.load(QS + bh * N_QBLK + pid_m)
        ks = KS + bh * N_KBLK
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        full = (LK // BLOCK_N) * BLOCK_N
        for start in range(0, full, BLOCK_N):
            acc, m_i, l_i = _attn_block(acc, m_i, l_i, q, k_ptrs, v_ptrs, start, sks, svs, LK, scale, ks, offs_n,
                                        BLOCK_N, QUANT_QK, FP8_PV, False)
        if full < LK:
            acc, m_i, l_i = _attn_block(acc, m_i, l_i, q, k_ptrs, v_ptrs, full, sks, svs, LK, scale, ks, offs_n,
                                        BLOCK_N, QUANT_QK, FP8_PV, True)
        out = acc / l_i[:, None]
        if FP8_PV:
            out = out * (tl.load(VS + bh * D + offs_d)[None, :] / 448.0)
        tl.store(O + b * sob + h * soh + offs_m[:, None] * sos + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < LQ)


def triton_attention(q, k, v, scale: float | None = None, precision: str = "bf16", blocks: dict | None = None):
    """``softmax(q k^T * scale) v`` for ``[B, L, H, D]`` tensors with the Triton kernel.

    ``precision``: ``"bf16"`` (operands in q's dtype: fp16/bf16/fp32), ``"int8"`` or ``"fp8"``
    (see the module doc). ``blocks`` overrides the tile sizes (benchmarks).
    """
    if triton is None:
        raise RuntimeError("the triton attention backend needs the 'triton' package")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if not triton_available(q.device):
        raise ValueError("triton attention runs on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1)")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    if k.shape != (b, lk, h, d) or v.shape != k.shape:
        raise ValueError(f"attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if d not in (16, 32, 64, 128) or lk == 0:
        raise ValueError(f"triton attention takes head_dim 16/32/64/128 and at least one key, got {d}, {lk}")
    if d < MIN_HEAD_DIM_8BIT and precision != "bf16":
        raise ValueError(f"8-bit triton attention needs head_dim >= {MIN_HEAD_DIM_8BIT} (8-bit MMA depth), got {d}")
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        # Triton's interpreter multiplies bf16 tiles wrongly (raw bits); fp32 there only.
        return triton_attention(q.float(), k.float(), v.float(), scale, precision, blocks).to(q.dtype)
    cfg = dict(blocks or _blocks(precision, q.device, d))
    bm, bn = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    scale = (1.0 / math.sqrt(d) if scale is None else scale) * LOG2E
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(b, lq, h, d, dtype=q.dtype, device=q.device)
    n_q, n_k = triton.cdiv(lq, bm), triton.cdiv(lk, bn)
    q_op, k_op, v_op = q, k, v
    qs = ks = vs = q  # scale pointers the bf16 kernel does not read
    if precision != "bf16":
        q_op, qs, k_op, ks, vt8, v_scale = quantize_qkv(q, k, v if precision == "fp8" else None, bm, bn,
                                                        torch.int8 if precision == "int8" else FP8)
    if precision == "fp8":
        v_op, vs = vt8, v_scale
        vstr = (v_op.stride(0), 1, v_op.stride(1), v_op.stride(2))  # token stride 1, channel stride Lk_pad
    else:
        vstr = (v.stride(0), v.stride(1), v.stride(2), 1)
    _attn_fwd[(n_q, b * h)](
        q_op, k_op, v_op, out, qs, ks, vs,
        q_op.stride(0), q_op.stride(1), q_op.stride(2), k_op.stride(0), k_op.stride(1), k_op.stride(2), *vstr,
        out.stride(0), out.stride(1), out.stride(2),
        h, lq, lk, n_q, n_k, scale,
        D=d, BLOCK_M=bm, BLOCK_N=bn, QUANT_QK=precision != "bf16", FP8_PV=precision == "fp8", **cfg,
    )
    return out
