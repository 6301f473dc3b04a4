"""The finished MP4: H.264 (yuv420p, BT.709 tagged) + AAC, streamed frame by frame, written atomically.

Also :func:`to_uint8_frames`, the model's ``[3, T, H, W]`` float video in ``[-1, 1]`` as frames.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from infinitetalk_dist.errors import MediaError
from infinitetalk_dist.timeline import FPS

from .atomic import atomic_write
from .container import AV_ERRORS, DecodeProblem, as_rate, check_file, decode, open_input

__all__ = ["WrittenVideo", "to_uint8_frames", "write_mp4", "x264_params"]


@dataclass(frozen=True)
class WrittenVideo:
    """What :func:`write_mp4` (or :func:`~.encode.write_video`) wrote."""

    path: str
    frames: int
    fps: float
    duration: float  # frames / fps, seconds
    width: int
    height: int
    audio: bool
    audio_duration: float | None  # seconds of AAC written (== duration to the sample)
    audio_padded: float  # seconds of silence appended because the audio was shorter
    audio_trimmed: bool  # the audio was longer than the video and was cut
    encode_seconds: float
    codec: str = "h264"  # write_video's codec name
    extra_audio_tracks: int = 0  # write_video's tracks copied from extra_audio, after the main one


_AAC_FRAME = 1024


class _AudioFeed:
    """Source audio -> resampled float planar chunks -> AAC packets, trimmed/padded on demand."""

    _dtype = np.float32  # of the buffered samples (encode.py's tracks buffer other types)

    def __init__(self, container, audio, audio_sr, out_sr, bitrate, out_path):
        self._src_container = None
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._exhausted = False
        self.encoded = 0
        self.padded = 0
        if isinstance(audio, (str, os.PathLike)):
            p = check_file(audio)
            self._src_container = c = open_input(p)
            if not c.streams.audio:
                c.close()
                raise MediaError(p, "has no audio stream")
            s = c.streams.audio[0]
            channels = s.codec_context.channels or 1
            errors: list[DecodeProblem] = []  # a damaged soundtrack is used as far as it decodes

            def pull():
                for f in decode(c, s, errors):
                    f.pts = None
                    yield f
            self._frames = pull()
        else:
            if audio_sr is None or int(audio_sr) <= 0:
                raise ValueError("write_mp4: audio given as samples needs audio_sr (Hz)")
            wave = _audio_array(audio, out_path)
            channels = wave.shape[0]
            layout = "mono" if channels == 1 else "stereo"
            sr = int(audio_sr)

            def pull():
                step = sr  # one second per frame
                for a in range(0, wave.shape[1], step):
                    f = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, a:a + step]),
                                                   format="fltp", layout=layout)
                    f.sample_rate = sr
                    yield f
            self._frames = pull()
        self.layout = "mono" if channels == 1 else "stereo"
        self.channels = 1 if channels == 1 else 2
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=out_sr)
        self.stream = container.add_stream("aac", rate=out_sr)
        self.stream.layout = self.layout
        self.stream.bit_rate = bitrate
        self._container = container
        self.out_sr = out_sr

    def _fill(self, n: int) -> None:
        while self._buffered < n and not self._exhausted:
            f = next(self._frames, None)
            out = self._resampler.resample(f)
            if f is None:
                self._exhausted = True
            for r in out:
                a = r.to_ndarray().reshape(self.channels, -1).astype(np.float32, copy=False)
                if a.shape[1]:
                    self._buf.append(a)
                    self._buffered += a.shape[1]

    def _take(self, n: int) -> np.ndarray:
        self._fill(n)
        have = min(n, self._buffered)
        parts, got = [], 0
        while got < have:
            a = self._buf[0]
            use = min(a.shape[1], have - got)
            parts.append(a[:, :use])
            if use == a.shape[1]:
                self._buf.pop(0)
            else:
                self._buf[0] = a[:, use:]
            got += use
        self._buffered -= have
        if have < n:
            parts.append(np.zeros((self.channels, n - have), self._dtype))
            self.padded += n - have
        return np.ascontiguousarray(np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0])

    def _encode(self, n: int) -> None:
        f = av.AudioFrame.from_ndarray(self._take(n), format="fltp", layout=self.layout)
        f.sample_rate = self.out_sr
        f.pts = self.encoded
        self.encoded += n
        for p in self.stream.encode(f):
            self._container.mux(p)

    def advance_to(self, total: int) -> None:
        """Encode whole AAC frames up to ``total`` output samples."""
        while self.encoded + _AAC_FRAME <= total:
            self._encode(_AAC_FRAME)

    def finish(self, total: int) -> bool:
        """Encode exactly ``total`` samples, flush; return whether source audio was left over."""
        self.advance_to(total)
        if total > self.encoded:
            self._encode(total - self.encoded)
        for p in self.stream.encode(None):
            self._container.mux(p)
        self._fill(1)
        return self._buffered > 0

    def close(self) -> None:
        if self._src_container is not None:
            self._src_container.close()
            self._src_container = None


def _audio_array(audio, out_path, who: str = "write_mp4") -> np.ndarray:
    """Waveform as float32 ``[C, N]`` (C = 1 or 2) in [-1, 1]; errors name ``who``."""
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    a = np.asarray(audio)
    if a.dtype.kind == "i":
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max + 1)
    elif a.dtype.kind != "f":
        raise ValueError(f"{who}({out_path}): audio samples must be float or int, got {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if a.ndim == 1:
        a = a[None]
    elif a.ndim == 2:
        if a.shape[0] in (1, 2) and a.shape[1] > 2:
            pass
        elif a.shape[1] in (1, 2):
            a = a.T
        else:
            raise ValueError(f"{who}({out_path}): audio must be [N], [N, C] or [C, N] with C <= 2, "
                             f"got shape {a.shape}")
    else:
        raise ValueError(f"{who}({out_path}): audio must be 1-D or 2-D, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{who}({out_path}): audio contains NaN or inf")
    return np.clip(a, -1.0, 1.0)


def _frames_iter(frames) -> Iterator[np.ndarray]:
    nd = getattr(frames, "ndim", None)
    if nd is not None and nd != 4:
        raise ValueError(f"frames must be [T, H, W, 3] or an iterable of [H, W, 3] arrays, got shape "
                         f"{tuple(frames.shape)}")
    for f in frames:
        if hasattr(f, "detach"):
            f = f.detach().cpu().numpy()
        yield np.asarray(f)


def _check_frame(f: np.ndarray, i: int, shape, out_path, who: str = "write_mp4") -> None:
    if f.dtype != np.uint8:
        raise ValueError(f"{who}({out_path}): frame {i} has dtype {f.dtype}; frames must be uint8 "
                         "(use to_uint8_frames for the model's float video)")
    if f.ndim != 3 or f.shape[2] != 3:
        raise ValueError(f"{who}({out_path}): frame {i} has shape {f.shape}, expected [H, W, 3]")
    if shape is not None and f.shape != shape:
        raise ValueError(f"{who}({out_path}): frame {i} has shape {f.shape}, frame 0 had {shape}")


@functools.cache
def x264_params() -> str:
    """Extra libx264 parameters: ``asm=avx2`` on CPUs with AVX-512, else none.

    x264's AVX-512 code in the macroblock-tree lookahead reads uninitialised heap memory: the same
    frames gave different bytes (and pixels differing by up to 12 levels in the first B-frames)
    depending on what the process had allocated before (reproduced with ``MALLOC_PERTURB_``;
    ``asm=avx2``, ``mbtree=0`` or ``bframes=0`` make it stable). Capping x264 at AVX2 keeps the
    output a function of the frames alone, which the farm needs (a re-rendered window and a
    resumed film are byte-identical). Cost: none measurable at our sizes.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    return "asm=avx2" if "avx512f" in flags and "avx2" in flags else ""



