"""Audio front end: decode, check, loudness-normalise, arrange speakers, wav2vec2 features.

The reference (``generate_infinitetalk.py``) does, per speaker: ``librosa.load(path, sr=16000)``
(mono = mean of the channels; for .mp4/.mov/.avi/.mkv it first extracts a 16 kHz stereo wav with
ffmpeg), ``loudness_norm`` to -23 LUFS, then ``audio_prepare_multi`` ('para' / 'add'), writes the
sum of the speaker tracks as the output video's audio, and ``get_embedding`` on each track.

Here:

- :func:`load_audio` decodes any container/codec PyAV can read (the audio track of a video too),
  downmixes to mono by averaging the channels (as librosa), resamples to 16 kHz with PyAV's
  ``AudioResampler`` (libswresample; the reference used soxr through librosa, so samples differ
  at the resampler's precision, not in content), trims codec priming/padding by timestamps, and
  rejects unusable input with one :class:`AudioError` naming the file.
- :func:`prepare_speakers` / :func:`prepare_audio` reproduce the reference's speaker layout.
- :func:`audio_features` is the reference ``get_embedding`` for any length: exact for short audio,
  windowed with context (memory linear in the length, not quadratic) for long audio.

PyAV and pyloudnorm are imported inside the functions that use them, so this module (and the
windowed encoder) imports with only numpy and torch (the GPU image has no PyAV).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ..models.wav2vec2 import SAMPLE_RATE, VIDEO_FPS, AudioEncoder, embed_waveform, num_video_frames

__all__ = [
    "AudioError",
    "AudioWarning",
    "DEFAULT_CONTEXT_S",
    "DEFAULT_WINDOW_S",
    "SpeakerAudio",
    "audio_features",
    "load_audio",
    "loudness_normalize",
    "measure_loudness",
    "prepare_audio",
    "prepare_speakers",
    "windowed_features",
]

# Loudness target of the reference and the BS.1770 absolute gate: anything quieter is silence.
TARGET_LUFS = -23.0
SILENCE_LUFS = -70.0
# pyloudnorm's gating block: shorter clips are measured as one block of their own length.
LOUDNESS_BLOCK_S = 0.4

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


class AudioError(ValueError):
    """An input audio file (or waveform) that cannot be used; the message names it and says why."""


class AudioWarning(UserWarning):
    """Audio was usable but not entirely as stored (truncated or corrupt parts were skipped)."""


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, *, strict: bool = False) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sr`` Hz (not loudness-normalised).

    Any container/codec FFmpeg (PyAV) reads: wav, flac, mp3, m4a/aac, ogg/opus, the audio track of
    mp4/mov/mkv/... (the "best" audio stream when there are several). Channels are averaged (as
    librosa's mono). Timestamps decide the span: samples before time 0 (priming that a demuxer
    exposes with negative timestamps) are dropped, and decoded samples past the stream's declared
    duration (encoder padding of the last packet, e.g. AAC) are cut; AAC/MP3/Opus priming that the
    container signals is already removed by the decoder.

    Damaged files: a file that decodes a prefix and then fails, or has corrupt packets, or decodes
    clearly less than its header declares, returns what decoded and warns (:class:`AudioWarning`
    giving how much) -- unless ``strict``, where that is an :class:`AudioError` too. A file from
    which nothing decodes is always an error.

    Raises :class:`AudioError` (message starts with the path) for: missing file, not a readable
    media file, no audio stream, no decodable samples, shorter than one video frame (1/25 s),
    silence (integrated loudness -inf, i.e. no 400 ms block above BS.1770's -70 LUFS gate).
    """
    return _load_checked(path, sr, strict=strict)[0]


def _load_checked(path, sr: int, *, strict: bool = False) -> tuple[np.ndarray, float]:
    """``load_audio`` plus the measured integrated loudness (reused for normalisation)."""
    wave = _decode(path, sr, strict=strict)
    name = os.fspath(path)
    if wave.size == 0:
        raise AudioError(f"{name}: contains no audio samples (zero length)")
    min_samples = math.ceil(sr / VIDEO_FPS)
    if wave.size < min_samples:
        raise AudioError(
            f"{name}: audio is {wave.size / sr * 1000:.1f} ms long, shorter than one video frame "
            f"(1/{VIDEO_FPS} s = {1000 / VIDEO_FPS:.0f} ms)"
        )
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{name}: decoded audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(wave)))
    if peak == 0.0:
        raise AudioError(f"{name}: audio is silent (digital silence, every sample is 0)")
    loudness = measure_loudness(wave, sr)
    if not np.isfinite(loudness) or loudness < SILENCE_LUFS:
        raise AudioError(
            f"{name}: audio is silent (integrated loudness {loudness:.1f} LUFS: no 400 ms block "
            f"above the {SILENCE_LUFS:.0f} LUFS absolute gate of ITU-R BS.1770; peak {peak:.2e})"
        )
    return wave, loudness


