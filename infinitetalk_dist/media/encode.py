"""Deliverable files for the studio conform: the source's frame rate, a chosen codec, the mix as is.

:func:`write_video` is :func:`~.writer.write_mp4`'s general sibling: write_mp4 stays the farm's
fixed H.264/AAC writer (its bytes must not move); hand-off files need the source's exact rate
(24000/1001 stays 24000/1001), the facility's codec and the final mix's channels and sample
rate (5.1 48 kHz must not come back stereo). Streamed, atomic, errors as :class:`MediaError`.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.audio.layout import AudioLayout
from av.video.reformatter import VideoReformatter

from infinitetalk_dist.errors import MediaError

from .atomic import atomic_write
from .container import AV_ERRORS, DecodeProblem, as_rate, check_file, decode, open_input
from .writer import WrittenVideo, _audio_array, _AudioFeed, _check_frame, _frames_iter, close_quietly, x264_params

__all__ = ["CODECS", "CONTAINERS", "check_output", "write_video"]

CODECS = ("h264", "hevc", "prores", "ffv1")
CONTAINERS = {".mp4": ("h264", "hevc"), ".mov": ("h264", "hevc", "prores"),
              ".mkv": ("h264", "hevc", "ffv1", "prores")}

_MUXER = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# The mix goes in losslessly where the container allows it; MP4 players expect AAC.
_AUDIO_CODEC = {".mp4": "aac", ".mov": "pcm_s24le", ".mkv": "flac"}
_AAC_BITRATE = 96_000  # per channel: 192 kbit/s a stereo pair
_AAC_RATES = frozenset((7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000,
                        88200, 96000))


@dataclass(frozen=True)
class _Spec:
    encoder: str
    pix_fmt: str
    even: tuple[int, int]  # (height, width) must be multiples of these (chroma subsampling)
    crf: int | None  # default CRF; None: the codec has none and crf is ignored
    yuv: bool  # tagged BT.709 limited range like write_mp4


_SPECS = {
    "h264": _Spec("libx264", "yuv420p", (2, 2), 18, True),
    "hevc": _Spec("libx265", "yuv420p10le", (2, 2), 20, True),
    "prores": _Spec("prores_ks", "yuv422p10le", (1, 2), None, True),  # 4:2:2: only the width halves
    "ffv1": _Spec("ffv1", "bgr0", (1, 1), None, False),  # RGB as is: decodes to the input bit for bit
}


def check_output(path: str | os.PathLike, codec: str) -> None:
    """Refuse a codec/container pair :func:`write_video` can't write, before any work is done.

    Unknown ``codec``: ``ValueError`` listing :data:`CODECS`. A file extension that can't hold
    it (see :data:`CONTAINERS`): :class:`MediaError` saying which extensions can.
    """
    if not isinstance(codec, str) or codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}; got {codec!r}")
    ext = Path(path).suffix.lower()
    if codec not in CONTAINERS.get(ext, ()):
        fits = [e for e, codecs in CONTAINERS.items() if codec in codecs]
        names = ", ".join(fits[:-1]) + " or " + fits[-1] if len(fits) > 1 else fits[0]
        raise MediaError(path, f"{codec} needs {names}, not {ext or 'a name without extension'}")


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | np.ndarray | Any,
    *,
    fps: float | Fraction,
    timestamps: Sequence[float] | None = None,
    codec: str = "h264",
    crf: int | None = None,
    audio: np.ndarray | str | os.PathLike | None = None,
    audio_sr: int | None = None,
    extra_audio: str | os.PathLike | None = None,
    preset: str = "veryfast",
) -> WrittenVideo:
    """Encode ``frames`` (+ audio tracks) to ``path`` (.mp4, .mov or .mkv), atomically.

    ``frames``: as :func:`~.writer.write_mp4` (uint8 ``[H, W, 3]`` RGB, an iterable or one
    ``[T, H, W, 3]`` array), consumed once, one frame at a time.

    ``fps``: the exact rate; give a ``Fraction`` (``Fraction(24000, 1001)``) or a float precise
    enough to round to it. Frame ``n`` is shown at ``n / fps``, unless ``timestamps`` (seconds,
    one per frame, strictly increasing, >= 0) gives each frame's time (variable frame rate; the
    stream then ticks at ``lcm(90000, fps numerator)`` Hz, so the nominal rate's frame times are
    still exact; Matroska stores milliseconds whatever is asked). The video lasts
    ``frames / fps``, or the last timestamp + ``1 / fps``.

    ``codec``: ``h264`` (libx264 yuv420p, ``crf`` default 18), ``hevc`` (libx265 10-bit
    yuv420p10le, ``crf`` default 20), ``prores`` (ProRes 422 HQ, yuv422p10le) or ``ffv1``
    (lossless RGB); ``crf``/``preset`` apply to h264/hevc only. The YUV codecs are BT.709
    limited range, and odd sizes their chroma can't split get the last row/column repeated.

    ``audio``: samples with ``audio_sr`` (as write_mp4: mono or stereo) or the path of a file
    whose first audio stream is the mix; ``extra_audio``: a file (the source video, typically)
    whose every audio stream follows as a further track (none: nothing added). Tracks keep
    their channel layout and sample rate, start with the first frame, and are cut or padded
    with silence to the video's length. Codec by container: .mp4 AAC (96 kbit/s a channel;
    rates AAC lacks are refused rather than resampled), .mov 24-bit PCM, .mkv FLAC.

    On any error, one from the ``frames`` iterator included (it propagates unchanged), ``path``
    is untouched and no temp file is left.
    """
    check_output(path, codec)
    out, spec = Path(path), _SPECS[codec]
    ext = out.suffix.lower()
    if spec.crf is not None:
        crf = spec.crf if crf is None else int(crf)
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {crf}")
    rate = as_rate(fps)
    tb, pts, tick = _timing(rate, timestamps, out, ext == ".mkv")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise MediaError(out, f"output directory {parent} does not exist")
    if out.is_dir():
        raise MediaError(out, "is a directory")
    if isinstance(audio, (str, os.PathLike)):
        check_file(audio)
    elif audio is not None and (audio_sr is None or int(audio_sr) <= 0):
        raise ValueError("write_video: audio given as samples needs audio_sr (Hz)")
    if extra_audio is not None:
        check_file(extra_audio)

    t0 = time.perf_counter()
    it = _frames_iter(frames)
    first = next(it, None)
    if first is None:
        raise MediaError(out, "no frames to write")
    _check_frame(first, 0, None, out, "write_video")
    h, w = first.shape[:2]
    eh, ew = -(-h // spec.even[0]) * spec.even[0], -(-w // spec.even[1]) * spec.even[1]

    with atomic_write(out) as tmp:
        n, end, main, extras = _encode(
            tmp, itertools.chain([first], it), spec=spec, codec=codec, ext=ext, shape=first.shape,
            size=(eh, ew), rate=rate, tb=tb, pts=pts, tick=tick, crf=crf, preset=preset, audio=audio,
            audio_sr=audio_sr, extra_audio=extra_audio, out=out)
    return WrittenVideo(
        path=str(out), frames=n, fps=float(rate), duration=float(end), width=ew, height=eh,
        audio=main is not None,
        audio_duration=main[0].encoded / main[0].out_sr if main else None,
        audio_padded=main[0].padded / main[0].out_sr if main else 0.0,
        audio_trimmed=bool(main and main[1]),
        encode_seconds=time.perf_counter() - t0, codec=codec, extra_audio_tracks=extras,
    )


def _timing(rate: Fraction, timestamps, out, mkv: bool) -> tuple[Fraction, list[int] | None, int]:
    """(stream time base, per-frame pts or None for constant rate, ticks per nominal frame)."""
    if timestamps is None:
        return 1 / rate, None, 1
    # Fine enough for any timestamp, and a whole number of ticks per frame at the nominal rate.
    hz = math.lcm(90000, rate.numerator)
    if hz > 10**7:  # a rate like 2997/125 from a rough float: keep the clock in range
        hz = 90000
    pts: list[int] = []
    for i, t in enumerate(timestamps):
        t = float(t)
        if not math.isfinite(t) or t < 0:
            raise MediaError(out, f"timestamp {i} is {t}; timestamps must be finite and >= 0")
        p = round(t * hz)
        if pts and p <= pts[-1]:
            raise MediaError(out, f"timestamps must be strictly increasing (frame {i}: {t} s after "
                                  f"{pts[-1] / hz} s, at 1/{hz} s ticks)")
        if pts and mkv and round(t * 1000) <= round(pts[-1] / hz * 1000):
            raise MediaError(out, f"frames {i - 1} and {i} share a millisecond, Matroska's clock; "
                                  "write .mp4 or .mov")
        pts.append(p)
    return Fraction(1, hz), pts, max(1, round(hz / rate))


def _video_stream(container, spec: _Spec, codec, ext, *, rate, tb, size, crf, preset, vfr):
    # VFR without B-frames: x264/x265 make decode times for reordered VFR frames that leave
    # MP4/MOV sample tables shorter than the picture (FFmpeg then reads the file as short).
    no_b = ["bframes=0"] if vfr else []
    if codec == "h264":
        options = {"crf": str(crf), "preset": str(preset)}
        if x264_params() or no_b:
            options["x264-params"] = ":".join([p for p in [x264_params()] if p] + no_b)
    elif codec == "hevc":
        options = {"crf": str(crf), "preset": str(preset),
                   "x265-params": ":".join(["log-level=error", *no_b])}  # else x265 chats on stderr
    elif codec == "prores":
        options = {"profile": "3", "vendor": "apl0"}  # HQ; Apple's vendor id, which some NLEs want
    else:
        options = {"level": "3", "g": "1", "slicecrc": "1"}  # the archival settings (RFC 9043)
    vs = container.add_stream(spec.encoder, rate=rate, options=options, time_base=tb)
    vs.height, vs.width = size
    vs.pix_fmt = spec.pix_fmt
    if spec.yuv:
        cc = vs.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
        cc.color_range = 1  # limited
    if codec == "hevc" and ext != ".mkv":
        vs.codec_tag = "hvc1"  # Apple players refuse MP4/MOV HEVC under the default 'hev1' tag
    return vs


def _encode(tmp, frames, *, spec, codec, ext, shape, size, rate, tb, pts, tick, crf, preset, audio,
            audio_sr, extra_audio, out):
    """Write the file to ``tmp``: (frames, video end in seconds, main track or None, extra tracks)."""
    h, w = shape[:2]
    eh, ew = size

    def fit(f: np.ndarray) -> np.ndarray:
        return f if (eh, ew) == (h, w) else np.pad(f, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")

    def end_of(k: int) -> Fraction:  # when frame k stops showing, in seconds
        if pts is None:
            return (k + 1) / rate
        return (pts[k + 1] if k + 1 < len(pts) else pts[k] + tick) * tb

    container = None
    tracks: list[_Track] = []
    try:
        try:
            # Matroska draws random track/segment ids unless bitexact: a re-render would differ
            container = av.open(tmp, "w", format=_MUXER[ext], options={"fflags": "+bitexact"}
                                if ext == ".mkv" else {"movflags": "+faststart"})
            vs = _video_stream(container, spec, codec, ext, rate=rate, tb=tb, size=size, crf=crf,
                               preset=preset, vfr=pts is not None)
            if audio is not None:
                tracks.append(_array_track(container, ext, audio, audio_sr, out)
                              if not isinstance(audio, (str, os.PathLike))
                              else _file_track(container, ext, check_file(audio), 0))
            if extra_audio is not None:
                p = check_file(extra_audio)
                with open_input(p) as src:
                    count = len(src.streams.audio)
                tracks += [_file_track(container, ext, p, i) for i in range(count)]
        except AV_ERRORS as e:
            raise MediaError(out, f"cannot set up the {codec} encoder ({e})") from e

        # VFR: the encoders' packet durations are guesses; the frame's display time is known.
        shown = {p: q - p for p, q in zip(pts, [*pts[1:], pts[-1] + tick])} if pts else {}

        def put(packets) -> None:
            for p in packets:
                p.duration = shown.get(p.pts, p.duration)
                container.mux(p)

        n = 0
        to_pix = VideoReformatter()
        for f in frames:
            if n:
                _check_frame(f, n, shape, out, "write_video")
            if pts is not None and n >= len(pts):
                raise MediaError(out, f"more frames than the {len(pts)} timestamps given")
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(fit(f)), format="rgb24")
            vf = (to_pix.reformat(vf, format=spec.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
                  if spec.yuv else to_pix.reformat(vf, format=spec.pix_fmt))
            vf.pts = n if pts is None else pts[n]
            vf.time_base = tb
            try:
                put(vs.encode(vf))
                for t in tracks:
                    t.advance_to(t.samples(end_of(n)))
                n += 1
            except AV_ERRORS as e:
                raise MediaError(out, f"encoding frame {n} failed ({e})") from e
        if pts is not None and n != len(pts):
            raise MediaError(out, f"{len(pts)} timestamps given for {n} frames")
        end = end_of(n - 1)
        try:
            put(vs.encode(None))
            trimmed = [t.finish(t.samples(end)) for t in tracks]
            container.close()
            container = None
        except AV_ERRORS as e:
            raise MediaError(out, f"finishing the file failed ({e})") from e
        main = (tracks[0], trimmed[0]) if audio is not None else None
        return n, end, main, len(tracks) - (audio is not None)
    finally:
        close_quietly(container)
        for t in tracks:
            t.close()


class _Track(_AudioFeed):
    """One audio track: a source's samples, changed in nothing but the sample type the encoder
    takes (no resampling, no remix), cut or padded with silence by write_mp4's feed logic."""

    def __init__(self, container, ext, chunks: Iterator[np.ndarray], *, channels, layout, rate, wide,
                 source, src_container=None):
        self._src_container = src_container
        self._buf, self._buffered, self._exhausted = [], 0, False
        self.encoded = self.padded = 0
        codec = _AUDIO_CODEC[ext]
        if codec == "aac":
            if rate not in _AAC_RATES:
                raise MediaError(source, f"{rate} Hz audio can't go in .mp4 (AAC) without resampling; "
                                         "write .mov or .mkv")
            if layout.name.endswith("channels"):  # AAC needs named channels: FFmpeg's usual N ones
                layout = AudioLayout(f"{channels}c")
        self.stream = s = container.add_stream(codec, rate=rate)
        s.layout = layout
        if codec == "aac":
            s.bit_rate = _AAC_BITRATE * channels
        elif codec == "flac":
            s.format = "s32" if wide else "s16"  # s32 is coded as 24-bit FLAC
        fmt = s.codec_context.format
        self._fmt, self._planar = fmt.name, fmt.is_planar
        self._dtype = np.dtype({"flt": np.float32, "s16": np.int16, "s32": np.int32}[fmt.name.rstrip("p")])
        self.layout, self.out_sr, self.channels = layout, rate, channels
        self._container, self._chunks = container, chunks

    def _fill(self, n: int) -> None:
        while self._buffered < n and not self._exhausted:
            a = next(self._chunks, None)
            if a is None:
                self._exhausted = True
            elif a.shape[1]:
                self._buf.append(_convert(a, self._dtype))
                self._buffered += a.shape[1]

    def _encode(self, n: int) -> None:
        a = self._take(n)
        a = a if self._planar else np.ascontiguousarray(a.T).reshape(1, -1)
        f = av.AudioFrame.from_ndarray(a, format=self._fmt, layout=self.layout)
        f.sample_rate, f.pts, f.time_base = self.out_sr, self.encoded, Fraction(1, self.out_sr)
        self.encoded += n
        for p in self.stream.encode(f):
            self._container.mux(p)

    def samples(self, seconds: Fraction) -> int:
        return math.floor(seconds * self.out_sr)


