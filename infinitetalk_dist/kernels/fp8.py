"""fp8 (e4m3) linear layers with per-row scaling, for Hopper's fp8 tensor cores.

Weights are quantised once, one scale per output row; activations per token (row) on each
call. ``y = (x_q * s_x) @ (W_q * s_w)^T + b``, accumulated by ``torch._scaled_mm`` on CUDA
(fp32 accumulation of fp8 products, ~1.8x the bf16 matmul rate on an H100). Elsewhere (CPU,
older GPUs) the same quantised numbers are dequantised and multiplied in float32, so the
quantisation itself is tested on CPU and the error a user sees is the same.

Per-row (not per-tensor) scales keep one outlier token or channel from crushing the others;
this is the recipe torchao calls "rowwise".
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FP8_MAX", "Fp8Linear", "fp8_supported", "quantize_rows"]

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


def fp8_supported(device: torch.device | str) -> bool:
    """``torch._scaled_mm`` with row-wise scales: CUDA compute capability >= 8.9 (Ada, Hopper)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` -> (fp8 ``[M, K]``, float32 scales ``[M, 1]``) with ``x ~= q * scale``."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """Drop-in for an ``nn.Linear`` whose weight is stored in fp8 with per-output-row scales.

    Build with :meth:`from_linear`; the output has the input's dtype. ``in_features`` and
    ``out_features`` must be multiples of 16 (the fp8 matmul's alignment).
    """

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        if self.in_features % 16 or self.out_features % 16:
            raise ValueError(f"fp8 linear needs sizes that are multiples of 16, got {tuple(weight_fp8.shape)}")
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale.reshape(1, -1).float())  # [1, N]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        q, scale = quantize_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, sx = quantize_rows(x.reshape(-1, self.in_features))
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.bfloat16
        if x.is_cuda and fp8_supported(x.device):
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            y = torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=bias,
                                 out_dtype=torch.bfloat16, use_fast_accum=True).to(dtype)
        else:  # the same quantised numbers, multiplied in float32
            w = self.weight_fp8.float() * self.weight_scale.t()
            y = F.linear(xq.float() * sx, w, None if self.bias is None else self.bias.float()).to(dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 row-scaled"
