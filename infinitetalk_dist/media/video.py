"""The source video of a V2V job, opened for frame access by timestamp with bounded memory."""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from av.video.reformatter import VideoReformatter

from infinitetalk_dist.errors import MediaError
from infinitetalk_dist.timeline import FPS

from .container import AV_ERRORS, DecodeProblem, as_rate, check_file, decode, is_attached_picture, open_input

__all__ = ["FrameIndex", "VideoSource"]


@dataclass(frozen=True, eq=False)
class FrameIndex:
    """Where each decodable frame of a video is (built by decoding the whole stream once).

    Small and picklable: hand it to ``VideoSource(path, index=...)`` in another process so that
    one does not decode the whole video again.
    """

    pts: np.ndarray  # int64 per frame: presentation timestamps, or 0..n-1 when not reliable
    keys: np.ndarray  # bool per frame: a key frame (decoding can start there); frame 0 always
    reliable: bool  # the timestamps exist and increase (else frame k is at k / fps)
    duration: Fraction  # seconds from the first frame's start to the last frame's end
    times: tuple[Fraction, ...] | None  # seconds of each frame when not reliable
    decode_errors: tuple[str, ...] = ()


def _video_stream(p: Path, container):
    if container.format.name.endswith("_pipe") or container.format.name in ("image2", "gif_pipe"):
        raise MediaError(p, f"is a still image ({container.format.name}), not a video; "
                            "use read_image for pictures")
    streams = [s for s in container.streams.video if not is_attached_picture(s)]
    if not streams:
        n_audio = len(container.streams.audio)
        what = (f"audio only ({n_audio} audio stream{'s' if n_audio != 1 else ''})" if n_audio
                else "no streams it can use")
        raise MediaError(p, f"has no video stream: {what}")
    return streams[0]


