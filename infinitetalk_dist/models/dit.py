"""InfiniteTalk DiT: the Wan2.1-I2V diffusion transformer with InfiniteTalk's audio adapter.

Parameter names equal the reference state-dict keys (``MeiGen-AI/InfiniteTalk``
``wan/modules/multitalk_model.py``), so official checkpoints load with ``strict=True``.
Differences from the reference, all without numerical effect on real tokens:

- batched tensors instead of lists; any batch size (same speaker count per batch);
- ``seq_len`` padding works (the reference crashes): padded keys are masked, RoPE follows
  each token's grid position, and the per-frame audio attention skips padding;
- the two-speaker attention map is only computed for two speakers;
- RoPE in float32 (the reference uses float64).

Seams for a parallel layer applied from outside (``infinitetalk_dist.parallel``), all of them
identities here: the self-attention's full-sequence softmax is one call through
``self_attn.attn_core`` (Ulysses wraps it in all-to-alls); ``model.sequence``
(:class:`WholeSequence`) picks the token slice a process runs and gathers the head output;
``self_attn.speaker_map`` (:class:`SpeakerMap`) finds the first-frame keys and the
whole-sequence two-speaker map. This file imports nothing of torch.distributed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from infinitetalk_dist.kernels import attention

from .audio_adapter import (
    AudioCrossAttention,
    AudioProjector,
    Float32LayerNorm,
    fold_audio_windows,
    speaker_attention_map,
    speaker_token_masks,
)
from .rope import Rope, TokenLayout, apply_rope, rope_3d


@dataclass
class DiTConfig:
    """Reference ``WanModel`` config fields (defaults: InfiniteTalk on Wan2.1-I2V-14B).

    ``audio_blocks`` x ``audio_channels`` (wav2vec2 layers x width) and ``clip_dim`` are fixed
    to 12 x 768 and 1280 in the reference; they are fields here so tiny encoders can feed a
    tiny DiT.
    """

    model_type: str = "i2v"
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 36
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 40
    num_layers: int = 40
    window_size: tuple[int, int] = (-1, -1)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    audio_window: int = 5
    intermediate_dim: int = 512
    output_dim: int = 768
    context_tokens: int = 32
    vae_scale: int = 4
    norm_input_visual: bool = True
    norm_output_audio: bool = True
    audio_blocks: int = 12
    audio_channels: int = 768
    clip_dim: int = 1280
    attn_backend: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        """From a reference/diffusers ``config.json`` dict; unknown keys (weight_init, _class_name, ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("patch_size", "window_size"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def dit_14b() -> DiTConfig:
    """InfiniteTalk on Wan2.1-I2V-14B (480P and 720P share it)."""
    return DiTConfig()


def dit_tiny() -> DiTConfig:
    """A few-MB DiT for CPU demos and tests. Its text/CLIP widths match ``umt5_tiny_encoder``
    (32, text_len 24) and ``clip_tiny`` (32); audio wants a 3-layer, 32-wide wav2vec2."""
    return DiTConfig(text_len=24, dim=128, ffn_dim=256, freq_dim=64, text_dim=32, num_heads=4, num_layers=2,
                     intermediate_dim=64, output_dim=64, context_tokens=4, audio_blocks=3, audio_channels=32,
                     clip_dim=32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, cast back, then scale (the reference's order).
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Float32Linear(nn.Linear):
    """Linear evaluated in float32 whatever the parameter dtype: the reference runs the timestep
    embedding and the head under float32 autocast, and the modulation they feed stays float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight.float(), self.bias.float())


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[B] timesteps -> [B, dim] (cos | sin), built in float64 as the reference (a tiny tensor)."""
    half = dim // 2
    t = t.to(torch.float64)
    angles = torch.outer(t, torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=t.device) / half))
    return torch.cat([angles.cos(), angles.sin()], dim=1).float()


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, dim] -> [B, L, heads, head_dim]."""
    return x.unflatten(-1, (num_heads, -1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.float() * (1 + scale) + shift


class AttentionCore(nn.Module):
    """Softmax attention over the whole token sequence: [B, L, H, D] q/k/v, keys masked past k_lens.

    The single call a sequence-parallel layer replaces or wraps (all-to-all around it).
    """

    def __init__(self, backend: str | None = None):
        super().__init__()
        self.backend = backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_lens: int | None = None) -> torch.Tensor:
        return attention(q, k, v, k_lens=k_lens, backend=self.backend)


class SpeakerMap(nn.Module):
    """The two-speaker attention map of the WHOLE real sequence, [B, 3, total].

    This process's queries (its slice of the sequence) attend to the first latent frame's
    keys; L-RoPE then min-max scales the map over all real tokens, so the map a block hands on
    covers the whole sequence. Both steps that need tokens outside the slice are methods a
    sequence-parallel layer overrides (:meth:`first_frame_keys`, :meth:`whole`); here, in one
    process, the slice must be the whole sequence.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, masks: torch.Tensor, layout: TokenLayout,
                backend: str | None = None) -> torch.Tensor:
        local = speaker_attention_map(q[:, : layout.count], self.first_frame_keys(k, layout), masks, backend)
        return self.whole(local, layout)

    def first_frame_keys(self, k: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Rotated keys of latent frame 0 [B, frame_tokens, H, D] from this slice's keys."""
        self._need_whole(layout)
        return k[:, : layout.frame_tokens]

    def whole(self, local_map: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """This slice's map [B, 3, count] -> the whole sequence's [B, 3, total]."""
        self._need_whole(layout)
        return local_map

    @staticmethod
    def _need_whole(layout: TokenLayout) -> None:
        if not layout.whole:
            raise ValueError("the two-speaker map needs the whole sequence (first-frame keys, global min/max): "
                             "a sequence shard must swap in a gathering SpeakerMap (infinitetalk_dist.parallel)")


class WholeSequence(nn.Module):
    """Which tokens of the (padded) sequence this process runs through the blocks: all of them.

    A sequence-parallel layer swaps ``model.sequence`` for one that pads to a multiple of its
    size, returns this rank's slice and gathers the head output of every slice.
    """

    def layout(self, grid: tuple[int, int, int], seq_len: int | None) -> TokenLayout:
        return TokenLayout(grid, seq_len or math.prod(grid))

    def gather(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """Head output of this slice [B, layout.length, C] -> of the whole sequence [B, seq_len, C]."""
        return x


class RunAllBlocks(nn.Module):
    """Runs the blocks on every call. A step cache (TeaCache, ``pipeline/teacache.py``) is
    swapped in as ``model.block_cache`` to reuse a previous call's block residual instead."""

    def forward(self, x: torch.Tensor, e0: torch.Tensor, run_blocks) -> torch.Tensor:
        return run_blocks(x)


class _QKVO(nn.Module):
    """q/k/v/o projections with optional RMS q/k norms (the reference's parameter names)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()


class SelfAttention(_QKVO):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, backend: str | None = None):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.attn_core = AttentionCore(backend)
        self.speaker_map = SpeakerMap()

    def forward(self, x: torch.Tensor, layout: TokenLayout, rope: Rope,
                speaker_masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (output, the whole sequence's two-speaker attention map [B, 3, total] or None
        without ``speaker_masks``)."""
        n = self.num_heads
        q = apply_rope(_heads(self.norm_q(self.q(x)), n), rope)
        k = apply_rope(_heads(self.norm_k(self.k(x)), n), rope)
        v = _heads(self.v(x), n)
        out = self.o(self.attn_core(q, k, v, layout.key_lens()).flatten(2))
        if speaker_masks is None:
            return out, None
        return out, self.speaker_map(q, k, speaker_masks, layout, self.attn_core.backend)


class CrossAttention(_QKVO):
    """Attention to the CLIP image tokens and to the text tokens (the last ``text_len`` of the context)."""

    def __init__(self, dim: int, num_heads: int, text_len: int, qk_norm: bool, eps: float,
                 backend: str | None = None):
        super().__init__(dim, num_heads, qk_norm, eps)
        self.text_len = text_len
        self.backend = backend
        self.k_img = nn.Linear(dim, dim)
        self.v_img = nn.Linear(dim, dim)
        self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        image, text = context[:, : -self.text_len], context[:, -self.text_len :]
        n = self.num_heads
        q = _heads(self.norm_q(self.q(x)), n)
        # All text_len tokens are attended, zero padding included (the reference passes no lengths).
        out = attention(q, _heads(self.norm_k(self.k(text)), n), _heads(self.v(text), n), backend=self.backend)
        out = out + attention(q, _heads(self.norm_k_img(self.k_img(image)), n), _heads(self.v_img(image), n),
                              backend=self.backend)
        return self.o(out.flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim, eps, backend = cfg.dim, cfg.eps, cfg.attn_backend
        self.norm1 = Float32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps, backend)
        self.norm3 = Float32LayerNorm(dim, eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.text_len, cfg.qk_norm, eps, backend)
        self.norm_x = Float32LayerNorm(dim, eps) if cfg.norm_input_visual else nn.Identity()
        self.audio_cross_attn = AudioCrossAttention(dim, cfg.output_dim, cfg.num_heads, backend)
        self.norm2 = Float32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(self, x: torch.Tensor, *, e0: torch.Tensor, context: torch.Tensor, audio: torch.Tensor,
                layout: TokenLayout, rope: Rope, speaker_masks: torch.Tensor | None = None) -> torch.Tensor:
        # Modulation and the gated residuals in float32, as the reference.
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e0).chunk(6, dim=1)
        y, ref_map = self.self_attn(modulate(self.norm1(x), shift1, scale1).to(x.dtype), layout, rope, speaker_masks)
        x = (x + y * gate1).to(x.dtype)
        x = x + self.cross_attn(self.norm3(x), context)
        x = x + self.audio_cross_attn(self.norm_x(x), audio, layout, ref_map)
        y = self.ffn(modulate(self.norm2(x), shift2, scale2).to(x.dtype))
        return (x + y * gate2).to(x.dtype)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.norm = Float32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = Float32Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e[:, None]).chunk(2, dim=1)
        return self.head(modulate(self.norm(x), shift, scale))


class MLPProj(nn.Module):
    """CLIP image features -> model width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(Float32LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), Float32LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class InfiniteTalkDiT(nn.Module):
    """Wan2.1-I2V DiT + InfiniteTalk audio adapter, for one or two speakers."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        cfg = self.config = config
        if cfg.model_type != "i2v":
            raise ValueError(f"InfiniteTalk needs model_type 'i2v', got {cfg.model_type!r}")
        if tuple(cfg.window_size) != (-1, -1):
            raise ValueError("windowed self-attention is not supported (Wan uses window_size (-1, -1))")
        if cfg.dim % cfg.num_heads or cfg.head_dim % 2:
            raise ValueError(f"dim {cfg.dim} must split into {cfg.num_heads} heads of even size")
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(Float32Linear(cfg.freq_dim, cfg.dim), nn.SiLU(),
                                            Float32Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Float32Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.sequence = WholeSequence()
        self.block_cache = RunAllBlocks()
        self.head = Head(cfg.dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        self.img_emb = MLPProj(cfg.clip_dim, cfg.dim)
        self.audio_proj = AudioProjector(
            window=cfg.audio_window, window_later=cfg.audio_window + cfg.vae_scale - 1, blocks=cfg.audio_blocks,
            channels=cfg.audio_channels, intermediate_dim=cfg.intermediate_dim, output_dim=cfg.output_dim,
            context_tokens=cfg.context_tokens, norm_output=cfg.norm_output_audio,
        )

    @property
    def attn_backend(self) -> str | None:
        return self.config.attn_backend

    def set_attn_backend(self, name: str | None) -> None:
        """Switch every attention call of the model to kernel backend ``name``."""
        self.config.attn_backend = name
        for m in self.modules():
            if isinstance(m, (AttentionCore, CrossAttention, AudioCrossAttention)):
                m.backend = name

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        clip_fea: torch.Tensor,
        y: torch.Tensor,
        audio: torch.Tensor,
        ref_target_masks: torch.Tensor | None = None,
        seq_len: int | None = None,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity.

        Args:
            x: noisy latent [B, 16, T, H, W].
            t: timesteps [B] (or one value for the whole batch), 0..1000.
            context: T5 text embeddings [B, L, text_dim]; zero-padded or cropped to ``text_len``.
            clip_fea: CLIP image features [B, 257, clip_dim].
            y: image condition [B, 20, T, H, W] (4 mask channels + VAE latent), concatenated to ``x``.
            audio: wav2vec2 windows [B, speakers, F, audio_window, audio_blocks, audio_channels]
                with F = 1 + vae_scale * (T - 1) video frames; 1 or 2 speakers.
            ref_target_masks: two speakers only: class masks [3, H', W'] or [B, 3, H', W']
                (speaker 1, speaker 2, background) on any grid; resized to the token grid.
            seq_len: pad the token sequence to this length; the output is unaffected.
                (A sequence-parallel ``model.sequence`` rounds it up to a multiple of its size.)

        Returns:
            [B, out_dim, T, H, W] float32.
        """
        cfg = self.config
        dtype = self.patch_embedding.weight.dtype
        batch = x.shape[0]

        x = self.patch_embedding(torch.cat([x, y], dim=1).to(dtype))
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        layout = self.sequence.layout(grid, seq_len)  # the slice of the padded sequence run here
        x = F.pad(x, (0, 0, 0, layout.seq_len - x.shape[1]))[:, layout.start : layout.end]
        rope = rope_3d(layout.positions(x.device), cfg.head_dim)

        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t.reshape(-1).expand(batch)))
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim))

        text = self.text_embedding(_fit_length(context, cfg.text_len).to(dtype))
        context = torch.cat([self.img_emb(clip_fea.to(dtype)), text], dim=1)

        audio_tokens = self.embed_audio(audio.to(dtype), grid[0])
        speaker_masks = None
        if audio.shape[1] == 2:
            if ref_target_masks is None:
                raise ValueError("two speakers need ref_target_masks")
            speaker_masks = speaker_token_masks(ref_target_masks.to(x.device), grid[1:], batch)
        elif audio.shape[1] != 1:
            raise ValueError(f"1 or 2 speakers are supported, got {audio.shape[1]}")

        def run_blocks(x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x, e0=e0, context=context, audio=audio_tokens, layout=layout, rope=rope,
                          speaker_masks=speaker_masks)
            return x

        x = self.block_cache(x, e0, run_blocks)
        return self.unpatchify(self.sequence.gather(self.head(x, e), layout), grid)

    def embed_audio(self, audio: torch.Tensor, frames: int) -> torch.Tensor:
        """[B, speakers, F, window, blocks, channels] -> per latent frame audio tokens
        [B, frames, speakers * context_tokens, output_dim] (speaker-major within a frame)."""
        batch, speakers = audio.shape[:2]
        expected = 1 + self.config.vae_scale * (frames - 1)
        if audio.shape[2] != expected:
            raise ValueError(f"audio has {audio.shape[2]} video frames, the latent needs {expected}")
        tokens = self.audio_proj(*fold_audio_windows(audio.flatten(0, 1), self.config.vae_scale))
        return tokens.unflatten(0, (batch, speakers)).transpose(1, 2).flatten(2, 3)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output [B, L, prod(patch) * out_dim] (padding dropped) -> [B, out_dim, T, H, W] float32."""
        (f, h, w), (pf, ph, pw) = grid, self.config.patch_size
        x = x[:, : f * h * w].reshape(x.shape[0], f, h, w, pf, ph, pw, self.config.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], -1, f * pf, h * ph, w * pw).float()


def _fit_length(context: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or crop [B, L, C] text embeddings to ``length`` tokens."""
    return F.pad(context[:, :length], (0, 0, 0, max(0, length - context.shape[1])))
