"""Media input/output: the reference image, the source video, the finished MP4.

Everything here is PyAV (FFmpeg's libraries, no ``ffmpeg`` binary) and PIL. Arrays are numpy
``uint8 [H, W, 3]`` RGB; "size" tuples are numpy order ``(height, width)``.

- :func:`read_image` -- one RGB picture, EXIF orientation applied, sanity-checked.
- :class:`VideoSource` -- a video opened for frame access by *timestamp*: output frame ``i`` at
  25 fps shows the source frame on screen at ``i / 25`` s, whatever the source rate (24, 30, 60,
  variable). Memory stays bounded: frames are decoded on demand with a small cache.
- :func:`write_mp4` -- H.264 (yuv420p, BT.709 tagged) + AAC MP4, streamed frame by frame, audio
  trimmed or padded with silence to the video's length, written atomically (temp file + rename).
- :func:`probe` -- streams, durations, frame counts, codecs (optionally by decoding everything).
- :func:`to_uint8_frames` -- the model's ``[3, T, H, W]`` float video in ``[-1, 1]`` to frames.

Every problem with a file raises :class:`MediaError` (a ``ValueError``) whose message starts with
the file's path.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "MediaError",
    "VideoSource",
    "WrittenVideo",
    "probe",
    "read_image",
    "to_uint8_frames",
    "write_mp4",
]

_AVError = (av.error.FFmpegError, OSError)


class MediaError(ValueError):
    """A media file is missing, unreadable, corrupt or unsuitable; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "no such file")
    if p.is_dir():
        raise MediaError(p, "is a directory, not a file")
    if p.stat().st_size == 0:
        raise MediaError(p, "is empty (0 bytes)")
    return p


# ---------------------------------------------------------------------------------------------
# images