def _array_track(container, ext, audio, audio_sr, out) -> _Track:
    wave = _audio_array(audio, out, "write_video")
    sr = int(audio_sr)
    chunks = (wave[:, a:a + sr] for a in range(0, wave.shape[1], sr))  # a second at a time
    return _Track(container, ext, chunks, channels=wave.shape[0], rate=sr, wide=True, source=out,
                  layout=AudioLayout("mono" if wave.shape[0] == 1 else "stereo"))


def _file_track(container, ext, p: Path, index: int) -> _Track:
    """A track from the file's ``index``-th audio stream, read by a demuxer of its own."""
    src = open_input(p)
    try:
        if len(src.streams.audio) <= index:
            raise MediaError(p, "has no audio stream")
        s = src.streams.audio[index]
        cc = s.codec_context
        errors: list[DecodeProblem] = []  # a damaged soundtrack is used as far as it decodes

        def chunks():
            packer = None  # planar frames of 8+ channels crash PyAV's to_ndarray: pack them first (exact)
            for f in decode(src, s, errors):
                if f.format.is_planar:
                    packer = packer or av.AudioResampler(format=f.format.packed.name, layout=f.layout,
                                                         rate=f.sample_rate)
                    packed = packer.resample(f)
                else:
                    packed = [f]
                for g in packed:
                    a = g.to_ndarray().reshape(g.samples, -1).T
                    if a.shape[0] != cc.channels:
                        raise MediaError(p, f"audio stream {index} changes to {a.shape[0]} channels")
                    yield a

        # 8- and 16-bit sources stay 16-bit in FLAC; anything else is kept at 24 bits
        wide = cc.format is None or cc.format.name.rstrip("p") not in ("u8", "s16")
        return _Track(container, ext, chunks(), channels=cc.channels, layout=cc.layout,
                      rate=cc.sample_rate, wide=wide, source=p, src_container=src)
    except BaseException:
        src.close()
        raise


def _convert(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``[C, N]`` samples of any FFmpeg sample type as float32, int16 or int32; exact wherever
    the target is as wide as the source."""
    if a.dtype == np.uint8:  # offset binary
        a = (a.astype(np.int16) - 128) << 8
    if a.dtype == dtype:
        return a
    if a.dtype.kind == "i":
        bits = 8 * a.dtype.itemsize
        if dtype.kind == "f":
            return (a / float(1 << (bits - 1))).astype(np.float32)
        shift = 8 * dtype.itemsize - bits
        return a.astype(dtype) << shift if shift >= 0 else (a >> -shift).astype(dtype)
    if dtype.kind == "f":
        return a.astype(np.float32)
    scale = float(1 << (8 * dtype.itemsize - 1))
    return np.clip(np.rint(a.astype(np.float64) * scale), -scale, scale - 1).astype(dtype)