class VideoSource:
    """A video file opened for frame access by timestamp, with bounded memory.

    ``VideoSource(path)`` checks the file right away (exists, is a container FFmpeg reads, has a
    video stream that is not cover art, at least one frame decodes). Frame indices are source
    frames in display order. ``fps`` is the stream's nominal (average) rate; ``frame_count``,
    ``duration`` and ``timestamps`` come from an index built on first use by decoding the whole
    stream once (frames are discarded, only timestamps and key-frame flags are kept), so a
    container whose header lies about its length is counted right. ``index`` is that index;
    ``VideoSource(path, index=other.index)`` uses it instead of building its own.

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

    def __init__(self, path: str | os.PathLike, *, cache_size: int = 8, index: FrameIndex | None = None):
        self.path = check_file(path)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._reader = None  # (container, stream, frame iterator)
        self._next = 0  # index of the next frame the reader yields (if known)
        self._index: FrameIndex | None = None
        self._reformatter = VideoReformatter()  # reused: keeps swscale's context (3-8x faster)
        self.decode_errors: list[str] = []
        c = open_input(self.path)
        try:
            s = _video_stream(self.path, c)
            self._stream_index = s.index
            self.codec = s.codec_context.name
            self.time_base = s.time_base
            self.frame_rate = next((r for r in (s.average_rate, s.guessed_rate, s.base_rate)
                                    if r is not None and r > 0), None)
            self.header_frames = int(s.frames or 0)
            errors: list[DecodeProblem] = []
            first = next(decode(c, s, errors), None)
            if first is None:
                detail = f" ({errors[0]})" if errors else ""
                raise MediaError(self.path, f"video stream ({self.codec}) has no decodable frames{detail}")
            self.rotation = int(round((first.rotation or 0) / 90.0)) * 90 % 360
            w, h = first.width, first.height
        finally:
            c.close()
        self.width, self.height = (h, w) if self.rotation in (90, 270) else (w, h)
        if index is not None:
            self._adopt(index)

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
        return len(self._ensure_index().pts)

    def __len__(self) -> int:
        return self.frame_count

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        return float(self._ensure_index().duration)

    @property
    def timestamps(self) -> np.ndarray:
        """Presentation time of every frame, seconds from the first frame (float64)."""
        ix = self._ensure_index()
        return np.array([float(t) for t in ix.times]) if ix.times is not None else \
            np.array([float((int(p) - ix.pts[0]) * self.time_base) for p in ix.pts])

    @property
    def index(self) -> FrameIndex:
        """The frame index (built now if it was not yet), to open this file elsewhere with."""
        return self._ensure_index()

    def _ensure_index(self) -> FrameIndex:
        if self._index is None:
            self._adopt(self._build_index())
        return self._index

    def _adopt(self, ix: FrameIndex) -> None:
        self._index = ix
        self.decode_errors = list(ix.decode_errors)
        if self.frame_rate is None and ix.duration > 0:
            self.frame_rate = Fraction(len(ix.pts)) / ix.duration

    def _build_index(self) -> FrameIndex:
        c = open_input(self.path)
        errors: list[DecodeProblem] = []
        pts, keys = [], []
        last_duration = 0
        try:
            s = c.streams[self._stream_index]
            s.thread_type = "AUTO"
            for f in decode(c, s, errors):
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
            rate = rate or Fraction(FPS)
            pts_arr = np.arange(len(pts), dtype=np.int64)
            times = tuple(Fraction(k) / rate for k in range(len(pts)))
            span = Fraction(len(pts)) / rate
        keys_arr = np.asarray(keys, dtype=bool)
        keys_arr[0] = True  # decoding always starts somewhere; treat the first frame as a key frame
        messages = tuple(str(e) for e in errors)
        if errors or (self.header_frames and self.header_frames != len(pts)):
            warnings.warn(f"{self.path}: damaged or inconsistent video: {len(pts)} frames decode "
                          f"(header says {self.header_frames or 'nothing'}); "
                          f"{len(errors)} decode error(s){': ' + messages[0] if errors else ''}",
                          stacklevel=4)
        return FrameIndex(pts_arr, keys_arr, reliable, span, times, messages)

    # -- timestamp mapping ------------------------------------------------------------------

    def _index_at(self, t: Fraction, clamp: bool) -> int:
        ix = self._ensure_index()
        if t < 0:
            raise IndexError(f"{self.path}: time {float(t):.6f} s is negative")
        if t >= ix.duration:
            if clamp:
                return len(ix.pts) - 1
            raise IndexError(f"{self.path}: time {float(t):.6f} s is past the end "
                             f"({float(ix.duration):.6f} s, {len(ix.pts)} frames)")
        if ix.reliable:
            target = ix.pts[0] + math.floor(t / self.time_base)
            k = int(np.searchsorted(ix.pts, target, side="right")) - 1
        else:
            k = math.floor(t * (self.frame_rate or FPS))
        return min(max(k, 0), len(ix.pts) - 1)

    def source_index_at_time(self, seconds: float, *, clamp: bool = False) -> int:
        """Index of the source frame on screen at ``seconds`` (1 us tolerance for float input)."""
        return self._index_at(Fraction(seconds) + Fraction(1, 1_000_000), clamp)

    def source_index_for_output(self, i: int, out_fps: float = FPS, *, clamp: bool = False) -> int:
        """Index of the source frame shown as output frame ``i`` of an ``out_fps`` video."""
        return self._index_at(Fraction(int(i)) / as_rate(out_fps), clamp)

    def frame_for_output_index(self, i: int, out_fps: float = FPS, *, clamp: bool = False) -> np.ndarray:
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
        if key_index > 0 and ix.reliable:
            if self._reader is None:
                self._open_reader()
            c, s, _ = self._reader
            try:
                c.seek(int(ix.pts[key_index]), stream=s, backward=True, any_frame=False)
                self._reader = (c, s, decode(c, s, []))
                self._next = -1  # unknown until a frame arrives
                return
            except AV_ERRORS:
                pass
        self._close_reader()  # from the beginning: a fresh demuxer and decoder
        self._open_reader()

    def _open_reader(self) -> None:
        c = open_input(self.path)
        s = c.streams[self._stream_index]
        s.thread_type = "AUTO"
        self._reader = (c, s, decode(c, s, []))
        self._next = 0

    def _read(self):
        """Next (index, frame) from the reader, or None at the end."""
        c, s, frames = self._reader
        ix = self._index
        for f in frames:
            if ix.reliable:
                if f.pts is None:
                    continue
                k = int(np.searchsorted(ix.pts, f.pts))
                if k >= len(ix.pts) or ix.pts[k] != f.pts:
                    continue
            else:
                k = self._next
            self._next = k + 1
            return k, f
        return None

    def frame(self, k: int) -> np.ndarray:
        """Source frame ``k`` (display order), ``uint8 [H, W, 3]``, read-only."""
        ix = self._ensure_index()
        n = len(ix.pts)
        if not -n <= k < n:
            raise IndexError(f"{self.path}: frame {k} out of range ({n} frames)")
        k %= n
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        key = int(np.flatnonzero(ix.keys[: k + 1])[-1])
        if (self._reader is None or self._next < 0 or k < self._next
                or (key > self._next and ix.reliable)):  # a seek is quicker than decoding forward
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
        c = open_input(self.path)
        try:
            s = c.streams[self._stream_index]
            s.thread_type = "AUTO"
            for f in decode(c, s, []):
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
