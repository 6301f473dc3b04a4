"""One place that picks the attention kernel for every model.

All models call :func:`attention` with ``[batch, seq, heads, head_dim]`` tensors (the layout
Wan's reference code uses). ``sdpa`` (torch's scaled_dot_product_attention) is the default and
runs on any device; faster backends are used only when their package imports and the inputs
suit them. A model stores its backend name, or the ``INFINITETALK_ATTENTION`` environment
variable sets the process default; ``auto`` (the default) is FlashAttention-3 (``fa3``,
:mod:`.fa3`) for bf16 inputs on Hopper when ``fa3-fwd`` is installed, else ``sdpa``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .fa3 import FA3_PACKAGE, fa3_attention, fa3_available, fa3_supports
from .limits import MIN_HEAD_DIM_8BIT

ATTENTION_BACKENDS = ("auto", "sdpa", "cudnn", "flash2", "flash3", "fa3", "fa3_fp8", "sage", "triton_int8", "triton_fp8")
_ENV = "INFINITETALK_ATTENTION"
_HALF = (torch.float16, torch.bfloat16)


def _sdpa(q, k, v, mask, scale):
    # SDPA wants [B, H, L, D].
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)


def _cudnn(q, k, v, mask, scale):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # set_priority: without it SDPA keeps its own order (FlashAttention-2 first) and cuDNN is
    # never picked while flash is allowed. Flash stays as the fallback for shapes cuDNN refuses.
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True):
        return _sdpa(q, k, v, mask, scale)


def _flash2(q, k, v, mask, scale):
    """PyTorch's FlashAttention-2 only: what the reference runs (flash_attn 2), the benchmarks'
    baseline. SDPA's own pick on Hopper is cuDNN when it takes the shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if mask is not None:
        return _sdpa(q, k, v, mask, scale)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return _sdpa(q, k, v, mask, scale)


def _flash3(q, k, v, mask, scale):
    from flash_attn_interface import flash_attn_func  # FlashAttention-3 (Hopper)

    if mask is not None:
        return _sdpa(q, k, v, mask, scale)
    out = flash_attn_func(q, k, v, softmax_scale=scale)
    return out[0] if isinstance(out, tuple) else out


def _fa3(fp8: bool) -> Callable:
    def run(q, k, v, mask, scale):
        if mask is not None or not fa3_supports(q):
            return _sdpa(q, k, v, mask, scale)
        return fa3_attention(q, k, v, scale, fp8=fp8)

    return run


def _auto(q, k, v, mask, scale):
    # Picked per call (eager callers that never resolved it); models resolve it once for their
    # device (device_backend), so compiled blocks see a fixed kernel.
    if mask is None and fa3_supports(q) and fa3_available(q.device):
        return fa3_attention(q, k, v, scale)
    return _sdpa(q, k, v, mask, scale)


def _sage(q, k, v, mask, scale):
    from sageattention import sageattn  # 8-bit attention

    if mask is not None:
        return _sdpa(q, k, v, mask, scale)
    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False, sm_scale=scale)


@torch.library.custom_op("infinitetalk::triton_attention", mutates_args=())
def _triton_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, precision: str) -> torch.Tensor:
    # A custom op: torch.compile'd blocks call it as one opaque node instead of tracing the
    # quantisation and the kernel launch.
    from .triton_attention import triton_attention

    return triton_attention(q, k, v, scale, precision)


@_triton_op.register_fake
def _(q, k, v, scale, precision):
    return q.new_empty(q.shape)


def _triton(precision: str) -> Callable:
    """Our Triton kernel with 8-bit Q/K (``int8``) or Q/K/P/V (``fp8``); see triton_attention."""

    def run(q, k, v, mask, scale):
        if mask is not None or q.shape[-1] < MIN_HEAD_DIM_8BIT:
            return _sdpa(q, k, v, mask, scale)
        return _triton_op(q, k, v, q.shape[-1] ** -0.5 if scale is None else scale, precision)

    return run


_IMPL: dict[str, Callable] = {"auto": _auto, "sdpa": _sdpa, "cudnn": _cudnn, "flash2": _flash2, "flash3": _flash3,
                              "fa3": _fa3(False), "fa3_fp8": _fa3(True), "sage": _sage,
                              "triton_int8": _triton("int8"), "triton_fp8": _triton("fp8")}
_PACKAGE = {"flash3": "flash_attn_interface", "fa3": FA3_PACKAGE, "fa3_fp8": FA3_PACKAGE,
            "sage": "sageattention", "triton_int8": "triton", "triton_fp8": "triton"}


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends usable on ``device`` in this process."""
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    names = ["auto", "sdpa"]
    if cuda:
        names += ["cudnn", "flash2"]
        names += [n for n, pkg in _PACKAGE.items() if importlib.util.find_spec(pkg) is not None]
    return names


def resolve_backend(name: str | None = None) -> str:
    """Validate a backend name; ``None`` means the env default, else ``auto`` (picked per call:
    FlashAttention-3 where it runs, else SDPA)."""
    name = name or os.environ.get(_ENV) or "auto"
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    if name in _PACKAGE and importlib.util.find_spec(_PACKAGE[name]) is None:
        raise ValueError(f"attention backend {name!r} needs the package {_PACKAGE[name]!r}")
    return name


def device_backend(name: str | None, device: torch.device | str) -> str:
    """:func:`resolve_backend`, with ``auto`` made concrete for ``device``: ``fa3`` on a Hopper
    GPU with fa3-fwd installed, else ``sdpa`` (bf16-only kernels fall back per call)."""
    name = resolve_backend(name)
    if name == "auto":
        name = "fa3" if fa3_available(device) else "sdpa"
    return name


def key_padding_mask(k_lens: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """Boolean mask [B, 1, q_len, k_len]: True where key j < k_lens[b] (attended)."""
    keep = torch.arange(k_len, device=k_lens.device)[None, :] < k_lens[:, None]
    return keep[:, None, None, :].expand(-1, 1, q_len, k_len)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    k_lens: torch.Tensor | int | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Softmax attention on ``[B, L, H, D]`` tensors; ``k_lens`` excludes padded keys.

    ``k_lens``: an int (every row attends to its first ``k_lens`` keys) or a per-row tensor.

    ``scale`` defaults to ``1/sqrt(D)``. Output has q's dtype and layout.
    """
    name = backend or resolve_backend(None)
    if name != "sdpa" and (q.device.type != "cuda" or q.dtype not in _HALF):
        name = "sdpa"  # those kernels take only fp16/bf16 CUDA tensors
    mask = None
    if isinstance(k_lens, int):
        # One length for every row: slicing the keys is exact and keeps the fast mask-free
        # kernels (a mask switches kernels, which round differently), with no host sync.
        k, v = k[:, :k_lens], v[:, :k_lens]
    elif k_lens is not None:
        mask = key_padding_mask(k_lens.to(q.device), q.shape[1], k.shape[1])
    return _IMPL[name](q, k, v, mask, scale).to(q.dtype)