def read_image(path: str | os.PathLike, *, max_aspect: float = 8.0) -> np.ndarray:
    """Read a picture as ``uint8 [H, W, 3]`` RGB with its EXIF orientation applied.

    Any format PIL reads; the first frame of animated/multi-page files. Alpha is dropped as the
    reference's ``Image.open(p).convert("RGB")`` does (transparent pixels keep their stored RGB),
    16-bit greyscale is scaled to 8 bits. Raises :class:`MediaError` for a missing file, a file
    that is not an image or is corrupt/truncated, a zero-sized image, and an aspect ratio more
    extreme than ``max_aspect`` : 1 either way (``None`` disables that check).
    """
    p = _check_file(path)
    try:
        with Image.open(p) as im:
            try:
                im.load()
            except Image.DecompressionBombError as e:
                raise MediaError(p, f"image too large to decode safely ({e})") from e
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise MediaError(p, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
            try:
                im = ImageOps.exif_transpose(im)
            except Exception as e:  # a broken EXIF block must not lose a good picture
                warnings.warn(f"{p}: ignoring unreadable EXIF orientation ({e})", stacklevel=2)
            if im.mode.startswith("I;16"):
                arr16 = np.asarray(im, dtype=np.uint16)
                rgb = np.repeat(((arr16.astype(np.uint32) + 128) // 257).astype(np.uint8)[..., None], 3, -1)
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except MediaError:
        raise
    except UnidentifiedImageError as e:
        raise MediaError(p, "not a recognised image file") from e
    except Image.DecompressionBombError as e:
        raise MediaError(p, f"image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise MediaError(p, f"corrupt image ({type(e).__name__}: {e})") from e
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise MediaError(p, f"image has zero size ({w}x{h})")
    if max_aspect is not None and max(h, w) / min(h, w) > max_aspect:
        raise MediaError(p, f"aspect ratio {w}x{h} ({max(h, w) / min(h, w):.1f}:1) is beyond the "
                            f"supported 1:{max_aspect:g}")
    return np.ascontiguousarray(rgb)


# ---------------------------------------------------------------------------------------------
# decoding helpers


def _decode(container, stream, errors: list[str]) -> Iterator:
    """Frames of ``stream``; packets the decoder rejects are skipped (noted in ``errors``), a demux
    error (truncated/corrupt container) ends the stream after draining the decoder."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except _AVError as e:
            errors.append(f"read stopped: {e}")
            try:
                frames = stream.decode(None)
            except _AVError:
                frames = []
            yield from frames
            return
        try:
            frames = stream.decode(packet)
        except _AVError as e:
            errors.append(f"undecodable packet at pts {packet.pts}: {e}")
            continue
        yield from frames


def _is_attached_picture(stream) -> bool:
    return bool(int(stream.disposition) & int(av.stream.Disposition.attached_pic))


def _open_input(p: Path):
    try:
        return av.open(str(p))
    except _AVError as e:
        raise MediaError(p, f"not a readable media file ({e})") from e


def _video_stream(p: Path, container):
    if container.format.name.endswith("_pipe") or container.format.name in ("image2", "gif_pipe"):
        raise MediaError(p, f"is a still image ({container.format.name}), not a video; "
                            "use read_image for pictures")
    streams = [s for s in container.streams.video if not _is_attached_picture(s)]
    if not streams:
        n_audio = len(container.streams.audio)
        what = (f"audio only ({n_audio} audio stream{'s' if n_audio != 1 else ''})" if n_audio
                else "no streams it can use")
        raise MediaError(p, f"has no video stream: {what}")
    return streams[0]


# ---------------------------------------------------------------------------------------------
# video source


class VideoSource:
    """A video file opened for frame access by timestamp, with bounded memory.

    ``VideoSource(path)`` checks the file right away (exists, is a container FFmpeg reads, has a
    video stream that is not cover art, at least one frame decodes). Frame indices are source
    frames in display order. ``fps`` is the stream's nominal (average) rate; ``frame_count``,
    ``duration`` and ``timestamps`` come from an index built on first use by decoding the whole
    stream once (frames are discarded, only timestamps and key-frame flags are kept), so a
    container whose header lies about its length is counted right.

    **Timing rule**: output frame ``i`` at ``out_fps`` is the source frame *on screen* at
    ``t = i / out_fps`` seconds from the first frame: the last frame whose presentation time is
    ``<= t`` (exact rational arithmetic on the stream's time base). Times at or past the end
    (``t >= duration``) raise ``IndexError`` unless ``clamp=True`` (then the last frame).
    If the stream has no usable timestamps (missing or not increasing) frame ``k`` is placed at
    ``k / fps``.

    **Damaged files**: a truncated or partly corrupt video is decoded as far as it goes: packets
    the decoder rejects are skipped and a read error ends the stream; the frames that did decode
    are the video (``decode_errors`` lists what went wrong and a ``UserWarning`` is issued when
    the index is built). Zero decodable frames is a :class:`MediaError`.

    **Rotation**: a display-matrix rotation (phone videos) by a multiple of 90 degrees is applied,
    so frames, ``width``, ``height`` are as displayed; flips and sample aspect ratio are ignored.

    Returned frames are read-only views of cached arrays (``.copy()`` to modify). Random access
    seeks to the key frame before the target; sequential access decodes forward.
    """

    def __init__(self, path: str | os.PathLike, *, cache_size: int = 8):
        self.path = _check_file(path)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._reader = None  # (container, stream, frame iterator)
        self._next = 0  # index of the next frame the reader yields (if known)
        self._index = None
        self._reformatter = VideoReformatter()  # reused: keeps swscale's context (3-8x faster)
        self.decode_errors: list[str] = []
        c = _open_input(self.path)
        try:
            s = _video_stream(self.path, c)
            self._stream_index = s.index
            self.codec = s.codec_context.name
            self.time_base = s.time_base
            self.frame_rate = next((r for r in (s.average_rate, s.guessed_rate, s.base_rate)
                                    if r is not None and r > 0), None)
            self.header_frames = int(s.frames or 0)
            errors: list[str] = []
            first = next(_decode(c, s, errors), None)
            if first is None:
                detail = f" ({errors[0]})" if errors else ""
                raise MediaError(self.path, f"video stream ({self.codec}) has no decodable frames{detail}")
            self.rotation = int(round((first.rotation or 0) / 90.0)) * 90 % 360
            w, h = first.width, first.height
        finally:
            c.close()
        self.width, self.height = (h, w) if self.rotation in (90, 270) else (w, h)

    # -- metadata ---------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the frames returned (rotation applied)."""
        return self.height, self.width

    @property
    def fps(self) -> float:
        """Nominal frame rate (the stream's average rate; from the index if the stream has none)."""
        if self.frame_rate is not None:
            return float(self.frame_rate)
        return self.frame_count / self.duration

    @property
    def frame_count(self) -> int:
        """Frames that actually decode (counted, not the header's claim)."""
        return len(self._ensure_index()["pts"])

    def __len__(self) -> int:
        return self.frame_count

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return float(self._ensure_index()["duration"])

    @property
    def timestamps(self) -> np.ndarray:
        """Presentation time of every frame, seconds from the first frame (float64)."""
        ix = self._ensure_index()
        return np.array([float(t) for t in ix["times"]]) if ix["times"] is not None else \
            np.array([float((int(p) - ix["pts"][0]) * self.time_base) for p in ix["pts"]])

    def _ensure_index(self) -> dict:
        if self._index is not None:
            return self._index
        c = _open_input(self.path)
        errors: list[str] = []
        pts, keys = [], []
        last_duration = 0
        try:
            s = c.streams[self._stream_index]
            s.thread_type = "AUTO"
            for f in _decode(c, s, errors):
                pts.append(f.pts)
                keys.append(bool(f.key_frame))
                last_duration = f.duration or 0
        finally:
            c.close()
        if not pts:
            raise MediaError(self.path, "video stream has no decodable frames")
        reliable = all(p is not None for p in pts) and all(b > a for a, b in zip(pts, pts[1:]))
        rate = self.frame_rate
        if reliable:
            pts_arr = np.asarray(pts, dtype=np.int64)
            if last_duration <= 0:
                last_duration = int(np.median(np.diff(pts_arr))) if len(pts) > 1 else (
                    round(1 / (rate * self.time_base)) if rate else 0)
            span = (int(pts_arr[-1] - pts_arr[0]) + max(int(last_duration), 1)) * self.time_base
            times = None
        else:
            rate = rate or Fraction(25)
            pts_arr = np.arange(len(pts), dtype=np.int64)
            times = [Fraction(k) / rate for k in range(len(pts))]
            span = Fraction(len(pts)) / rate
        if self.frame_rate is None and span > 0:
            self.frame_rate = Fraction(len(pts)) / span
        keys_arr = np.asarray(keys, dtype=bool)
        keys_arr[0] = True  # decoding always starts somewhere; treat the first frame as a key frame
        self._index = {"pts": pts_arr, "keys": keys_arr, "reliable": reliable, "duration": span,
                       "times": times}
        self.decode_errors = errors
        if errors or (self.header_frames and self.header_frames != len(pts)):
            warnings.warn(f"{self.path}: damaged or inconsistent video: {len(pts)} frames decode "
                          f"(header says {self.header_frames or 'nothing'}); "
                          f"{len(errors)} decode error(s){': ' + errors[0] if errors else ''}",
                          stacklevel=3)
        return self._index

    # -- timestamp mapping ------------------------------------------------------------------

    def _index_at(self, t: Fraction, clamp: bool) -> int:
        ix = self._ensure_index()
        if t < 0:
            raise IndexError(f"{self.path}: time {float(t):.6f} s is negative")
        if t >= ix["duration"]:
            if clamp:
                return len(ix["pts"]) - 1
            raise IndexError(f"{self.path}: time {float(t):.6f} s is past the end "
                             f"({float(ix['duration']):.6f} s, {len(ix['pts'])} frames)")
        if ix["reliable"]:
            target = ix["pts"][0] + math.floor(t / self.time_base)
            k = int(np.searchsorted(ix["pts"], target, side="right")) - 1
        else:
            k = math.floor(t * (self.frame_rate or 25))
        return min(max(k, 0), len(ix["pts"]) - 1)

    def source_index_at_time(self, seconds: float, *, clamp: bool = False) -> int:
        """Index of the source frame on screen at ``seconds`` (1 us tolerance for float input)."""
        return self._index_at(Fraction(seconds) + Fraction(1, 1_000_000), clamp)

    def source_index_for_output(self, i: int, out_fps: float = 25, *, clamp: bool = False) -> int:
        """Index of the source frame shown as output frame ``i`` of an ``out_fps`` video."""
        return self._index_at(Fraction(int(i)) / _as_rate(out_fps), clamp)

    def num_output_frames(self, out_fps: float = 25) -> int:
        """Output frames at ``out_fps`` whose time falls inside the video: ``ceil(duration * fps)``."""
        return math.ceil(self._ensure_index()["duration"] * _as_rate(out_fps))

    def frame_at_time(self, seconds: float, *, clamp: bool = False) -> np.ndarray:
        """The frame on screen at ``seconds`` from the first frame, ``uint8 [H, W, 3]``."""
        return self.frame(self.source_index_at_time(seconds, clamp=clamp))

    def frame_for_output_index(self, i: int, out_fps: float = 25, *, clamp: bool = False) -> np.ndarray:
        """Output frame ``i`` of an ``out_fps`` rendition of this video (see the timing rule)."""
        return self.frame(self.source_index_for_output(i, out_fps, clamp=clamp))

    # -- decoding ---------------------------------------------------------------------------

    def _to_array(self, f) -> np.ndarray:
        arr = self._reformatter.reformat(f, format="rgb24").to_ndarray()
        if self.rotation:
            arr = np.ascontiguousarray(np.rot90(arr, k=self.rotation // 90))
        arr.setflags(write=False)
        return arr

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader[0].close()
            self._reader = None

    def _start_reader(self, key_index: int) -> None:
        """(Re)position the reader so that it yields frames from ``key_index`` (or earlier)."""
        ix = self._index
        if key_index > 0 and ix["reliable"]:
            if self._reader is None:
                self._open_reader()
            c, s, _ = self._reader
            try:
                c.seek(int(ix["pts"][key_index]), stream=s, backward=True, any_frame=False)
                self._reader = (c, s, _decode(c, s, []))
                self._next = -1  # unknown until a frame arrives
                return
            except _AVError:
                pass
        self._close_reader()  # from the beginning: a fresh demuxer and decoder
        self._open_reader()

    def _open_reader(self) -> None:
        c = _open_input(self.path)
        s = c.streams[self._stream_index]
        s.thread_type = "AUTO"
        self._reader = (c, s, _decode(c, s, []))
        self._next = 0

    def _read(self):
        """Next (index, frame) from the reader, or None at the end."""
        c, s, frames = self._reader
        ix = self._index
        for f in frames:
            if ix["reliable"]:
                if f.pts is None:
                    continue
                k = int(np.searchsorted(ix["pts"], f.pts))
                if k >= len(ix["pts"]) or ix["pts"][k] != f.pts:
                    continue
            else:
                k = self._next
            self._next = k + 1
            return k, f
        return None

    def frame(self, k: int) -> np.ndarray:
        """Source frame ``k`` (display order), ``uint8 [H, W, 3]``, read-only."""
        ix = self._ensure_index()
        n = len(ix["pts"])
        if not -n <= k < n:
            raise IndexError(f"{self.path}: frame {k} out of range ({n} frames)")
        k %= n
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        key = int(np.flatnonzero(ix["keys"][: k + 1])[-1])
        if (self._reader is None or self._next < 0 or k < self._next
                or (key > self._next and ix["reliable"])):  # a seek is quicker than decoding forward
            self._start_reader(key)
        for attempt in range(2):
            while (got := self._read()) is not None:
                j, f = got
                if j == k:
                    arr = self._to_array(f)
                    self._cache[k] = arr
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
                    return arr
                if j > k:
                    break
            # overshot (seek landed late) or ran out: decode from the start once
            self._close_reader()
            self._start_reader(0)
        raise MediaError(self.path, f"frame {k} could not be decoded on a second pass")

    def __iter__(self) -> Iterator[np.ndarray]:
        """All frames in display order (a separate decoder; random access state untouched)."""
        c = _open_input(self.path)
        try:
            s = c.streams[self._stream_index]
            s.thread_type = "AUTO"
            for f in _decode(c, s, []):
                yield self._to_array(f)
        finally:
            c.close()

    def close(self) -> None:
        self._close_reader()
        self._cache.clear()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoSource({str(self.path)!r}, {self.width}x{self.height}, {self.codec}, "
                f"{self.fps:.3f} fps)")


def _as_rate(fps) -> Fraction:
    """Frame rate as an exact fraction (floats like 29.97002997 become 30000/1001)."""
    r = Fraction(fps) if isinstance(fps, (int, Fraction)) else Fraction(float(fps)).limit_denominator(10000)
    if r <= 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    return r


# ---------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class WrittenVideo:
    """What :func:`write_mp4` wrote."""

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


_AAC_FRAME = 1024


class _AudioFeed:
    """Source audio -> resampled float planar chunks -> AAC packets, trimmed/padded on demand."""

    def __init__(self, container, audio, audio_sr, out_sr, bitrate, out_path):
        self._src_container = None
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._exhausted = False
        self.encoded = 0
        self.padded = 0
        if isinstance(audio, (str, os.PathLike)):
            p = _check_file(audio)
            self._src_container = c = _open_input(p)
            if not c.streams.audio:
                c.close()
                raise MediaError(p, "has no audio stream")
            s = c.streams.audio[0]
            channels = s.codec_context.channels or 1
            errors: list[str] = []

            def pull():
                for f in _decode(c, s, errors):
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
            parts.append(np.zeros((self.channels, n - have), np.float32))
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


def _audio_array(audio, out_path) -> np.ndarray:
    """Waveform as float32 ``[C, N]`` (C = 1 or 2) in [-1, 1]."""
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    a = np.asarray(audio)
    if a.dtype.kind == "i":
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max + 1)
    elif a.dtype.kind != "f":
        raise ValueError(f"write_mp4({out_path}): audio samples must be float or int, got {a.dtype}")
    a = a.astype(np.float32, copy=False)
    if a.ndim == 1:
        a = a[None]
    elif a.ndim == 2:
        if a.shape[0] in (1, 2) and a.shape[1] > 2:
            pass
        elif a.shape[1] in (1, 2):
            a = a.T
        else:
            raise ValueError(f"write_mp4({out_path}): audio must be [N], [N, C] or [C, N] with C <= 2, "
                             f"got shape {a.shape}")
    else:
        raise ValueError(f"write_mp4({out_path}): audio must be 1-D or 2-D, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"write_mp4({out_path}): audio contains NaN or inf")
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


def _check_frame(f: np.ndarray, i: int, shape, out_path) -> None:
    if f.dtype != np.uint8:
        raise ValueError(f"write_mp4({out_path}): frame {i} has dtype {f.dtype}; frames must be uint8 "
                         "(use to_uint8_frames for the model's float video)")
    if f.ndim != 3 or f.shape[2] != 3:
        raise ValueError(f"write_mp4({out_path}): frame {i} has shape {f.shape}, expected [H, W, 3]")
    if shape is not None and f.shape != shape:
        raise ValueError(f"write_mp4({out_path}): frame {i} has shape {f.shape}, frame 0 had {shape}")


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


def _fsync(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | np.ndarray | Any,
    *,
    fps: float = 25,
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

    Atomic: the file is written as a hidden temp file next to ``path`` and renamed over it only
    when complete (after fsync); on any error, including one raised by the ``frames`` iterator,
    the temp file is removed and ``path`` is untouched (absent, or the previous file). Errors
    from the frames iterator propagate unchanged; encoding errors raise :class:`MediaError`.
    """
    out = Path(path)
    if odd_size not in ("pad", "crop", "error"):
        raise ValueError(f"odd_size must be 'pad', 'crop' or 'error', got {odd_size!r}")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be in 0..51, got {crf}")
    rate = _as_rate(fps)
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
    shape = first.shape
    h, w = shape[:2]
    eh, ew = (h + 1) // 2 * 2, (w + 1) // 2 * 2
    if (eh, ew) != (h, w):
        if odd_size == "error":
            raise MediaError(out, f"frame size {w}x{h} is odd; H.264 yuv420p needs even width and height")
        if odd_size == "crop":
            eh, ew = h // 2 * 2, w // 2 * 2
        if eh == 0 or ew == 0:
            raise MediaError(out, f"frame size {w}x{h} is too small")

    def fit(f: np.ndarray) -> np.ndarray:
        if (eh, ew) == (h, w):
            return f
        if eh <= h and ew <= w:
            return f[:eh, :ew]
        return np.pad(f, ((0, eh - h), (0, ew - w), (0, 0)), mode="edge")

    tmp = None
    container = None
    feed = None
    try:
        for _ in range(100):
            tmp = str(parent / f".{out.name}.{secrets.token_hex(4)}.part")
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies
                break
            except FileExistsError:
                tmp = None
        if tmp is None:
            raise MediaError(out, "could not create a temporary file")
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
        except _AVError as e:
            raise MediaError(out, f"cannot set up the H.264/AAC encoder ({e})") from e

        n = 0
        f = first
        to_yuv = VideoReformatter()
        while f is not None:
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
            except _AVError as e:
                raise MediaError(out, f"encoding frame {n} failed ({e})") from e
            f = next(it, None)
        try:
            for p in vs.encode(None):
                container.mux(p)
            trimmed = False
            if feed is not None:
                trimmed = feed.finish(n * feed.out_sr * rate.denominator // rate.numerator)
            container.close()
            container = None
        except _AVError as e:
            raise MediaError(out, f"finishing the file failed ({e})") from e
        _fsync(tmp)
        os.replace(tmp, out)
        tmp = None
        try:
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        if container is not None:
            try:
                container.close()
            except Exception:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    finally:
        if feed is not None:
            feed.close()
    duration = n / rate
    return WrittenVideo(
        path=str(out), frames=n, fps=float(rate), duration=float(duration), width=ew, height=eh,
        audio=feed is not None,
        audio_duration=feed.encoded / feed.out_sr if feed is not None else None,
        audio_padded=feed.padded / feed.out_sr if feed is not None else 0.0,
        audio_trimmed=bool(feed is not None and trimmed),
        encode_seconds=time.perf_counter() - t0,
    )


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


def _sec(v, tb) -> float | None:
    return float(v * tb) if v is not None and tb is not None else None


def probe(path: str | os.PathLike, *, decode: bool = False) -> dict:
    """Describe a media file: container, every stream (codec, durations, frames, geometry/rate).

    With ``decode=True`` every video/audio stream is also decoded to the end, adding
    ``decoded_frames`` (video) / ``decoded_samples`` (audio), ``decoded_duration`` (seconds from
    the first frame's start to the last frame's end, by timestamps) and ``decode_errors`` per
    stream: the check that the file plays. Top-level shortcuts: ``frames`` and ``fps`` (first
    video stream; decoded count when decoding), ``video_duration``, ``audio_duration``.
    """
    p = _check_file(path)
    c = _open_input(p)
    try:
        info: dict[str, Any] = {
            "path": str(p), "format": c.format.name, "size_bytes": p.stat().st_size,
            "duration": c.duration / av.time_base if c.duration is not None else None,
            "bit_rate": c.bit_rate, "streams": [],
        }
        for s in c.streams:
            cc = s.codec_context
            d: dict[str, Any] = {
                "index": s.index, "type": s.type, "codec": cc.name if cc is not None else None,
                "time_base": str(s.time_base) if s.time_base is not None else None,
                "start_time": _sec(s.start_time, s.time_base),
                "duration": _sec(s.duration, s.time_base), "frames": int(s.frames or 0),
            }
            if s.type == "video":
                rate = next((r for r in (s.average_rate, s.guessed_rate) if r), None)
                d.update(width=cc.width, height=cc.height, pix_fmt=cc.pix_fmt,
                         fps=float(rate) if rate else None, attached_pic=_is_attached_picture(s),
                         profile=cc.profile)
            elif s.type == "audio":
                d.update(sample_rate=cc.sample_rate, channels=cc.channels,
                         layout=cc.layout.name if cc.layout else None, profile=cc.profile)
            info["streams"].append(d)
        if decode:
            want = [s for s in c.streams if s.type in ("video", "audio")]
            for s in want:
                s.thread_type = "AUTO"
            stats = {s.index: {"first": None, "end": None, "frames": 0, "samples": 0, "errors": 0}
                     for s in want}
            packets = c.demux(want)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except _AVError:
                    for st in stats.values():
                        st["errors"] += 1
                    break
                st = stats[packet.stream.index]
                try:
                    frames = packet.decode()
                except _AVError:
                    st["errors"] += 1
                    continue
                for f in frames:
                    st["frames"] += 1
                    if f.pts is not None and f.time_base is not None:
                        start = f.pts * f.time_base
                        if isinstance(f, av.AudioFrame):
                            dur = Fraction(f.samples, f.sample_rate)
                            st["samples"] += f.samples
                        else:
                            dur = (f.duration or 0) * f.time_base
                        st["first"] = start if st["first"] is None else min(st["first"], start)
                        st["end"] = start + dur if st["end"] is None else max(st["end"], start + dur)
                    elif isinstance(f, av.AudioFrame):
                        st["samples"] += f.samples
            for d in info["streams"]:
                st = stats.get(d["index"])
                if st is None:
                    continue
                d["decode_errors"] = st["errors"]
                d["decoded_duration"] = float(st["end"] - st["first"]) if st["first"] is not None else 0.0
                if d["type"] == "video":
                    d["decoded_frames"] = st["frames"]
                else:
                    d["decoded_samples"] = st["samples"]
    finally:
        c.close()
    video = next((d for d in info["streams"] if d["type"] == "video" and not d.get("attached_pic")), None)
    audio = next((d for d in info["streams"] if d["type"] == "audio"), None)
    info["frames"] = (video.get("decoded_frames", video["frames"]) if video else 0)
    info["fps"] = video["fps"] if video else None
    info["video_duration"] = (video.get("decoded_duration") or video["duration"]) if video else None
    info["audio_duration"] = (audio["duration"] if audio and audio["duration"] is not None
                              else audio.get("decoded_duration") if audio else None)
    info["video_codec"] = video["codec"] if video else None
    info["audio_codec"] = audio["codec"] if audio else None
    return info
