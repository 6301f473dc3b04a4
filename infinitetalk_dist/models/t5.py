"""umT5-XXL text encoder (encoder half only), as Wan/InfiniteTalk use it for the prompt.

Written here rather than taken from transformers' UMT5EncoderModel, which would need key renaming and brings its own attention: ours loads the official ``models_t5_umt5-xxl-enc-bf16.pth`` unchanged.

Parameter names equal the reference ``T5Encoder`` state-dict keys (``token_embedding``,
``blocks.{i}.{norm1,attn.{q,k,v,o},norm2,ffn.{gate.0,fc1,fc2},pos_embedding.embedding}``, ``norm``).
umT5 specifics: every block owns its relative-position table (``shared_pos=False``), attention is
unscaled, the FFN is gated with tanh-GELU, norms are RMS norms without mean or bias.
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

__all__ = ["T5Config", "UMT5Encoder", "umt5_xxl_encoder", "umt5_tiny_encoder"]


@dataclass
class T5Config:
    """Encoder hyper-parameters; names follow the golden ``config.json``."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    encoder_layers: int = 24
    num_buckets: int = 32
    shared_pos: bool = False
    dropout: float = 0.1  # kept for the record; inference only, so never applied
    text_len: int = 512  # the pipeline pads/truncates prompts to this many tokens
    relative_max_dist: int = 128
    layernorm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "T5Config":
        """Build from a config dict; unknown keys (builder notes, decoder sizes) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def umt5_xxl_encoder() -> T5Config:
    """google/umt5-xxl encoder as shipped with Wan2.1 (``models_t5_umt5-xxl-enc-bf16.pth``)."""
    return T5Config()


def umt5_tiny_encoder() -> T5Config:
    """A few-kilobyte encoder for unit tests."""
    return T5Config(vocab_size=100, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, encoder_layers=2, text_len=24)


class _RMSNorm(nn.Module):
    """T5 LayerNorm: ``weight * x / rms(x)`` (statistics in float32, no mean, no bias)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.type_as(self.weight)
        return self.weight * x


class _TanhGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """In float16 only: if any value overflowed to inf, clamp everything to +-(max - 1000).

    Same rule as the reference, written without a host sync (``torch.where`` on the flag).
    """
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return torch.where(torch.isinf(x).any(), x.clamp(-limit, limit), x)


class _RelativePositionBias(nn.Module):
    """Bidirectional bucketed relative-position bias, one learned scalar per (bucket, head)."""

    def __init__(self, num_buckets: int, num_heads: int, max_dist: int):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_dist = max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, lq: int, lk: int, device: torch.device) -> torch.Tensor:
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        half = self.num_buckets // 2  # keys after the query use the upper half of the table
        out = (rel > 0).long() * half
        dist = rel.abs()
        exact = half // 2  # distances below this get a bucket each; beyond, log-spaced up to max_dist
        log_ratio = torch.log(dist.clamp(min=1).float() / exact) / math.log(self.max_dist / exact)
        far = (exact + (log_ratio * (half - exact)).long()).clamp(max=half - 1)
        return out + torch.where(dist < exact, dist, far)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        """``[1, heads, lq, lk]`` bias."""
        idx = self.buckets(lq, lk, self.embedding.weight.device)
        return rearrange(self.embedding(idx), "q k n -> 1 n q k")


class _Attention(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        if cfg.dim_attn % cfg.num_heads:
            raise ValueError(f"dim_attn {cfg.dim_attn} is not divisible by num_heads {cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.o = nn.Linear(cfg.dim_attn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``bias`` is the additive ``[B or 1, heads, L, L]`` position bias + key-padding mask.

        Not routed through ``kernels.attention``: that dispatch takes only ``k_lens`` and has no
        additive bias, which T5's relative positions need; torch SDPA takes it as a float
        ``attn_mask``. T5 attention is unscaled (scale=1).
        """
        q, k, v = (rearrange(f(x), "b l (n d) -> b n l d", n=self.num_heads) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(rearrange(out, "b n l d -> b l (n d)"))


class _FeedForward(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        # ``gate`` is a Sequential so its weight is named gate.0.weight, as in the checkpoint.
        self.gate = nn.Sequential(nn.Linear(cfg.dim, cfg.dim_ffn, bias=False), _TanhGELU())
        self.fc1 = nn.Linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.fc2 = nn.Linear(cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class _Block(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = _RMSNorm(cfg.dim, cfg.layernorm_eps)
        self.attn = _Attention(cfg)
        self.norm2 = _RMSNorm(cfg.dim, cfg.layernorm_eps)
        self.ffn = _FeedForward(cfg)
        self.pos_embedding = (
            None if cfg.shared_pos else _RelativePositionBias(cfg.num_buckets, cfg.num_heads, cfg.relative_max_dist)
        )

    def forward(self, x: torch.Tensor, pad_bias: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
        pos = shared if self.pos_embedding is None else self.pos_embedding(x.shape[1], x.shape[1])
        # Masked keys get exactly finfo.min (not bias + min), as the reference's masked_fill does.
        bias = torch.where(pad_bias.isneginf(), torch.finfo(x.dtype).min, pos.float() + pad_bias)
        x = _clamp_fp16(x + self.attn(self.norm1(x), bias))
        return _clamp_fp16(x + self.ffn(self.norm2(x)))


class UMT5Encoder(nn.Module):
    """``forward(ids [B,L], mask [B,L]) -> [B,L,dim]``; ``encode`` trims each row to its length."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embedding = (
            _RelativePositionBias(cfg.num_buckets, cfg.num_heads, cfg.relative_max_dist) if cfg.shared_pos else None
        )
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.encoder_layers))
        self.norm = _RMSNorm(cfg.dim, cfg.layernorm_eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(ids)
        b, L = ids.shape
        # Key-padding mask as an additive float32 term: 0 = attend, -inf = padded key.
        pad_bias = torch.zeros(b, 1, 1, L, device=x.device)
        if mask is not None:
            pad_bias = pad_bias.masked_fill(mask.to(x.device).view(b, 1, 1, L) == 0, float("-inf"))
        shared = self.pos_embedding(L, L) if self.pos_embedding is not None else None
        for block in self.blocks:
            x = block(x, pad_bias, shared)
        return self.norm(x)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per prompt ``[len_i, dim]``, ``len_i`` = number of non-zero mask entries (the pipeline's context)."""
        out = self.forward(ids, mask)
        lens = mask.gt(0).sum(dim=1).tolist()
        return [u[:n] for u, n in zip(out, lens)]
