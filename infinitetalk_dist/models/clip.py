"""CLIP image encoder (open-clip XLM-RoBERTa ViT-H/14 vision tower) for the conditioning frame.

InfiniteTalk feeds the DiT with the hidden states after the *penultimate* transformer block
(``use_31_block=True`` in the reference), with no final LayerNorm and no projection head. So this
module builds only what runs: patch/cls/position embeddings, ``pre_norm`` and ``vision_layers - 1``
blocks. Parameter names are the reference ``VisionTransformer`` names without the ``visual.``
prefix; ``state_dict_adapter.clip_visual_state_dict`` turns a full checkpoint into ours.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from infinitetalk_dist.kernels import attention

__all__ = ["CLIPVisionConfig", "CLIPVisionEncoder", "clip_vit_h14", "clip_tiny"]

# OpenAI CLIP normalisation constants (the reference uses them for every non-SigLIP model).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPVisionConfig:
    """Vision-tower hyper-parameters; field names follow the golden ``config.json``."""

    embed_dim: int = 1024  # joint embedding size (only the unused head has it)
    image_size: int = 224
    patch_size: int = 14
    vision_dim: int = 1280
    vision_mlp_ratio: float = 4
    vision_heads: int = 16
    vision_layers: int = 32  # blocks in the checkpoint; we build vision_layers - 1 of them
    vision_pool: str = "token"
    activation: str = "gelu"
    vision_pre_norm: bool = True
    vision_post_norm: bool = False  # blocks normalise the residual branch's output instead
    norm_eps: float = 1e-5
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPVisionConfig":
        """Build from a config dict; unknown keys (text tower, builder notes) are ignored.

        ``transforms_mean`` / ``transforms_std`` map to ``mean`` / ``std``.
        """
        d = dict(d)
        if "transforms_mean" in d:
            d["mean"] = d.pop("transforms_mean")
        if "transforms_std" in d:
            d["std"] = d.pop("transforms_std")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for k in ("mean", "std"):
            if k in kwargs:
                kwargs[k] = tuple(float(x) for x in kwargs[k])
        return cls(**kwargs)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def has_cls_token(self) -> bool:
        return self.vision_pool in ("token", "token_fc")

    @property
    def num_tokens(self) -> int:
        return self.grid**2 + (1 if self.has_cls_token else 0)


def clip_vit_h14() -> CLIPVisionConfig:
    """open-clip-xlm-roberta-large-vit-huge-14 (``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``)."""
    return CLIPVisionConfig()


def clip_tiny() -> CLIPVisionConfig:
    """A few-kilobyte tower for unit tests."""
    return CLIPVisionConfig(
        embed_dim=24, image_size=56, patch_size=14, vision_dim=32, vision_heads=4, vision_layers=3
    )


class _FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 and cast back (as the reference does for half weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(dim, hidden)
        self.fc3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


class _SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, backend: str | None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"vision_dim {dim} is not divisible by vision_heads {num_heads}")
        self.num_heads = num_heads
        self.backend = backend
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.to_qkv(x), "b s (three n d) -> three b s n d", three=3, n=self.num_heads)
        out = attention(q, k, v, backend=self.backend)
        return self.proj(rearrange(out, "b s n d -> b s (n d)"))


class _Block(nn.Module):
    def __init__(self, cfg: CLIPVisionConfig, backend: str | None):
        super().__init__()
        dim, hidden = cfg.vision_dim, int(cfg.vision_dim * cfg.vision_mlp_ratio)
        self.post_norm = cfg.vision_post_norm
        self.norm1 = _FP32LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = _SelfAttention(dim, cfg.vision_heads, backend)
        self.norm2 = _FP32LayerNorm(dim, eps=cfg.norm_eps)
        if cfg.activation == "swi_glu":
            self.mlp = _SwiGLU(dim, hidden)
        elif cfg.activation in ("gelu", "quick_gelu"):
            act = nn.GELU() if cfg.activation == "gelu" else _QuickGELU()
            # Sequential indices (0, 2) are the checkpoint's names; index 3 was a Dropout.
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), act, nn.Linear(hidden, dim))
        else:
            raise ValueError(f"unknown activation {cfg.activation!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = x + self.norm1(self.attn(x))
            return x + self.norm2(self.mlp(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CLIPVisionEncoder(nn.Module):
    """Vision tower up to the penultimate block: image ``[B,3,F,H,W]`` in [-1,1] -> tokens.

    ``forward`` returns ``[B*F, num_tokens, vision_dim]`` (``F`` is 1 in the pipeline, which passes
    the conditioning frame), ``num_tokens = 1 + (image_size/patch_size)^2``.
    """

    def __init__(self, cfg: CLIPVisionConfig, attention_backend: str | None = None):
        super().__init__()
        if cfg.vision_pool not in ("token", "token_fc", "attn_pool"):
            raise ValueError(f"unknown vision_pool {cfg.vision_pool!r}")
        if cfg.vision_layers < 2:
            raise ValueError("the penultimate-block output needs vision_layers >= 2")
        self.cfg = cfg
        dim = cfg.vision_dim
        # Shapes only; real values always come from a checkpoint.
        self.patch_embedding = nn.Conv2d(
            3, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=not cfg.vision_pre_norm
        )
        if cfg.has_cls_token:
            self.cls_embedding = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_tokens, dim) / math.sqrt(dim))
        self.pre_norm = _FP32LayerNorm(dim, eps=cfg.norm_eps) if cfg.vision_pre_norm else None
        self.transformer = nn.Sequential(*(_Block(cfg, attention_backend) for _ in range(cfg.vision_layers - 1)))

    def set_attn_backend(self, name: str | None) -> None:
        """Switch every attention call of the tower to kernel backend ``name``."""
        for m in self.modules():
            if isinstance(m, _SelfAttention):
                m.backend = name

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``[B,3,F,H,W]`` in [-1,1] -> normalised ``[B*F,3,S,S]`` float32 (S = image_size).

        Bicubic resize without antialias (align_corners=False), map to [0,1], then
        ``(x - mean) / std`` -- in that order, as the reference (torchvision Normalize) does.
        """
        if image.ndim != 5 or image.shape[1] != 3:
            raise ValueError(f"expected an image [B, 3, F, H, W], got {tuple(image.shape)}")
        x = rearrange(image.float(), "b c f h w -> (b f) c h w")
        size = (self.cfg.image_size, self.cfg.image_size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        x = x * 0.5 + 0.5
        # Not buffers: a model cast to bf16 would round the constants too.
        mean = torch.tensor(self.cfg.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``[N,3,S,S]`` -> penultimate-block hidden states ``[N, tokens, dim]``."""
        x = pixels.to(self.patch_embedding.weight.dtype)
        x = rearrange(self.patch_embedding(x), "n c h w -> n (h w) c")
        if self.cfg.has_cls_token:
            x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if x.shape[1] != self.pos_embedding.shape[1]:
            raise ValueError(f"{x.shape[1]} tokens but {self.pos_embedding.shape[1]} position embeddings")
        x = x + self.pos_embedding.to(x.dtype)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        return self.transformer(x)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode(self.preprocess(image))