def _decode(path, sr: int, *, strict: bool) -> np.ndarray:
    try:
        import av
    except ImportError as e:  # pragma: no cover - the GPU image has no PyAV
        raise ImportError("decoding audio files needs PyAV (pip install av)") from e

    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioError(f"{name}: no such file")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a directory, not an audio file")
    if os.path.getsize(name) == 0:
        raise AudioError(f"{name}: empty file (0 bytes), not an audio file")
    try:
        container = av.open(name, metadata_errors="ignore")
    except (av.FFmpegError, OSError, EOFError, UnicodeDecodeError) as e:
        raise AudioError(f"{name}: not a readable audio/video file ({_why(e)})") from None

    with container:
        streams = container.streams.audio
        if not streams:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise AudioError(f"{name}: has no audio stream (streams: {kinds})")
        try:
            stream = container.streams.best("audio") or streams[0]
        except Exception:  # pragma: no cover - very old PyAV
            stream = streams[0]
        return _decode_stream(av, container, stream, name, sr, strict)


def _why(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return f"{type(e).__name__}: {msg}"


def _decode_stream(av, container, stream, name: str, sr: int, strict: bool) -> np.ndarray:
    chunks: list[np.ndarray] = []
    resampler = None
    setup = None  # (format, layout, rate) the resampler was built for
    t_first: float | None = None  # timestamp (s) of the first decoded sample
    decoded_s = 0.0  # decoded duration at the input rate(s)
    max_frame_s = 0.0
    bad_packets = 0
    first_error: str | None = None
    stopped: str | None = None

    def push(frame):
        out = resampler.resample(frame)
        for f in out:
            a = f.to_ndarray()  # fltp: [channels, samples]
            chunks.append(a[0].copy() if a.shape[0] == 1 else a.mean(axis=0, dtype=np.float32))

    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                bad_packets += 1
                first_error = first_error or _why(e)
                continue
            for frame in frames:
                if frame.samples == 0:
                    continue
                key = (frame.format.name, frame.layout.name, frame.sample_rate)
                if key != setup:  # first frame, or the stream changed format mid-way
                    if resampler is not None:
                        push(None)
                    resampler = av.AudioResampler(format="fltp", rate=sr)
                    setup = key
                if t_first is None:
                    t_first = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else 0.0
                dur = frame.samples / frame.sample_rate
                decoded_s += dur
                max_frame_s = max(max_frame_s, dur)
                push(frame)
    except (av.FFmpegError, OSError, EOFError) as e:
        stopped = _why(e)
    if resampler is not None:
        push(None)

    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        detail = stopped or first_error
        raise AudioError(f"{name}: no audio could be decoded" + (f" ({detail})" if detail else " (zero length)"))

    # Span by timestamps: [max(t_first, 0), min(decoded end, declared end)).
    t_first = t_first or 0.0
    start = max(t_first, 0.0)
    end = t_first + decoded_s
    declared = _declared_end(stream, t_first)
    problems = []
    if declared is not None and declared < end and end - declared <= 2 * max_frame_s + 1e-6:
        end = declared  # encoder padding in the last packet(s)
    elif declared is not None and declared > end + max(0.1, 0.01 * declared):
        problems.append(f"decoded {end - start:.2f} s of the {declared - start:.2f} s its header declares")
    if stopped:
        problems.append(f"decoding stopped at {end - start:.2f} s: {stopped}")
    if bad_packets:
        problems.append(f"{bad_packets} corrupt packet(s) skipped (first: {first_error})")
    lead = int(round((start - t_first) * sr))
    keep = int(round((end - start) * sr))
    wave = wave[lead:lead + keep]
    if problems:
        msg = f"{name}: audio is damaged or truncated: " + "; ".join(problems)
        if strict:
            raise AudioError(msg)
        warnings.warn(msg + f"; using the {wave.size / sr:.2f} s that decoded", AudioWarning, stacklevel=5)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _declared_end(stream, t_first: float) -> float | None:
    """End time (s) the stream's header declares, if it declares a duration."""
    if stream.duration is None or stream.time_base is None:
        return None
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else t_first
    return start + float(stream.duration * stream.time_base)


# --------------------------------------------------------------------------------------------
# Loudness
# --------------------------------------------------------------------------------------------


def measure_loudness(wave: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Integrated loudness (LUFS, ITU-R BS.1770-4 with pyloudnorm's meter); -inf for silence.

    Clips shorter than the 400 ms gating block (where pyloudnorm raises) are measured as a single
    block of their own length.
    """
    import pyloudnorm

    wave = np.asarray(wave)
    n = wave.shape[0]
    if n == 0:
        return float("-inf")
    block = LOUDNESS_BLOCK_S if n >= LOUDNESS_BLOCK_S * sr else n / sr
    return float(pyloudnorm.Meter(sr, block_size=block).integrated_loudness(wave))


def loudness_normalize(wave: np.ndarray, sr: int = SAMPLE_RATE, lufs: float = TARGET_LUFS) -> np.ndarray:
    """Scale ``wave`` to ``lufs`` integrated loudness (ITU-R BS.1770-4, pyloudnorm's meter).

    As the reference ``loudness_norm``: a signal whose measured loudness has magnitude > 100 LUFS
    (silence gives -inf) is returned unchanged (the same object). The gain is applied in the
    input's float precision: numpy < 2 kept float32 for ``float32_array * float64_gain``, numpy 2
    (NEP 50) would promote to float64, so the gain is cast explicitly. Warns on possible clipping,
    as pyloudnorm does. Clips shorter than 400 ms (where the reference's meter raises) are
    measured as one block (:func:`measure_loudness`).
    """
    wave = np.asarray(wave)
    return _apply_loudness(wave, measure_loudness(wave, sr), lufs)


def _apply_loudness(wave: np.ndarray, loudness: float, lufs: float) -> np.ndarray:
    if abs(loudness) > 100:
        return wave
    gain = np.power(10.0, (lufs - loudness) / 20.0)
    if np.issubdtype(wave.dtype, np.floating):
        gain = wave.dtype.type(gain)
    out = gain * wave
    if np.max(np.abs(out)) >= 1.0:
        warnings.warn("Possible clipped samples in output.", stacklevel=3)
    return out


# --------------------------------------------------------------------------------------------
# Speakers
# --------------------------------------------------------------------------------------------


class SpeakerAudio(NamedTuple):
    """Per-speaker tracks (all the same length, 16 kHz float32) and the mix the video carries."""

    tracks: list[np.ndarray]
    mix: np.ndarray

    @property
    def num_frames(self) -> int:
        return num_video_frames(self.mix.shape[0])


def prepare_speakers(wave1: np.ndarray | None, wave2: np.ndarray | None = None, mode: str = "para") -> SpeakerAudio:
    """The reference ``audio_prepare_multi`` on already-loaded (and normalised) waveforms.

    - one speaker (``wave2`` None): ``tracks = [wave1]``, ``mix = wave1``.
    - ``mode="para"`` (both talk over the same time): the tracks as given; the reference requires
      equal lengths (its ``sum`` raises otherwise), here the shorter one is padded with zeros at the
      end to the longer one's length.
    - ``mode="add"`` (speaker 2 after speaker 1): ``[wave1, zeros(len2)]`` and
      ``[zeros(len1), wave2]``, each ``len1 + len2`` long.
    - ``mix`` = the sum of the tracks (the reference writes it as the video's audio).

    A missing speaker of two (``None``; the reference's ``'None'`` path) is zeros of the other's
    length, as in the reference (so with 'add' it still takes its turn, silently).
    """
    if mode not in ("para", "add"):
        raise ValueError(f"audio mode must be 'para' or 'add', got {mode!r}")
    if wave1 is None and wave2 is None:
        raise ValueError("prepare_speakers needs at least one speaker waveform")
    if wave2 is None:
        w = _as_wave(wave1)
        return SpeakerAudio([w], w)
    w2 = _as_wave(wave2)
    w1 = np.zeros_like(w2) if wave1 is None else _as_wave(wave1)
    n1, n2 = w1.shape[0], w2.shape[0]
    if mode == "para":
        n = max(n1, n2)
        t1, t2 = _pad_to(w1, n), _pad_to(w2, n)
    else:
        t1 = np.concatenate([w1, np.zeros(n2, np.float32)])
        t2 = np.concatenate([np.zeros(n1, np.float32), w2])
    return SpeakerAudio([t1, t2], t1 + t2)


def _as_wave(w) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().numpy()
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-D), got shape {w.shape}")
    return w


def _pad_to(w: np.ndarray, n: int) -> np.ndarray:
    return w if w.shape[0] == n else np.concatenate([w, np.zeros(n - w.shape[0], np.float32)])


def prepare_audio(
    path1: str | os.PathLike | None,
    path2: str | os.PathLike | None = None,
    mode: str = "para",
    *,
    sr: int = SAMPLE_RATE,
    lufs: float = TARGET_LUFS,
    strict: bool = False,
) -> SpeakerAudio:
    """Files -> speaker tracks + mix, as the reference's ``audio_prepare_single/multi``.

    Each given file is loaded (:func:`load_audio`, with its checks) and loudness-normalised to
    ``lufs`` on its own, then arranged by :func:`prepare_speakers`. ``path2=None`` is one speaker;
    for two speakers, one of the paths may be None (a silent speaker, as the reference's 'None').
    """
    if path1 is None and path2 is None:
        raise ValueError("prepare_audio needs at least one audio file")
    waves = []
    for p in (path1, path2):
        if p is None:
            waves.append(None)
            continue
        w, loud = _load_checked(p, sr, strict=strict)
        waves.append(_apply_loudness(w, loud, lufs))
    if path2 is None:
        return prepare_speakers(waves[0], None, mode)
    return prepare_speakers(waves[0], waves[1], mode)


# --------------------------------------------------------------------------------------------
# wav2vec2 features for any length
# --------------------------------------------------------------------------------------------


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
        direct = frames <= int(round((DEFAULT_WINDOW_S + 2 * DEFAULT_CONTEXT_S) * VIDEO_FPS))
    else:
        win = max(1, int(round(window_s * VIDEO_FPS)))
        ctx = max(0, int(round(context_s * VIDEO_FPS)))
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
