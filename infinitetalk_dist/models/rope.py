"""Token positions in the latent grid and rotary position embeddings (RoPE) for the DiT.

RoPE here rotates interleaved channel pairs ``(x[2i], x[2i+1])`` by ``position * freq_i``,
the convention of both Wan's 3-axis RoPE (complex multiply) and InfiniteTalk's 1-D RoPE
(``rotate_half`` on interleaved pairs). A table is the unit complex number per token and
pair, computed per call from explicit positions in float32 (complex64): tables are tiny next
to the attention they feed, and nothing is cached on modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Rope = torch.Tensor  # exp(i * angle), complex64 [..., N, head_dim // 2]


def inverse_frequencies(dim: int, theta: float, device=None) -> torch.Tensor:
    """``theta ** (-2i / dim)`` for ``i < dim // 2`` (float32)."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)


def rope_3d(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> Rope:
    """Wan's 3-axis RoPE for integer ``positions`` [N, 3] = (frame, row, column).

    The ``head_dim // 2`` channel pairs are split frame / row / column as
    ``c - 2 * (c // 3)``, ``c // 3``, ``c // 3`` (c = head_dim // 2), each axis with its own
    frequency ladder, like the reference's ``rope_params`` tables.
    """
    axis_hw = 2 * (head_dim // 6)
    dims = (head_dim - 2 * axis_hw, axis_hw, axis_hw)
    pos = positions.to(torch.float32)
    angles = torch.cat(
        [pos[:, i, None] * inverse_frequencies(d, theta, positions.device) for i, d in enumerate(dims)], dim=-1
    )
    return torch.polar(torch.ones_like(angles), angles)


def rope_1d(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> Rope:
    """1-D RoPE for real-valued ``positions`` [..., N] (InfiniteTalk's speaker routing)."""
    angles = positions.to(torch.float32)[..., None] * inverse_frequencies(head_dim, base, positions.device)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate ``x`` [..., N, heads, head_dim] by a ``rope`` table [..., N, head_dim // 2].

    Computed in float32 (the reference uses float64/float32), returned in ``x``'s dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rope.unsqueeze(-2)).flatten(-2).to(x.dtype)  # broadcast over heads


@dataclass(frozen=True)
class TokenLayout:
    """Where a token sequence sits in the frame-major latent token grid.

    The full sequence is the grid's ``f * h * w`` tokens followed by padding up to
    ``seq_len``. A module sees the slice ``[start, stop)`` of it: the whole sequence by
    default; a sequence shard passes its own range. RoPE positions, the key-padding mask and
    the per-frame audio attention all derive from this, so padded or sliced sequences give
    their real tokens the same result as the plain sequence.
    """

    grid: tuple[int, int, int]
    seq_len: int
    start: int = 0
    stop: int | None = None

    def __post_init__(self):
        if self.seq_len < self.total:
            raise ValueError(f"seq_len {self.seq_len} < {self.total} tokens of grid {self.grid}")

    @property
    def total(self) -> int:
        """Real tokens in the full sequence."""
        return math.prod(self.grid)

    @property
    def frame_tokens(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def end(self) -> int:
        return self.seq_len if self.stop is None else self.stop

    @property
    def length(self) -> int:
        """Tokens in this slice, padding included."""
        return self.end - self.start

    @property
    def count(self) -> int:
        """Real tokens in this slice; they come first in it."""
        return max(0, min(self.end, self.total) - self.start)

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == self.seq_len

    def positions(self, device=None) -> torch.Tensor:
        """(frame, row, column) of each token of the slice [length, 3]; padding gets (0, 0, 0)."""
        _, h, w = self.grid
        idx = torch.arange(self.start, self.end, device=device)
        pos = torch.stack([idx // (h * w), idx // w % h, idx % w], dim=-1)
        return pos * (idx < self.total)[:, None]

    def key_lens(self) -> int | None:
        """Real-key count for the full-sequence self-attention; None when there is no padding.

        A plain int (the same for every batch row) lets attention slice the keys, exactly and
        without a host sync, instead of masking them."""
        return None if self.seq_len == self.total else self.total

    def _frame_span(self) -> tuple[int, int, int]:
        """(first frame, number of frames, tokens of the first frame before this slice)."""
        s = self.frame_tokens
        if self.count == 0:  # a slice of padding only (a sequence shard past the real tokens)
            return min(self.start // s, self.grid[0]), 0, 0
        lead = self.start % s
        return self.start // s, -(-(lead + self.count) // s), lead

    def frame_range(self) -> tuple[int, int]:
        """(first latent frame, number of latent frames) that this slice's real tokens touch."""
        first, n, _ = self._frame_span()
        return first, n

    def split_frames(self, t: torch.Tensor) -> torch.Tensor:
        """The slice's real tokens ``t`` [B, count, ...] -> one row per latent frame [B * n, h * w, ...].

        Frames cut by the slice ends are filled with zeros (queries only; dropped again by
        :meth:`merge_frames`).
        """
        _, n, lead = self._frame_span()
        s = self.frame_tokens
        tail = n * s - lead - self.count
        if lead or tail:
            b, rest = t.shape[0], t.shape[2:]
            t = torch.cat([t.new_zeros(b, lead, *rest), t, t.new_zeros(b, tail, *rest)], dim=1)
        return t.reshape(-1, s, *t.shape[2:])

    def merge_frames(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """Inverse of :meth:`split_frames`: [B * n, h * w, ...] -> [B, count, ...]."""
        _, _, lead = self._frame_span()
        return t.reshape(batch, -1, *t.shape[2:])[:, lead : lead + self.count]
