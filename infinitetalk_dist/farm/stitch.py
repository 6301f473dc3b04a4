"""Stitch a job's windows into the finished film: cross-faded seams, H.264 + the original audio.

The windows are decoded one after another with PyAV, frame by frame, and the output frames are
streamed into :func:`~infinitetalk_dist.pipeline.media.write_mp4` (atomic, H.264 + AAC). Memory
is one decoded frame plus the ``k`` frames of an overlap being held back for the cross-fade: never
a whole window, never the film.

Seams, by the kind of cut at the start of window ``j`` (``window.cut``) and its ``overlap`` ``k``:

- ``k == 0`` (always so for ``"start"`` and ``"shot"``): a hard cut, window ``j``'s first frame
  follows window ``j-1``'s last frame.
- ``k > 0`` (``"forced"`` cuts, or ``"silence"`` cuts planned with an overlap): the last ``k``
  frames of window ``j-1`` and the first ``k`` frames of window ``j`` show the same output frames
  ``start .. start+k-1``; they are cross-faded linearly, output frame ``start + i`` being
  ``(1 - a) * previous + a * new`` with ``a = (i + 1) / (k + 1)``.

The plan must tile the film: the first window starts at 0, each next one starts at
``previous.end - overlap``, the last ends at ``plan.frames``; so the output has exactly
``plan.frames`` frames. Every window file must hold exactly ``end - start`` frames, else
:class:`StitchError` names the file (and nothing is written: ``write_mp4`` is atomic).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from infinitetalk_dist.pipeline.media import WrittenVideo, write_mp4

__all__ = ["StitchError", "check_plan", "stitch"]

_HARD = ("start", "shot")


class StitchError(ValueError):
    """The plan does not tile the film, or a window file does not match its window."""


def check_plan(plan: Any) -> list:
    """The plan's windows, after checking they tile ``0 .. plan.frames`` (see the module doc)."""
    ws = list(plan.windows)
    if not ws:
        raise StitchError("plan has no windows")
    for j, w in enumerate(ws):
        k = int(w.overlap)
        if w.end <= w.start:
            raise StitchError(f"window {w.index}: empty range {w.start}..{w.end}")
        if k < 0:
            raise StitchError(f"window {w.index}: negative overlap {k}")
        if j == 0:
            if w.start != 0 or k:
                raise StitchError(f"window {w.index}: the first window must start at 0 with no "
                                  f"overlap (start {w.start}, overlap {k})")
            continue
        prev = ws[j - 1]
        if w.cut in _HARD and k:
            raise StitchError(f"window {w.index}: a {w.cut!r} cut is a hard cut but has overlap {k}")
        if w.start != prev.end - k:
            raise StitchError(f"window {w.index}: starts at {w.start}, expected {prev.end - k} "
                              f"(window {prev.index} ends at {prev.end}, overlap {k})")
    for j, w in enumerate(ws):
        k_in = int(w.overlap) if j else 0
        k_out = int(ws[j + 1].overlap) if j + 1 < len(ws) else 0
        if k_in + k_out > w.end - w.start:
            raise StitchError(f"window {w.index}: {w.end - w.start} frames can't hold its overlaps "
                              f"({k_in} with the previous, {k_out} with the next)")
    if ws[-1].end != plan.frames:
        raise StitchError(f"the last window ends at frame {ws[-1].end}, the plan has {plan.frames} frames")
    return ws


def _decode(path: str) -> Iterator[np.ndarray]:
    """Frames of the first video stream of ``path`` as ``uint8 [H, W, 3]``, one at a time."""
    try:
        container = av.open(os.fspath(path))
    except (av.error.FFmpegError, OSError) as e:
        raise StitchError(f"{path}: not a readable video ({e})") from e
    try:
        if not container.streams.video:
            raise StitchError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        to_rgb = VideoReformatter()
        try:
            for frame in container.decode(stream):
                yield to_rgb.reformat(frame, format="rgb24").to_ndarray()
        except (av.error.FFmpegError, OSError) as e:
            raise StitchError(f"{path}: decoding failed ({e})") from e
    finally:
        container.close()


def _blend(prev: np.ndarray, new: np.ndarray, a: float) -> np.ndarray:
    if prev.shape != new.shape:
        raise StitchError(f"cross-fade between frames of different sizes {prev.shape} and {new.shape}")
    out = prev.astype(np.float32) * (1.0 - a) + new.astype(np.float32) * a
    return np.rint(out).clip(0, 255).astype(np.uint8)


def _frames(window_videos: Iterable[tuple[Any, Any]], ws: list) -> Iterator[np.ndarray]:
    it = iter(window_videos)
    tail: deque[np.ndarray] = deque()  # the previous window's last k frames (held back)
    for j, pw in enumerate(ws):
        item = next(it, None)
        if item is None:
            raise StitchError(f"window {pw.index}: no video given (got {j} of {len(ws)} windows)")
        w, path = item
        if w.index != pw.index or getattr(w, "start", pw.start) != pw.start \
                or getattr(w, "end", pw.end) != pw.end:
            raise StitchError(f"window videos out of order: expected window {pw.index} "
                              f"({pw.start}..{pw.end}), got window {w.index} for {path}")
        n = pw.end - pw.start
        k_in = int(pw.overlap) if j else 0
        k_out = int(ws[j + 1].overlap) if j + 1 < len(ws) else 0
        hold: deque[np.ndarray] = deque()
        count = 0
        for f in _decode(path):
            if count >= n:
                raise StitchError(f"{path}: window {pw.index} has more than {n} frames "
                                  f"(it covers {pw.start}..{pw.end})")
            if count >= n - k_out:
                hold.append(f)  # shared with the next window: emitted blended there
            elif count < k_in:
                yield _blend(tail.popleft(), f, (count + 1) / (k_in + 1))
            else:
                yield f
            count += 1
        if count != n:
            raise StitchError(f"{path}: window {pw.index} has {count} frames, expected {n} "
                              f"(it covers {pw.start}..{pw.end})")
        tail = hold
    extra = next(it, None)
    if extra is not None:
        raise StitchError(f"more window videos than plan windows ({len(ws)}): "
                          f"window {extra[0].index} ({extra[1]})")


def stitch(
    window_videos: Iterable[tuple[Any, str | os.PathLike]],
    plan: Any,
    out_path: str | os.PathLike,
    *,
    audio: np.ndarray | str | os.PathLike | None = None,
    audio_sr: int | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> WrittenVideo:
    """Write the film: ``window_videos`` (``(window, local_mp4_path)`` pairs in plan order; an
    iterator is consumed lazily, e.g. :meth:`JobStore.iter_windows`) cross-faded as the plan
    says, encoded H.264 (``crf``, ``preset``) at ``plan.fps`` with ``audio`` (the original audio:
    a file path, or a waveform with ``audio_sr``) as AAC, trimmed/padded to the video.

    Returns what :func:`write_mp4` wrote (``frames == plan.frames``). Raises
    :class:`StitchError` if the plan does not tile the film or a window file has the wrong
    frame count or can't be decoded; ``out_path`` is then left untouched.
    """
    ws = check_plan(plan)
    written = write_mp4(out_path, _frames(window_videos, ws), fps=getattr(plan, "fps", 25),
                        audio=audio, audio_sr=audio_sr, crf=crf, preset=preset)
    if written.frames != plan.frames:  # _frames guarantees it; a cheap guard against drift
        raise StitchError(f"{out_path}: wrote {written.frames} frames, the plan has {plan.frames}")
    return written
