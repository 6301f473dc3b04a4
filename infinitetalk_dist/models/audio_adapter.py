"""InfiniteTalk's audio adapter: the audio projector, the per-frame audio cross-attention and
the two-speaker routing (L-RoPE).

Parameter names follow the reference (``audio_proj.proj1`` ..., ``audio_cross_attn.q_linear``
...) so official checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from infinitetalk_dist.kernels import attention

from .rope import TokenLayout, apply_rope, rope_1d

# L-RoPE ranges (reference defaults class_range=24, class_interval=4): speaker 1's queries are
# spread over positions [0, 4], speaker 2's over [20, 24], background tokens sit at 12, and
# each speaker's audio tokens at the centre of its range.
SPEAKER_RANGES = ((0.0, 4.0), (20.0, 24.0))
BACKGROUND_POSITION = 12.0


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32, output in the input's dtype (as the reference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def fold_audio_windows(audio: torch.Tensor, vae_scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video-frame windows -> the rows each latent frame sees.

    ``audio`` [N, F, window, blocks, channels] holds each video frame's window of wav2vec2
    rows (F = 1 + vae_scale * (latent frames - 1)). Latent frame 0 keeps video frame 0's
    whole window; every later latent frame covers ``vae_scale`` video frames and takes the
    left half (up to the centre) of its first frame's window, the centre row of the middle
    frames and the right half of its last frame's window: ``window + vae_scale - 1`` rows.

    Returns (first [N, 1, window, blocks, channels], later [N, latent frames - 1, rows, ...]).
    """
    mid = audio.shape[2] // 2
    groups = audio[:, 1:].unflatten(1, (-1, vae_scale))  # [N, T-1, vae_scale, window, ...]
    later = torch.cat([groups[:, :, 0, : mid + 1], groups[:, :, 1:-1, mid], groups[:, :, -1, mid:]], dim=2)
    return audio[:, :1], later


class AudioProjector(nn.Module):
    """Folds each latent frame's wav2vec2 rows (all layers) into ``context_tokens`` audio tokens."""

    def __init__(self, window: int, window_later: int, blocks: int, channels: int, intermediate_dim: int,
                 output_dim: int, context_tokens: int, norm_output: bool):
        super().__init__()
        self.context_tokens = context_tokens
        self.output_dim = output_dim
        self.proj1 = nn.Linear(window * blocks * channels, intermediate_dim)
        self.proj1_vf = nn.Linear(window_later * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = Float32LayerNorm(output_dim) if norm_output else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """(first, later) from :func:`fold_audio_windows` -> [N, latent frames, context_tokens, output_dim]."""
        h = torch.cat([F.relu(self.proj1(first.flatten(2))), F.relu(self.proj1_vf(later.flatten(2)))], dim=1)
        tokens = self.proj3(F.relu(self.proj2(h))).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens)


def speaker_token_masks(masks: torch.Tensor, grid_hw: tuple[int, int], batch: int) -> torch.Tensor:
    """Pixel-level class masks [classes, H, W] or [B, classes, H, W] -> token masks [B, classes, h * w].

    Nearest-neighbour resize to the token grid, then ``> 0`` (as the reference).
    """
    m = masks.float()
    if m.dim() == 3:
        m = m[None]
    m = F.interpolate(m, size=grid_hw, mode="nearest") > 0
    return m.flatten(2).float().expand(batch, -1, -1)


def speaker_attention_map(q: torch.Tensor, ref_k: torch.Tensor, masks: torch.Tensor,
                          backend: str | None = None) -> torch.Tensor:
    """How much each query token attends to each class region of the reference frame.

    q [B, N, H, D] rotated self-attention queries, ref_k [B, S, H, D] rotated keys of the first
    latent frame, masks [B, C, S] token masks (speakers, then background). Returns [B, C, N]:
    per class, ``softmax(q k^T / sqrt(D))`` summed over the class's keys, divided by the
    class's size and averaged over heads. Like the reference (two head halves averaged), an
    odd last head is left out.
    """
    heads = 2 * (q.shape[2] // 2)
    q, ref_k = q[:, :, :heads], ref_k[:, :, :heads]
    d, classes = q.shape[-1], masks.shape[1]
    # softmax(q k^T) @ (mask / |mask|) is attention with the normalised masks as values,
    # so it runs fused, without materialising the [N, S] probabilities per head.
    values = (masks / masks.sum(-1, keepdim=True)).transpose(1, 2)  # [B, S, C]
    values = F.pad(values, (0, d - classes))[:, :, None].expand(-1, -1, heads, -1).to(q.dtype).contiguous()
    out = attention(q, ref_k, values, backend=backend)[..., :classes]  # [B, N, heads, C]
    return out.float().mean(2).transpose(1, 2)


def speaker_positions(ref_map: torch.Tensor) -> torch.Tensor:
    """L-RoPE query positions [B, N] from the attention map [B, 3, N] (speaker 1, speaker 2, background).

    Each speaker's map is min-max scaled (over the sequence) into that speaker's range; a
    token takes the position of the class it attends to most.
    """
    lo, hi = ref_map.amin(-1, keepdim=True), ref_map.amax(-1, keepdim=True)
    scaled = [
        (ref_map[:, i] - lo[:, i]) / (hi[:, i] - lo[:, i] + 1e-8) * (b - a) + a
        for i, (a, b) in enumerate(SPEAKER_RANGES)
    ]
    candidates = torch.stack([*scaled, torch.full_like(scaled[0], BACKGROUND_POSITION)], dim=1)
    return candidates.gather(1, ref_map.argmax(1, keepdim=True)).squeeze(1)


def speaker_key_positions(num_tokens: int, device=None) -> torch.Tensor:
    """L-RoPE positions of one frame's audio tokens: speaker 1's half, then speaker 2's."""
    pos = torch.full((num_tokens,), sum(SPEAKER_RANGES[1]) / 2, device=device)
    pos[: num_tokens // 2] = sum(SPEAKER_RANGES[0]) / 2
    return pos


class AudioCrossAttention(nn.Module):
    """Each latent frame's video tokens attend to that frame's audio tokens."""

    def __init__(self, dim: int, audio_dim: int, num_heads: int, backend: str | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, layout: TokenLayout,
                ref_map: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, dim] (the slice ``layout`` of the sequence); audio [B, frames, tokens, audio_dim]
        (two speakers: speaker 1's tokens, then speaker 2's); ``ref_map`` [B, 3, total], the
        WHOLE real sequence's map (two speakers only), switches on L-RoPE: positions are
        min-max scaled over all tokens, then this slice's are taken. Padding tokens get a zero
        update."""
        b, n = x.shape[0], layout.count
        q = self.q_linear(x[:, :n]).unflatten(-1, (self.num_heads, -1))
        k, v = self.kv_linear(audio).unflatten(-1, (2, self.num_heads, -1)).unbind(-3)
        if ref_map is not None:
            head_dim = q.shape[-1]
            positions = speaker_positions(ref_map)[:, layout.start : layout.start + n]
            q = apply_rope(q, rope_1d(positions, head_dim))
            k = apply_rope(k, rope_1d(speaker_key_positions(k.shape[2], k.device), head_dim))
        first, frames = layout.frame_range()
        k, v = (t[:, first : first + frames].flatten(0, 1) for t in (k, v))
        out = attention(layout.split_frames(q), k, v, backend=self.backend)
        out = self.proj(layout.merge_frames(out, b).flatten(2))
        return F.pad(out, (0, 0, 0, x.shape[1] - n))
