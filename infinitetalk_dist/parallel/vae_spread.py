"""The Wan VAE spread over a replica's ranks: each rank encodes and decodes a band of rows.

Without it every rank of a replica runs the whole VAE on the same frames (the same result N
times); with sp=4 the DiT part of a 4-step chunk is ~8 x 0.8 s, so a 2.3 s VAE would be a
quarter of the chunk. Here the frame is cut into N horizontal bands (whole latent rows; the
encoder's input bands are 8 pixel rows per latent row) and every layer sees exactly the
values it would see on the whole frame:

- a convolution with a 3x3 spatial kernel (the causal 3-D ones and the 2-D ones after an
  upsampling) gets one halo row from each neighbouring band before it runs, and its output
  loses the rows computed from the zero padding in their place;
- the stride-2 downsampling conv (after a pad of one zero row at the bottom of the frame)
  gets the next band's first row instead of that zero row: band heights stay even, so the
  stride lines up with the whole frame's;
- the per-frame self-attention of the middle blocks gathers the whole frame (it runs at
  1/8 resolution) and keeps its band's rows;
- everything else (RMS norm over channels, SiLU, 1x1 and temporal-only convs, nearest
  upsampling, the per-conv time caches, which store the halo rows with the frames) is local
  to a pixel or a column and needs nothing.

The halos travel as one all-gather of every band's edge rows per convolution call. The
result is gathered on every rank (each rank then holds the whole output, as before).
Applied from outside with forward hooks, which act only inside :meth:`SpreadVAE.encode` /
:meth:`SpreadVAE.decode`; the module's own ``encode`` / ``decode`` stay whole-frame.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn

from infinitetalk_dist.models.vae import AttentionBlock, CausalConv3d, Resample, WanVAE

__all__ = ["SpreadVAE", "band_rows"]

H = -2  # the rows' dimension in [B, C, T, H, W] and [N, C, H, W]


def band_rows(rows: int, world: int) -> list[int]:
    """``rows`` split into ``world`` bands differing by at most one row (the first ones larger)."""
    base, extra = divmod(rows, world)
    return [base + (r < extra) for r in range(world)]


class SpreadVAE:
    """``encode`` / ``decode`` of ``vae`` with the frame's rows spread over ``group``'s ranks
    (the same numbers as the whole frame; see the module doc). Frames with fewer latent rows
    than ranks run whole on every rank."""

    def __init__(self, vae: WanVAE, group=None):
        self.vae, self.group = vae, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self._bands: list[int] | None = None  # latent rows per rank while a spread call runs
        self.stride = vae.config.spatial_stride
        for m in vae.modules():
            if isinstance(m, CausalConv3d) and m.space_pad[2] > 0:
                self._halo(m, m.space_pad[2])
            elif isinstance(m, Resample) and m.mode.startswith("upsample"):
                self._halo(m.resample[1], m.resample[1].padding[0])
            elif isinstance(m, Resample):
                m.resample[1].register_forward_pre_hook(self._next_band_row)
            elif isinstance(m, AttentionBlock):
                m.register_forward_pre_hook(self._gather_frame)
                m.register_forward_hook(self._keep_band)

    def __getattr__(self, name):  # parameters(), config, ... of the wrapped VAE
        return getattr(self.vae, name)

    # ------------------------------------------------------------------ the two calls

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        rows = video.shape[H] // self.stride
        if rows < self.world or video.shape[H] % self.stride:
            return self.vae.encode(video)
        bands = band_rows(rows, self.world)
        with self._spread(bands):
            z = self.vae.encode(self._band(video, [b * self.stride for b in bands]))
        return self._gather(z, bands)

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        if z.shape[H] < self.world:
            return self.vae.decode(z, clamp)
        bands = band_rows(z.shape[H], self.world)
        with self._spread(bands):
            video = self.vae.decode(self._band(z, bands), clamp)
        return self._gather(video, [b * self.stride for b in bands])

    @contextmanager
    def _spread(self, bands: list[int]):
        self._bands = bands
        try:
            yield
        finally:
            self._bands = None

    def _band(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        return x.narrow(H, sum(sizes[: self.rank]), sizes[self.rank]).contiguous()

    def _gather(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every band of ``x`` (``sizes`` rows each) on every rank, in order."""
        most = max(sizes)
        pad = torch.zeros(*x.shape[:H], most - x.shape[H], x.shape[-1], dtype=x.dtype, device=x.device)
        parts = [torch.empty_like(torch.cat([x, pad], H)) for _ in range(self.world)]
        dist.all_gather(parts, torch.cat([x, pad], H).contiguous(), group=self.group)
        return torch.cat([p.narrow(H, 0, n) for p, n in zip(parts, sizes)], H)

    def _edges(self, x: torch.Tensor, rows: int) -> list[torch.Tensor]:
        """[first ``rows`` rows, last ``rows`` rows] of every rank's band, stacked per rank."""
        mine = torch.stack([x.narrow(H, 0, rows), x.narrow(H, x.shape[H] - rows, rows)]).contiguous()
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine, group=self.group)
        return every

    # ------------------------------------------------------------------ hooks (inert outside a call)

    def _halo(self, conv: nn.Module, rows: int) -> None:
        top, bottom = self.rank > 0, self.rank < self.world - 1

        def extend(module, args):
            if self._bands is None:
                return None
            x, *rest = args
            edges = self._edges(x, rows)
            x = torch.cat([*([edges[self.rank - 1][1]] if top else []), x,
                           *([edges[self.rank + 1][0]] if bottom else [])], H)
            return (x, *rest)

        def crop(module, args, out):
            if self._bands is None:
                return None
            return out.narrow(H, rows if top else 0, out.shape[H] - rows * (top + bottom))

        conv.register_forward_pre_hook(extend)
        conv.register_forward_hook(crop)

    def _next_band_row(self, module, args):
        # The downsampling pad added a zero row at the bottom of each band; only the last band's
        # is the frame's. The others take the next band's first row instead.
        if self._bands is None:
            return None
        (x,) = args
        edges = self._edges(x, 1)
        if self.rank == self.world - 1:
            return None
        return (torch.cat([x.narrow(H, 0, x.shape[H] - 1), edges[self.rank + 1][0]], H),)

    def _gather_frame(self, module, args):
        if self._bands is None:
            return None
        x, *rest = args
        return (self._gather(x, self._sizes(x)), *rest)

    def _keep_band(self, module, args, out):
        if self._bands is None:
            return None
        sizes = [n * out.shape[H] // sum(self._bands) for n in self._bands]
        return out.narrow(H, sum(sizes[: self.rank]), sizes[self.rank])

    def _sizes(self, x: torch.Tensor) -> list[int]:
        """Every band's rows at ``x``'s resolution (a whole multiple or fraction of the latent's)."""
        mine, latent = x.shape[H], self._bands[self.rank]
        return [n * mine // latent for n in self._bands]
