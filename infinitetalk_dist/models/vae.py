"""Wan2.1 causal 3-D VAE (video <-> 16-channel latents, stride 4 in time, 8 in space).

Parameter names equal the official ``WanVAE_`` state dict (``encoder.*``, ``conv1.*``,
``conv2.*``, ``decoder.*``), so ``Wan2.1_VAE.pth`` loads with ``strict=True`` unchanged.

Every temporal convolution is causal (zero padding in front only). Videos are encoded in
slices - the first frame alone, then ``temporal_stride`` frames at a time - and latents are
decoded one frame at a time. Between slices each causal conv keeps the last frames it saw in
a per-call cache (a dict keyed by module), which makes the sliced run equal to a run over
the whole clip while bounding activation memory to one slice. The cache is created inside
``encode``/``decode`` and dropped on return: the module itself holds no run state.

The first frame is special: the encoder's temporal downsamplers pass it through unchanged
(it becomes latent frame 0 by itself) and the decoder's temporal upsamplers turn latent
frame 0 into a single video frame. Hence ``T`` video frames <-> ``(T - 1) / 4 + 1`` latents.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from infinitetalk_dist.kernels import attention

__all__ = ["VAEConfig", "WanVAE", "tiny_vae", "wan21_vae"]

# Per-channel statistics of the official Wan2.1 VAE latents (WanVAE wrapper in the reference).
WAN21_LATENT_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]
WAN21_LATENT_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]

# Per-call memory of the causal convolutions: module -> its trailing input frames.
Cache = dict[nn.Module, "torch.Tensor | None"]


@dataclass
class VAEConfig:
    dim: int = 96
    z_dim: int = 16
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_scales: list[float] = field(default_factory=list)
    # Reference spelling kept so its configs load as-is. One flag per downsampling level.
    temperal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    dropout: float = 0.0
    # Latent normalisation: encode returns (mu - mean) / std.
    mean: list[float] = field(default_factory=lambda: list(WAN21_LATENT_MEAN))
    std: list[float] = field(default_factory=lambda: list(WAN21_LATENT_STD))

    def __post_init__(self):
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError("temperal_downsample needs one flag per downsampling level")
        if len(self.mean) != self.z_dim or len(self.std) != self.z_dim:
            raise ValueError(f"mean/std must have z_dim={self.z_dim} entries")

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> VAEConfig:
        """Build from a dict (e.g. a golden ``config.json``); unknown keys are ignored.

        ``wrapper_mean``/``wrapper_std`` (the reference wrapper's names) map to mean/std.
        """
        d = dict(d)
        for src, dst in (("wrapper_mean", "mean"), ("wrapper_std", "std")):
            if src in d and dst not in d:
                d[dst] = d[src]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def wan21_vae() -> VAEConfig:
    """The official Wan2.1 VAE (``Wan2.1_VAE.pth``)."""
    return VAEConfig(
        dim=96,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        mean=list(WAN21_LATENT_MEAN),
        std=list(WAN21_LATENT_STD),
    )


def tiny_vae() -> VAEConfig:
    """Same architecture at width 8 (the golden case's size): a CPU demo / test model."""
    return dataclasses.replace(wan21_vae(), dim=8)


# ----------------------------------------------------------------------------- layers


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only in front in time, so output frame t sees input frames <= t.

    With a ``cache``, the frames remembered from the previous slice replace (part of) the
    front zero padding, and the last ``time_pad`` input frames are remembered for the next.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self.time_pad = 2 * pt  # all temporal padding goes in front
        self.space_pad = (pw, pw, ph, ph)
        self.padding = (0, 0, 0)  # padding is applied explicitly in forward

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        front = self.time_pad
        if cache is not None and self.time_pad > 0:
            prev = cache.get(self)
            if prev is not None:
                x = torch.cat([prev, x], dim=2)
                front -= prev.shape[2]
            # Clone so the cache does not pin this slice's whole activation.
            cache[self] = x[:, :, -self.time_pad:].clone()
        x = F.pad(x, (*self.space_pad, front, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned per-channel gain."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        # gamma broadcasts over (h, w) for per-frame images, over (t, h, w) for videos.
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _run(layers: nn.Sequential, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    """Apply a Sequential, feeding the cache to its causal convs."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


def _per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of a [B, C, T, H, W] video."""
    t = x.shape[2]
    y = fn(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", t=t)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        # Sequential indices (0, 2, 3, 6) are the checkpoint's key names.
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return self.shortcut(x) + _run(self.residual, x, cache)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int, backend: str | None = "sdpa"):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.backend = backend

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.to_qkv(self.norm(rearrange(x, "b c t h w -> (b t) c h w")))
        q, k, v = rearrange(y, "n (three c) h w -> three n (h w) 1 c", three=3)
        y = attention(q, k, v, backend=self.backend)
        y = rearrange(y, "n (h w) 1 c -> n c h w", h=h)
        return x + rearrange(self.proj(y), "(b t) c h w -> b c t h w", t=t)


class Resample(nn.Module):
    """2x spatial down/up-sampling, optionally with 2x in time (``*3d`` modes).

    ``resample`` is a Sequential so parameter names match the checkpoint
    (``resample.1`` is the conv; index 0 is the parameter-free pad/upsample).
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            # Upsampling also halves the channels.
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, dim // 2, 3, padding=1),
            )
        elif mode in ("downsample2d", "downsample3d"):
            # Pad right/bottom only, then a strided 3x3 conv.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

        if mode == "upsample3d":
            # Produces two frames per input frame, stacked on channels.
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            # Unpadded, stride 2: its temporal context is handled in forward.
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        if self.mode == "upsample3d":
            if self not in cache:
                # Latent frame 0 decodes to a single frame: no temporal upsampling. The
                # time conv's own stream (and its zero padding) starts at latent frame 1.
                cache[self] = None
            else:
                x = self.time_conv(x, cache)
                x = rearrange(x, "b (two c) t h w -> b c (t two) h w", two=2)

        x = _per_frame(self.resample, x)

        if self.mode == "downsample3d":
            prev = cache.get(self)
            cache[self] = x[:, :, -1:].clone()
            # The first slice (frame 0 alone) passes through; later slices of 2n frames
            # become n frames, the kernel reaching back one frame into the previous slice.
            if prev is not None:
                x = self.time_conv(torch.cat([prev, x], dim=2))
        return x


# ----------------------------------------------------------------------------- encoder / decoder


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig, out_dim: int, attn_backend: str | None):
        super().__init__()
        dims = [cfg.dim * m for m in [1, *cfg.dim_mult]]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)

        blocks: list[nn.Module] = []
        scale = 1.0
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, cfg.dropout))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(cout, attn_backend))
                cin = cout
            if i < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(cout, mode))
                scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)

        c = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(c, c, cfg.dropout), AttentionBlock(c, attn_backend), ResidualBlock(c, c, cfg.dropout)
        )
        self.head = nn.Sequential(RMSNorm(c), nn.SiLU(), CausalConv3d(c, out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        return _run(self.head, x, cache)


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig, attn_backend: str | None):
        super().__init__()
        temporal_upsample = cfg.temperal_downsample[::-1]
        dims = [cfg.dim * m for m in [cfg.dim_mult[-1], *cfg.dim_mult[::-1]]]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)

        c = dims[0]
        self.middle = nn.Sequential(
            ResidualBlock(c, c, cfg.dropout), AttentionBlock(c, attn_backend), ResidualBlock(c, c, cfg.dropout)
        )

        blocks: list[nn.Module] = []
        scale = 1.0 / 2 ** (len(cfg.dim_mult) - 2)
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # the previous level's Resample halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(cin, cout, cfg.dropout))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(cout, attn_backend))
                cin = cout
            if i < len(cfg.dim_mult) - 1:
                mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
                blocks.append(Resample(cout, mode))
                scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)

        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        return _run(self.head, x, cache)


# ----------------------------------------------------------------------------- model


class WanVAE(nn.Module):
    """Causal video VAE. ``encode``: [B,3,T,H,W] in [-1,1] -> normalised latents [B,z,t,h,w].

    Computation runs in the parameters' dtype (fp32 or bf16); outputs come back in the
    input's dtype. The latent mean/std are plain config lists, turned into tensors per call,
    so the model works after meta-device construction + ``load_state_dict(assign=True)``.
    ``attn_backend`` defaults to ``"sdpa"``: the attention head dim is 4*dim (384 for
    Wan2.1), beyond what the flash/cuDNN kernels accept.
    """

    def __init__(self, config: VAEConfig | None = None, *, attn_backend: str | None = "sdpa"):
        super().__init__()
        self.config = cfg = config or wan21_vae()
        z = cfg.z_dim
        self.encoder = Encoder3d(cfg, 2 * z, attn_backend)  # mu and log_var
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(cfg, attn_backend)

    def _latent_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # fp32 and multiplied by 1/std, exactly as the reference wrapper's scale=[mean, 1/std].
        mean = torch.tensor(self.config.mean, dtype=torch.float32, device=device)
        inv_std = 1.0 / torch.tensor(self.config.std, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), inv_std.view(1, -1, 1, 1, 1)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> [B, z, (T-1)//4 + 1, H/8, W/8], normalised.

        Like the reference, trailing frames beyond the last full slice of 4 are ignored.
        """
        stride = self.config.temporal_stride
        x = video.to(self.conv1.weight.dtype)
        cache: Cache = {}
        # Frame 0 alone, then `stride` frames per slice: each slice yields one latent frame.
        slices = [x[:, :, :1]]
        slices += [x[:, :, s : s + stride] for s in range(1, x.shape[2] - stride + 1, stride)]
        h = torch.cat([self.encoder(s, cache) for s in slices], dim=2)

        # conv1 is 1x1x1: its first z output channels are mu; log_var is never needed.
        z = self.config.z_dim
        mu = F.conv3d(h, self.conv1.weight[:z], self.conv1.bias[:z])

        mean, inv_std = self._latent_stats(mu.device)
        return ((mu.float() - mean) * inv_std).to(video.dtype)

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """[B, z, t, h, w] normalised latents -> [B, 3, (t-1)*4 + 1, 8h, 8w] video."""
        mean, inv_std = self._latent_stats(z.device)
        x = (z.float() / inv_std + mean).to(self.conv2.weight.dtype)
        x = self.conv2(x)
        cache: Cache = {}
        # One latent frame per step (frame 0 -> 1 video frame, later ones -> 4 each).
        out = torch.cat([self.decoder(x[:, :, i : i + 1], cache) for i in range(x.shape[2])], dim=2)
        if clamp:
            out = out.clamp(-1.0, 1.0)
        return out.to(z.dtype)
