"""Render one planned window of a job as an independent clip.

A window is rendered like a whole ``generate`` job whose timeline is ``[window.start,
window.end)`` of the film: the audio features come from that slice of each speaker track only
(16 kHz samples ``[start * 640, end * 640)``), the reference is the input picture (I2V) or the
source video's frame at the window's absolute output index (V2V), and all noise comes from a
generator seeded with ``window.seed``. So a window renders the same frames wherever and however
often it is rendered; a retry changes nothing.

The window's frames (exactly ``end - start``) go to a local MP4 without audio, at high quality
(``crf`` 12 by default): the stitcher decodes and re-encodes them once, with the film's audio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from infinitetalk_dist.media import WrittenVideo, to_uint8_frames, write_mp4, write_video
from infinitetalk_dist.pipeline.generate import render_frames, window_settings
from infinitetalk_dist.pipeline.profile import StageTimer, maybe_stage
from infinitetalk_dist.pipeline.request import GenerateRequest
from infinitetalk_dist.pipeline.runtime import Runtime
from infinitetalk_dist.pipeline.sources import Reference
from infinitetalk_dist.timeline import FPS, SAMPLES_PER_FRAME

__all__ = ["WINDOW_CRF", "render_window", "window_tracks"]

WINDOW_CRF = 12


def window_tracks(tracks, start: int, end: int) -> list[np.ndarray]:
    """Each speaker's samples ``[start * 640, end * 640)`` plus one more (the next real sample, or
    the last one repeated): ``int(len / 16000 * 25)`` in float arithmetic can round ``end - start``
    frames' worth of samples down by one frame (e.g. 58 * 640 samples -> 57.99999 -> 57)."""
    a, b = start * SAMPLES_PER_FRAME, end * SAMPLES_PER_FRAME
    out = []
    for track in tracks:
        piece = np.asarray(track[a:b + 1], dtype=np.float32)
        if len(piece) < b + 1 - a:
            piece = np.pad(piece, (0, b + 1 - a - len(piece)), mode="edge")
        out.append(np.ascontiguousarray(piece))
    return out


def render_window(request: GenerateRequest, runtime: Runtime, reference: Reference, hw: tuple[int, int],
                  window: Any, tracks, out_mp4_path: str | os.PathLike | None, *, progress=None,
                  timer: StageTimer | None = None, crf: int = WINDOW_CRF) -> WrittenVideo | None:
    """Render frames ``[window.start, window.end)`` of the job to ``out_mp4_path`` (no audio,
    written atomically): lossless FFV1 for a ``.mkv`` path, else H.264 at ``crf``. ``window``: a :class:`~.plan.Window` (anything with
    ``index``, ``start``, ``end``, ``seed``); ``tracks``: its audio (:func:`window_tracks`);
    ``hw``: the output size; ``runtime``: the replica's models, branch prediction and prompt
    cache; ``progress``: called after every sampling step; ``timer``: times the model calls. Ranks other than the writer pass ``out_mp4_path=None`` and get None.

    Deterministic: the same window of the same job gives the same bytes.
    """
    start, end = int(window.start), int(window.end)
    frames = end - start
    if not 0 <= start < end:
        raise ValueError(f"window {window.index}: empty or negative frame range [{start}, {end})")
    # The window is its own job: all its frames, its own seed (sampler.max_frames is the
    # film's limit, applied by the plan, not by each window).
    settings = window_settings(request, frames, seed=int(window.seed))
    settings.max_frames_num = frames
    video = render_frames(runtime.models, request, reference, tracks, settings, hw, start=start, progress=progress,
                          predict=runtime.predict, show_progress=False, timer=timer, prompts=runtime.prompts)
    if out_mp4_path is None:
        return None
    if video.shape[1] < frames:
        raise ValueError(f"window {window.index}: the generator made {video.shape[1]} frames, need {frames}")
    Path(out_mp4_path).parent.mkdir(parents=True, exist_ok=True)
    with maybe_stage(timer, "encode"):
        if Path(out_mp4_path).suffix == ".mkv":
            return write_video(out_mp4_path, to_uint8_frames(video[:, :frames]), fps=FPS, codec="ffv1")
        return write_mp4(out_mp4_path, to_uint8_frames(video[:, :frames]), fps=FPS, crf=crf)
