"""8-bit weight-only linear layers in optimum-quanto's format (the official quantised DiTs).

MeiGen-AI/InfiniteTalk's ``quant_models/*.safetensors`` were written by optimum-quanto
(``quantize(model, weights=qint8 | qfloat8); freeze(model)``): each quantised ``nn.Linear``
``X`` is stored as ``X.weight._data`` (int8 or float8 e4m3, ``[out, in]``), ``X.weight._scale``
(one scale per output row, ``[out, 1]``), ``X.bias`` and the unused activation scales
``X.input_scale`` / ``X.output_scale``; a JSON map names the quantised modules. quanto's
weight-only matmul is ``x @ (scale * W)^T + b`` in the scale's dtype, and so is this layer's,
so optimum-quanto is not needed at run time. The 8-bit weight stays resident (half the bf16
bytes); one layer's dequantised weight exists only during its call.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["QUANTO_WEIGHTS", "WeightQuantLinear"]

# quanto's weight type names in a quantisation map -> the stored data dtype.
QUANTO_WEIGHTS = {"qint8": torch.int8, "qfloat8": torch.float8_e4m3fn, "qfloat8_e4m3fn": torch.float8_e4m3fn}


class WeightQuantLinear(nn.Module):
    """An ``nn.Linear`` whose weight is ``weight_scale * weight_data`` (8-bit data, one scale
    per output row). Buffers, not parameters: nothing here is trained or cast by ``.to(dtype)``
    callers that mean the model's compute dtype (cast ``weight_scale`` explicitly)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, data_dtype: torch.dtype,
                 scale_dtype: torch.dtype, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_data", torch.empty(out_features, in_features, dtype=data_dtype, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, 1, dtype=scale_dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=scale_dtype, device=device),
                                 requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # quanto's order: scale the weight, matmul, then add the bias (same rounding as quanto)
        w = self.weight_scale * self.weight_data.to(self.weight_scale.dtype)
        out = torch.matmul(x.to(w.dtype), w.t())
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, data={self.weight_data.dtype}")
