"""Stitch a job's windows into the finished film: cross-faded seams, H.264 + the original audio.

The windows are decoded one after another, frame by frame, and the output frames are streamed
into :func:`~infinitetalk_dist.media.write_mp4` (atomic, H.264 + AAC). Memory is one decoded
frame plus the ``k`` frames of an overlap being held back for the cross-fade: never a whole
window, never the film.

Seams, by the kind of cut at the start of window ``j`` (``window.cut``) and its ``overlap`` ``k``:

- ``k == 0`` (``"start"``, ``"shot"`` and ``"silence"`` cuts): a hard cut, window ``j``'s first
  frame follows window ``j-1``'s last frame.
- ``k > 0`` (``"forced"`` cuts): the last ``k`` frames of window ``j-1`` and the first ``k``
  frames of window ``j`` show the same output frames ``start .. start+k-1``; they are
  cross-faded linearly, output frame ``start + i`` being ``(1 - a) * previous + a * new`` with
  ``a = (i + 1) / (k + 1)``.

The plan must tile the film (:meth:`Plan.check <infinitetalk_dist.farm.plan.Plan.check>`), so
the output has exactly ``plan.frames`` frames. Every window file must hold exactly
``end - start`` frames and decode without errors, else :class:`StitchError` names the file (and
nothing is written: ``write_mp4`` is atomic).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from infinitetalk_dist.errors import InfiniteTalkError, MediaError
from infinitetalk_dist.media import WrittenVideo, iter_video_frames, write_mp4

from .plan import Plan

__all__ = ["StitchError", "stitch", "stitched_frames"]


class StitchError(InfiniteTalkError, ValueError):
    """The plan does not tile the film, or a window file does not match its window."""


def _blend(prev: np.ndarray, new: np.ndarray, a: float) -> np.ndarray:
    if prev.shape != new.shape:
        raise StitchError(f"cross-fade between frames of different sizes {prev.shape} and {new.shape}")
    out = prev.astype(np.float32) * (1.0 - a) + new.astype(np.float32) * a
    return np.rint(out).clip(0, 255).astype(np.uint8)


def _window_frames(path) -> Iterator[np.ndarray]:
    try:
        yield from iter_video_frames(path)
    except MediaError as e:  # unreadable, no video, or damaged: the file is named
        raise StitchError(str(e)) from e


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
        for f in _window_frames(path):
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


def stitched_frames(window_videos: Iterable[tuple[Any, str | os.PathLike]], plan: Plan) -> Iterator[np.ndarray]:
    """The film's frames at ``plan.fps``, one at a time: the windows (``(window, local_path)``
    pairs in plan order) cross-faded as the plan says. :class:`StitchError` if the plan does not
    tile the film (raised here, before any frame) or a window file does not match its window."""
    try:
        plan.check()
    except ValueError as e:
        raise StitchError(str(e)) from e
    return _frames(window_videos, plan.windows)


def stitch(
    window_videos: Iterable[tuple[Any, str | os.PathLike]],
    plan: Plan,
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
    written = write_mp4(out_path, stitched_frames(window_videos, plan), fps=plan.fps,
                        audio=audio, audio_sr=audio_sr, crf=crf, preset=preset)
    if written.frames != plan.frames:  # _frames guarantees it; a cheap guard against drift
        raise StitchError(f"{out_path}: wrote {written.frames} frames, the plan has {plan.frames}")
    return written
