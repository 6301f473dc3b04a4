"""Render one planned window of a job as an independent clip (DESIGN.md 7.3).

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

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from infinitetalk_dist.models.build import Models
from infinitetalk_dist.pipeline.generate import FPS, Sources, output_size, render_frames, window_settings
from infinitetalk_dist.pipeline.media import WrittenVideo, to_uint8_frames, write_mp4

__all__ = ["SAMPLES_PER_FRAME", "WINDOW_CRF", "render_window"]

SAMPLES_PER_FRAME = 16000 // FPS  # 640 samples of 16 kHz audio per output frame
WINDOW_CRF = 12


def _audio_slice(track: np.ndarray, start: int, end: int) -> np.ndarray:
    """Samples ``[start * 640, end * 640)`` plus one more (the next real sample, or the last one
    repeated): ``int(len / 16000 * 25)`` in float arithmetic can round ``end - start`` frames'
    worth of samples down by one frame (e.g. 58 * 640 samples -> 57.99999 -> 57)."""
    a, b = start * SAMPLES_PER_FRAME, end * SAMPLES_PER_FRAME
    piece = np.asarray(track[a:b + 1], dtype=np.float32)
    if len(piece) < b + 1 - a:
        piece = np.pad(piece, (0, b + 1 - a - len(piece)), mode="edge")
    return np.ascontiguousarray(piece)


def render_window(cfg: DictConfig, models: Models, sources: Sources, window: Any,
                  out_mp4_path: str | os.PathLike | None, *, progress=None, predict=None,
                  crf: int = WINDOW_CRF) -> WrittenVideo | None:
    """Render frames ``[window.start, window.end)`` of the job ``cfg`` to ``out_mp4_path``
    (H.264, no audio, ``crf``), written atomically. ``window``: a :class:`~.plan.Window` (or
    anything with ``index``, ``start``, ``end``, ``seed``). ``progress``: called after every
    sampling step with a :class:`~infinitetalk_dist.pipeline.loop.StepProgress`. ``predict``:
    the replica's branch prediction (:func:`~infinitetalk_dist.pipeline.generate.replica_runtime`);
    ranks other than the writer pass ``out_mp4_path=None`` and get None.

    Deterministic: the same window of the same job gives the same bytes.
    """
    start, end = int(window.start), int(window.end)
    frames = end - start
    if not 0 <= start < end <= sources.frames:
        raise ValueError(f"window {window.index}: frames [{start}, {end}) outside the job's [0, {sources.frames})")
    size = output_size(cfg, models, sources.picture)[0]
    # The window is its own job: all its frames, its own seed (sampler.max_frames is the
    # film's limit, applied by the plan, not by each window).
    settings = dataclasses.replace(window_settings(cfg, size, frames), max_frames_num=frames,
                                   seed=int(window.seed))
    tracks = [_audio_slice(track, start, end) for track in sources.audio.tracks]
    video = render_frames(cfg, models, sources, tracks, settings, start=start, progress=progress,
                          predict=predict, show_progress=False)
    if out_mp4_path is None:
        return None
    if video.shape[1] < frames:
        raise ValueError(f"window {window.index}: the generator made {video.shape[1]} frames, need {frames}")
    Path(out_mp4_path).parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(out_mp4_path, to_uint8_frames(video[:, :frames]), fps=FPS, crf=crf)