def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | np.ndarray | Any,
    *,
    fps: float = FPS,
    audio: np.ndarray | str | os.PathLike | None = None,
    audio_sr: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
    odd_size: str = "pad",
    audio_out_sr: int = 48000,
    audio_bitrate: int = 128_000,
) -> WrittenVideo:
    """Encode ``frames`` (+ ``audio``) to an H.264/AAC MP4 at ``path``, atomically.

    ``frames``: an iterable of ``uint8 [H, W, 3]`` RGB arrays (numpy or torch, any device), or one
    ``uint8 [T, H, W, 3]`` array/tensor. It is consumed once, frame by frame: memory is one frame
    plus the encoder's lookahead, never the whole video.

    Video: libx264, ``crf``/``preset``, yuv420p, BT.709 limited range (tagged in the stream so
    players convert back the same way), ``+faststart`` (index at the front, plays while
    downloading). yuv420p needs even sizes: ``odd_size="pad"`` (default) repeats the last
    row/column (no input pixel is lost; the file is up to 1 px larger), ``"crop"`` drops it,
    ``"error"`` refuses.

    Audio (optional): a float waveform ``[N]`` (mono), ``[N, 2]`` or ``[2, N]`` (stereo) with
    ``audio_sr``, int16/int32 samples are scaled, values are clipped to [-1, 1]; or the path of
    any file with an audio stream (its first one; more than 2 channels are downmixed to stereo).
    It is resampled to ``audio_out_sr`` and encoded as AAC-LC ``audio_bitrate``, interleaved
    with the video as it is written, and cut or padded with silence to exactly
    ``frames / fps`` seconds (to the sample; the AAC encoder's priming is removed by the MP4
    edit list, so players see equal lengths). The audio starts with the first video frame.

    Atomic (:func:`~infinitetalk_dist.media.atomic.atomic_write`): on any error, including one
    raised by the ``frames`` iterator, ``path`` is untouched (absent, or the previous file) and
    no temp file is left. Errors from the frames iterator propagate unchanged; encoding errors
    raise :class:`MediaError`.
    """
    out = Path(path)
    if odd_size not in ("pad", "crop", "error"):
        raise ValueError(f"odd_size must be 'pad', 'crop' or 'error', got {odd_size!r}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    rate = as_rate(fps)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise MediaError(out, f"output directory {parent} does not exist")
    if out.is_dir():
        raise MediaError(out, "is a directory")

    t0 = time.perf_counter()
    it = _frames_iter(frames)
    first = next(it, None)
    if first is None:
        raise MediaError(out, "no frames to write")
    _check_frame(first, 0, None, out)
    h, w = first.shape[:2]
    eh, ew = (h + 1) // 2 * 2, (w + 1) // 2 * 2
    if (eh, ew) != (h, w):
        if odd_size == "error":
            raise MediaError(out, f"frame size {w}x{h} is odd; H.264 yuv420p needs even width and height")
        if odd_size == "crop":
            eh, ew = h // 2 * 2, w // 2 * 2
        if eh == 0 or ew == 0:
            raise MediaError(out, f"frame size {w}x{h} is too small")

    with atomic_write(out) as tmp:
        n, feed, trimmed = _encode(
            tmp, itertools.chain([first], it), shape=first.shape, size=(eh, ew), rate=rate, crf=crf,
            preset=preset, audio=audio, audio_sr=audio_sr, audio_out_sr=audio_out_sr,
            audio_bitrate=audio_bitrate, out=out)
    duration = n / rate
    return WrittenVideo(
        path=str(out), frames=n, fps=float(rate), duration=float(duration), width=ew, height=eh,
        audio=feed is not None,
        audio_duration=feed.encoded / feed.out_sr if feed is not None else None,
        audio_padded=feed.padded / feed.out_sr if feed is not None else 0.0,
        audio_trimmed=bool(feed is not None and trimmed),
        encode_seconds=time.perf_counter() - t0,
    )


def _encode(tmp, frames, *, shape, size, rate, crf, preset, audio, audio_sr, audio_out_sr, audio_bitrate,
            out) -> tuple[int, _AudioFeed | None, bool]:
    """Write the MP4 to ``tmp``: (frames written, the audio feed or None, audio was cut)."""
    h, w = shape[:2]
    eh, ew = size

    def fit(f: np.ndarray) -> np.ndarray:
        if (eh, ew) == (h, w):
            return f
        if eh <= h and ew <= w:
            return f[:eh, :ew]
        return np.pad(f, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")

    container = None
    feed = None
    try:
        try:
            container = av.open(tmp, "w", format="mp4", options={"movflags": "+faststart"})
            options = {"crf": str(int(crf)), "preset": str(preset)}
            if x264_params():
                options["x264-params"] = x264_params()
            vs = container.add_stream("libx264", rate=rate, options=options)
            vs.width, vs.height, vs.pix_fmt = ew, eh, "yuv420p"
            cc = vs.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
            cc.color_range = 1  # limited ("MPEG", "tv")
            if audio is not None:
                feed = _AudioFeed(container, audio, audio_sr, int(audio_out_sr), int(audio_bitrate), out)
        except AV_ERRORS as e:
            raise MediaError(out, f"cannot set up the H.264/AAC encoder ({e})") from e

        n = 0
        to_yuv = VideoReformatter()
        for f in frames:
            if n:
                _check_frame(f, n, shape, out)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(fit(f)), format="rgb24")
            vf = to_yuv.reformat(vf, format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
            vf.pts = n
            try:
                for p in vs.encode(vf):
                    container.mux(p)
                n += 1
                if feed is not None:
                    feed.advance_to(n * feed.out_sr * rate.denominator // rate.numerator)
            except AV_ERRORS as e:
                raise MediaError(out, f"encoding frame {n} failed ({e})") from e
        try:
            for p in vs.encode(None):
                container.mux(p)
            trimmed = False
            if feed is not None:
                trimmed = feed.finish(n * feed.out_sr * rate.denominator // rate.numerator)
            container.close()
            container = None
        except AV_ERRORS as e:
            raise MediaError(out, f"finishing the file failed ({e})") from e
        return n, feed, trimmed
    finally:
        close_quietly(container)
        if feed is not None:
            feed.close()


def close_quietly(container) -> None:
    """Close a container an encode left half-way (release the file before it is removed)."""
    if container is not None:
        try:
            container.close()
        except Exception:
            pass


def to_uint8_frames(video, *, truncate: bool = False) -> Iterator[np.ndarray]:
    """``[3, T, H, W]`` float video in [-1, 1] (torch or numpy, any device/dtype) -> ``uint8 [H, W, 3]``
    frames, one at a time (memory: one frame on the host).

    ``clamp(-1, 1)``, ``(x + 1) / 2 * 255``, round to nearest (``truncate=True`` instead
    reproduces the reference's ``astype(uint8)`` truncation, which darkens by half a level on
    average). NaN raises ``ValueError`` naming the frame.
    """
    if getattr(video, "ndim", None) != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W], got shape {tuple(getattr(video, 'shape', ()))}")
    is_torch = hasattr(video, "detach")
    for t in range(video.shape[1]):
        x = video[:, t]
        if is_torch:
            import torch

            x = x.detach().float()
            bad = bool(x.isnan().any())
            y = ((x.clamp(-1, 1) + 1) / 2 * 255)
            y = (y.floor() if truncate else y.round()).to(torch.uint8)
            arr = y.permute(1, 2, 0).contiguous().cpu().numpy()
        else:
            x = np.asarray(x, dtype=np.float32)
            bad = bool(np.isnan(x).any())
            y = (np.clip(x, -1, 1) + 1) / 2 * 255
            y = (np.floor(y) if truncate else np.rint(y)).astype(np.uint8)
            arr = np.ascontiguousarray(y.transpose(1, 2, 0))
        if bad:
            raise ValueError(f"video frame {t} contains NaN")
        yield arr


# ---------------------------------------------------------------------------------------------
# probe
