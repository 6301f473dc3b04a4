"""wav2vec2 features for audio of any length: the reference ``get_embedding``, windowed.

Short audio is :func:`~infinitetalk_dist.models.wav2vec2.embed_waveform` itself (exact). Long
audio runs the transformer in windows with context on both sides, so memory is linear in the
length instead of quadratic; everything before the transformer (input normalisation, the conv
feature encoder with its GroupNorm, the 50 Hz -> 25 fps resampling) is the whole-track
computation, which is why this reaches into the encoder's conv layers. Needs only torch, numpy
and transformers (the GPU image has no PyAV).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from infinitetalk_dist.errors import AudioError
from infinitetalk_dist.timeline import FPS, SAMPLE_RATE, num_video_frames

from .wav2vec2 import AudioEncoder, embed_waveform

__all__ = ["DEFAULT_CONTEXT_S", "DEFAULT_WINDOW_S", "audio_features", "windowed_features"]

# Windowed wav2vec2 encoding (see audio_features), chosen with benchmarks/audio_windows.py.
# Random-weight attention is diffuse, so the windowed-vs-whole error falls with the span the
# transformer sees (window + 2 x context) and never reaches 0 below the whole track; on a
# 10-minute speech-like track, rel L2 (full architecture / tiny preset): span 40 s (20+2x10)
# -/1.0e-1, 90 s (60+2x15) 5.9e-2/5.3e-2, 180 s (120+2x30) 3.5e-2/2.7e-2; without context the
# seams are worst (max error 2-3x). Up to ~4500 frames the attention costs less than the
# linear layers, so a 180 s span costs about as much per frame as a short one (the 10-minute
# full-architecture track: whole 113 s, windows 60/15 69 s, 120/30 86 s on 2 CPU cores), and
# audio up to 180 s is encoded whole (exact). Memory per window is bounded by the span
# (eager attention: heads x 4500^2 x 4 bytes, ~1 GB for the real model; sdpa: small).
DEFAULT_WINDOW_S = 120.0
DEFAULT_CONTEXT_S = 30.0


@torch.no_grad()
def audio_features(
    wave: np.ndarray | torch.Tensor,
    encoder: AudioEncoder,
    *,
    window_s: float | None = DEFAULT_WINDOW_S,
    context_s: float = DEFAULT_CONTEXT_S,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """16 kHz mono waveform -> ``[frames, layers, hidden]`` on the CPU, frames = ``int(len/16000*25)``.

    Short audio (frames <= ``(window_s + 2*context_s) * 25``) is :func:`embed_waveform` itself
    (bit-identical). Longer audio is encoded in windows of ``window_s`` seconds of output frames,
    each run through the transformer with ``context_s`` seconds of extra frames on both sides
    (shifted inwards at the ends of the track so every pass sees the full span) and only its own
    frames kept. Everything before the transformer is the whole-track computation: input
    normalisation uses whole-track statistics, the conv feature encoder is computed in chunks
    (it is local except the first layer's GroupNorm, whose per-channel statistics are gathered
    over the whole track in a first pass), and the 50 Hz -> 25 fps linear resampling uses the
    global position mapping (align_corners over the whole track, float32 index arithmetic as
    torch's kernel). Only the transformer's global self-attention (and the positional conv at the
    window edges) sees a truncated track: the difference is measured by
    ``benchmarks/audio_windows.py``.

    Memory: the result (linear in the length) plus one window's activations; nothing quadratic
    in the length. The encoder runs on ``device`` (default: where its weights are; it is not
    moved), windows one after another; each window's frames go to the CPU result in ``dtype``
    (default: the encoder's dtype).

    ``window_s=None``: no windowing, the transformer attends over the whole track (the reference's
    result, to float rounding, for any length); the conv features are still chunked. Its memory
    is linear only with a memory-efficient attention (encoder built with ``"sdpa"``; "eager"
    materialises frames^2 scores per head) and its time is quadratic: a GPU option.
    """
    if (window_s is not None and window_s <= 0) or context_s < 0:
        raise ValueError(f"window_s must be > 0 (or None) and context_s >= 0, got {window_s}, {context_s}")
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave).reshape(-1)
    frames = num_video_frames(wave.shape[0])
    if frames < 1:
        raise AudioError(f"audio of {wave.shape[0]} samples is shorter than one video frame")
    dtype = dtype or encoder.dtype
    if window_s is None:
        win, ctx = frames, 0
        direct = frames <= int(round((DEFAULT_WINDOW_S + 2 * DEFAULT_CONTEXT_S) * FPS))
    else:
        win = max(1, int(round(window_s * FPS)))
        ctx = max(0, int(round(context_s * FPS)))
        direct = frames <= win + 2 * ctx
    if direct:
        return embed_waveform(wave, encoder, device=device).to("cpu", dtype)
    return windowed_features(wave, encoder, win, ctx, device=device, dtype=dtype)


@torch.no_grad()
def windowed_features(
    wave: np.ndarray,
    encoder: AudioEncoder,
    window_frames: int,
    context_frames: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    conv_chunk_s: float = 10.0,
) -> torch.Tensor:
    """The windowed path of :func:`audio_features`, in frames, for any length (no short cut).

    Windows: the frames are split into ``ceil(frames / window_frames)`` near-equal kept segments;
    each is encoded together with ``context_frames`` on both sides, the span shifted inwards at the
    track's ends (length ``min(frames, kept + 2*context)``).
    """
    wave = np.asarray(wave).reshape(-1)
    if wave.dtype != np.float32:
        wave = wave.astype(np.float32)
    n = wave.shape[0]
    seq_len = num_video_frames(n)
    if seq_len < 1:
        raise AudioError(f"audio of {n} samples is shorter than one video frame")
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    dtype = dtype or encoder.dtype
    convs = _ConvStream(encoder, wave, device, conv_chunk_s)
    i0, i1, w0, w1 = _linear_indices(convs.length, seq_len)

    layers, hidden = encoder.num_layers, encoder.model.config.hidden_size
    out = torch.empty(seq_len, layers, hidden, dtype=dtype)
    n_win = -(-seq_len // max(1, window_frames))
    bounds = [round(k * seq_len / n_win) for k in range(n_win + 1)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        span = min(seq_len, (b - a) + 2 * context_frames)
        e0 = min(max(0, a - context_frames), seq_len - span)
        e1 = e0 + span
        c0, c1 = int(i0[e0]), int(i1[e1 - 1]) + 1
        feats = convs.columns(c0, c1)  # [C, c1 - c0] float32 on device
        j0 = torch.from_numpy(i0[e0:e1] - c0).to(device)
        j1 = torch.from_numpy(i1[e0:e1] - c0).to(device)
        x = _lerp(feats[:, j0], feats[:, j1], torch.from_numpy(w0[e0:e1]).to(device),
                  torch.from_numpy(w1[e0:e1]).to(device))
        x = x.t()[None].to(encoder.dtype)  # [1, span, C], as AudioEncoder.resample
        emb = encoder.encode_features(x)[0]  # [span, layers, hidden]
        out[a:b] = emb[a - e0:b - e0].to("cpu", dtype)
        del feats, x, emb
    return out


def _lerp(x0: torch.Tensor, x1: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """``x0*w0 + x1*w1`` rounded as torch's CPU linear upsampling kernel (float32 result).

    The kernel evaluates ``fma(x0, w0, x1*w1)``: the products of float32 numbers are exact in
    float64, so this float64 form reproduces it (bit-identical in our tests).
    """
    if x0.device.type == "mps":  # no float64 there
        return (x0.float() * w0 + x1.float() * w1)
    return ((x1.float() * w1).double() + x0.double() * w0.double()).float()


def _linear_indices(in_len: int, out_len: int):
    """Source indices and weights of ``F.interpolate(mode="linear", align_corners=True)``.

    Replicates torch's float32 arithmetic (scale = float(in-1)/(out-1), src = scale*i, floor,
    lambda = src - floor), so a window's frames use exactly the whole-track mapping.
    """
    if out_len == in_len or in_len == 1 or out_len == 1:
        i0 = np.arange(out_len, dtype=np.int64) if out_len == in_len else np.zeros(out_len, np.int64)
        return i0, i0.copy(), np.ones(out_len, np.float32), np.zeros(out_len, np.float32)
    scale = np.float32(np.float32(in_len - 1) / np.float32(out_len - 1))
    src = scale * np.arange(out_len, dtype=np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = i0 + (i0 < in_len - 1)
    return i0, i1, (np.float32(1) - lam).astype(np.float32), lam


class _ConvStream:
    """The 50 Hz conv features of a whole track, computed in chunks, served left to right.

    ``columns(c0, c1)`` returns ``[C, c1 - c0]`` (float32, on device) for non-decreasing c0, c1;
    each column is computed once, columns left of the last c0 are dropped. The input is
    normalised with whole-track mean/variance (float64 accumulation); a GroupNorm first layer
    (feat_extract_norm="group", chinese-wav2vec2-base) gets whole-track per-channel statistics
    from a first pass over its conv output.
    """

    def __init__(self, encoder: AudioEncoder, wave: np.ndarray, device: torch.device, chunk_s: float):
        self.enc = encoder
        self.wave = wave
        self.device = device
        cfg = encoder.model.config
        self.kernels = list(cfg.conv_kernel)
        self.strides = list(cfg.conv_stride)
        self.hop = math.prod(self.strides)  # 320 samples = 20 ms
        rf = 1
        for k, s in zip(reversed(self.kernels), reversed(self.strides)):
            rf = (rf - 1) * s + k
        self.field = rf  # 400 samples
        n = wave.shape[0]
        self.length = 0 if n < self.field else (n - self.field) // self.hop + 1
        if self.length < 1:
            raise AudioError(f"audio of {n} samples is too short for the wav2vec2 feature encoder")
        self.chunk_cols = max(1, int(chunk_s * SAMPLE_RATE / self.hop))
        self.mean, self.denom = _whole_track_normalisation(wave)
        self.layers = encoder.model.feature_extractor.conv_layers
        norm = getattr(self.layers[0], "layer_norm", None)
        self.group_norm = norm if isinstance(norm, torch.nn.GroupNorm) else None  # else local (LayerNorm or none)
        if self.group_norm is not None:
            self.gn_scale, self.gn_shift = self._group_norm_affine()
        self.buf = None
        self.buf_start = 0
        self.buf_end = 0

    def _samples(self, s0: int, s1: int) -> torch.Tensor:
        x = (self.wave[s0:s1] - self.mean) / self.denom  # float32, as normalize_waveform
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)[None, None]

    def _conv0(self, j0: int, j1: int) -> torch.Tensor:
        """First conv layer's raw output (before its norm) for its columns [j0, j1)."""
        k, s = self.kernels[0], self.strides[0]
        x = self._samples(j0 * s, (j1 - 1) * s + k).to(self.enc.dtype)
        return self.layers[0].conv(x)

    def _group_norm_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        k, s = self.kernels[0], self.strides[0]
        n0 = (self.wave.shape[0] - k) // s + 1  # first layer's output length, whole track
        step = self.chunk_cols * self.hop // s
        count, mean, m2 = 0, None, None
        for j0 in range(0, n0, step):
            j1 = min(n0, j0 + step)
            y = self._conv0(j0, j1)[0].double()
            var_k, mean_k = torch.var_mean(y, dim=-1, correction=0)
            nk = j1 - j0
            if mean is None:
                count, mean, m2 = nk, mean_k, var_k * nk
            else:  # Chan et al. parallel update
                delta = mean_k - mean
                tot = count + nk
                mean = mean + delta * (nk / tot)
                m2 = m2 + var_k * nk + delta.square() * (count * nk / tot)
                count = tot
            del y
        gn = self.group_norm
        var = m2 / count
        rstd = 1.0 / torch.sqrt(var + gn.eps)
        w = gn.weight.double() if gn.weight is not None else torch.ones_like(rstd)
        b = gn.bias.double() if gn.bias is not None else torch.zeros_like(rstd)
        scale = rstd * w
        shift = b - mean * scale
        return scale.float()[None, :, None], shift.float()[None, :, None]

    def _compute(self, c0: int, c1: int) -> torch.Tensor:
        """Conv features of columns [c0, c1) -> [C, c1 - c0] float32."""
        s0 = c0 * self.hop
        s1 = (c1 - 1) * self.hop + self.field
        first = self.layers[0]
        if self.group_norm is not None:
            k, s = self.kernels[0], self.strides[0]
            j0 = s0 // s
            j1 = (s1 - k) // s + 1
            y = self._conv0(j0, j1)
            h = first.activation((y.float() * self.gn_scale + self.gn_shift).to(y.dtype))
        else:
            h = first(self._samples(s0, s1).to(self.enc.dtype))
        for layer in self.layers[1:]:
            h = layer(h)
        assert h.shape[-1] == c1 - c0, (h.shape, c0, c1)
        return h[0].float()

    def columns(self, c0: int, c1: int) -> torch.Tensor:
        if not (self.buf_start <= c0 < c1 <= self.length):
            raise ValueError(f"conv feature columns [{c0}, {c1}) out of order or range "
                             f"(buffer starts at {self.buf_start}, length {self.length})")
        parts = []
        start = c0
        if self.buf is not None and c0 < self.buf_end:
            parts.append(self.buf[:, c0 - self.buf_start:])
            start = self.buf_end
        while start < c1:
            stop = min(c1, start + self.chunk_cols)
            parts.append(self._compute(start, stop))
            start = stop
        self.buf = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        self.buf_start, self.buf_end = c0, c0 + self.buf.shape[1]
        return self.buf[:, : c1 - c0]


def _whole_track_normalisation(wave: np.ndarray, chunk: int = 1 << 22) -> tuple[np.float32, np.float32]:
    """Mean and divisor of :func:`normalize_waveform` without a full-size temporary.

    Mean as numpy's float32 mean; variance accumulated in float64 per chunk (numpy's float32
    ``var`` of the whole track would allocate two track-sized temporaries); divisor as the
    golden: float32(sqrt(float64(var) + 1e-7)).
    """
    mean = wave.mean(dtype=np.float32)
    m64 = np.float64(mean)
    acc = 0.0
    for i in range(0, wave.shape[0], chunk):
        d = wave[i:i + chunk].astype(np.float64) - m64
        acc += float(np.dot(d, d))
    var = acc / wave.shape[0]
    return np.float32(mean), np.float32(np.sqrt(np.float64(np.float32(var)) + 1e-7))
