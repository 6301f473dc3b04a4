"""Ulysses sequence parallelism for the DiT: each of ``sp`` ranks holds a contiguous slice of
the (padded) token sequence through every block, and trades it for a slice of the heads
around each self-attention (one all-to-all of q/k/v in, one of the output back).

Everything else of a block is per token: the text/CLIP cross-attention needs no
communication, the per-frame audio cross-attention finds its frames from the slice's
:class:`TokenLayout` (a frame cut by a slice boundary still sees exactly its own audio
tokens), RoPE uses each rank's true positions, and padded keys are cut with the global real
token count. The two-speaker map needs the first latent frame's keys and a min/max over all
real tokens: :class:`ShardedSpeakerMap` gathers those two things.

Equality: every real token sees the same q/k/v values and the same keys as in one process,
so attention is the same computation per (token, head); see tests/parallel for the bounds.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn

from infinitetalk_dist.models.dit import SpeakerMap, WholeSequence
from infinitetalk_dist.models.rope import TokenLayout

# torch 2.13 renamed all_gather_into_tensor (deprecated there); the GPU image's 2.11 may lack the new name.
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

__all__ = ["SequenceShard", "ShardedSpeakerMap", "UlyssesAttention", "check_heads", "heads_to_seq", "seq_to_heads"]


def check_heads(num_heads: int, sp: int) -> None:
    """Ulysses splits the heads over the sp ranks: they must divide."""
    if sp < 1 or num_heads % sp:
        ok = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise ValueError(f"Ulysses sequence parallelism needs the head count ({num_heads}) divisible by the sp "
                         f"size ({sp}); possible sp sizes: {ok}")


def _all_to_all(send: torch.Tensor, group) -> torch.Tensor:
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def seq_to_heads(tensors: list[torch.Tensor], sp: int, group) -> list[torch.Tensor]:
    """Sequence-split [B, L/sp, H, D] tensors -> head-split [B, L, H/sp, D], in ONE all-to-all.

    Rank r gets heads [r*H/sp, (r+1)*H/sp) of every rank's tokens, in rank (= sequence) order.
    """
    b, l, h, d = tensors[0].shape
    hs = h // sp
    send = torch.empty(sp, len(tensors), b, l, hs, d, dtype=tensors[0].dtype, device=tensors[0].device)
    for i, t in enumerate(tensors):
        send[:, i].copy_(t.view(b, l, sp, hs, d).permute(2, 0, 1, 3, 4))
    recv = _all_to_all(send, group)  # [src rank, n, B, L/sp, H/sp, D]
    out = recv.permute(1, 2, 0, 3, 4, 5).reshape(len(tensors), b, sp * l, hs, d)
    return list(out.unbind(0))


def heads_to_seq(x: torch.Tensor, sp: int, group) -> torch.Tensor:
    """Head-split [B, L, H/sp, D] -> sequence-split [B, L/sp, H, D] (inverse of :func:`seq_to_heads`)."""
    b, length, hs, d = x.shape
    send = x.reshape(b, sp, length // sp, hs, d).transpose(0, 1).contiguous()  # [dst rank, B, L/sp, H/sp, D]
    recv = _all_to_all(send, group)  # [src rank (its heads), B, L/sp, H/sp, D]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, length // sp, sp * hs, d)


class UlyssesAttention(nn.Module):
    """Wraps the DiT's full-sequence attention core: all-to-all to head-split, attend, back."""

    def __init__(self, inner: nn.Module, sp: int, group):
        super().__init__()
        self.inner = inner
        self.sp = sp
        self.group = group

    @property
    def backend(self) -> str | None:  # read by the two-speaker map; set through the inner core
        return self.inner.backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_lens: int | None = None) -> torch.Tensor:
        # k_lens is the global real-token count (TokenLayout.key_lens): padding sits at the
        # end of the gathered sequence, so slicing the keys there is exact.
        q, k, v = seq_to_heads([q, k, v], self.sp, self.group)
        return heads_to_seq(self.inner(q, k, v, k_lens), self.sp, self.group)


def _gather_tokens(x: torch.Tensor, sp: int, group) -> torch.Tensor:
    """[B, n, ...] from each sp rank -> [B, sp * n, ...] in rank order (gloo-safe: gathers along dim 0)."""
    send = x.transpose(0, 1).contiguous()
    recv = send.new_empty(sp * send.shape[0], *send.shape[1:])
    all_gather_single(recv, send, group=group)
    return recv.transpose(0, 1)


class SequenceShard(WholeSequence):
    """``model.sequence`` for an sp-way split: pad to a multiple of sp, keep this rank's slice,
    gather the head output ([B, L/sp, patch*out_dim], ~80x narrower than the hidden state)."""

    def __init__(self, sp: int, rank: int, group):
        super().__init__()
        self.sp, self.rank, self.group = sp, rank, group

    def layout(self, grid: tuple[int, int, int], seq_len: int | None) -> TokenLayout:
        length = seq_len or math.prod(grid)
        length = -(-length // self.sp) * self.sp
        local = length // self.sp
        return TokenLayout(grid, length, self.rank * local, (self.rank + 1) * local)

    def gather(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return _gather_tokens(x, self.sp, self.group)


class ShardedSpeakerMap(SpeakerMap):
    """The two-speaker map under an sp split: first-frame keys from the ranks holding frame 0
    (a broadcast from sp rank 0 when its slice covers the frame, else an all-gather of the
    keys), this slice's map, then an all-gather of the (tiny, [B, 3, L/sp]) maps so the
    min/max runs over all real tokens exactly as in one process."""

    def __init__(self, sp: int, rank: int, group):
        super().__init__()
        self.sp, self.rank, self.group = sp, rank, group

    def first_frame_keys(self, k: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        frame = layout.frame_tokens
        if layout.length >= frame:  # sp rank 0's slice holds the whole first frame
            keys = k[:, :frame].contiguous()
            dist.broadcast(keys, src=dist.get_global_rank(self.group, 0), group=self.group)
            return keys
        return _gather_tokens(k, self.sp, self.group)[:, :frame]

    def whole(self, local_map: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        padded = torch.nn.functional.pad(local_map, (0, layout.length - local_map.shape[-1]))
        return _gather_tokens(padded.transpose(1, 2), self.sp, self.group)[:, : layout.total].transpose(1, 2)
