"""Where a long job may be split for free: hard shot cuts (PySceneDetect) and speech pauses (silero-vad).

Both return plain, deterministic lists; :mod:`.plan` turns them into windows. scenedetect and
silero-vad are imported inside the functions, so the planner itself needs neither.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import numpy as np

from infinitetalk_dist.timeline import FPS, SAMPLE_RATE

__all__ = ["cut_frames", "shot_cuts", "speech_pauses"]


def shot_cuts(
    video_path: str | os.PathLike,
    fps_out: float = FPS,
    threshold: float = 27.0,
    *,
    min_scene_s: float = 0.5,
    backend: str = "pyav",
) -> list[int]:
    """Output-frame indices (``fps_out`` timeline) where a hard cut starts a new shot: the cuts
    of :func:`~infinitetalk_dist.media.shots.shot_cut_times` mapped to the nearest output frame
    (cuts at frame 0 or duplicates after rounding are dropped; sorted)."""
    from infinitetalk_dist.media.shots import shot_cut_times

    if fps_out <= 0:
        raise ValueError(f"shot_cuts: fps_out must be > 0, got {fps_out}")
    return cut_frames(shot_cut_times(video_path, threshold, min_scene_s=min_scene_s, backend=backend), fps_out)


def cut_frames(times, fps_out: float = FPS) -> list[int]:
    """Cut times (seconds) as output-frame indices: nearest frame, frame 0 and duplicates dropped."""
    return sorted(c for c in {int(round(t * fps_out)) for t in times} if c > 0)


@contextmanager
def _one_torch_thread():
    """silero-vad runs with one CPU thread (fixed results on any machine, fast on its 512-sample
    chunks), but its module does ``torch.set_num_threads(1)`` when first imported, for the whole
    process: a farm=local job then loaded and rendered the 14B model on one thread. Its import
    and calls run in here, and the process's thread count is put back after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@functools.cache
def _vad_model():
    from silero_vad import load_silero_vad

    return load_silero_vad()  # bundled weights: no network


def speech_pauses(
    wave_16k: np.ndarray, min_pause_s: float = 0.3, *, threshold: float = 0.5
) -> list[tuple[float, float]]:
    """Silent intervals ``(start_s, end_s)`` at least ``min_pause_s`` long: the complement of
    silero-vad's speech segments over ``[0, len/16000]`` (leading/trailing silence included).

    Deterministic: silero-vad runs on CPU in fixed 512-sample chunks from a reset state, and
    times come from its sample indices (rounded to 1 ms).
    """
    import torch

    w = np.asarray(wave_16k)
    if w.ndim != 1:
        raise ValueError(f"speech_pauses: expected a mono 1-D waveform, got shape {w.shape}")
    if min_pause_s < 0:
        raise ValueError(f"speech_pauses: min_pause_s must be >= 0, got {min_pause_s}")
    n = len(w)
    if n == 0:
        return []
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise ValueError("speech_pauses: waveform contains NaN or inf")
    with _one_torch_thread(), torch.no_grad():
        from silero_vad import get_speech_timestamps

        speech = get_speech_timestamps(
            torch.from_numpy(w), _vad_model(), threshold=threshold, sampling_rate=SAMPLE_RATE
        )
    pauses, prev = [], 0
    for seg in speech + [{"start": n, "end": n}]:
        s, e = int(seg["start"]), int(seg["end"])
        if s - prev >= min_pause_s * SAMPLE_RATE and s > prev:
            pauses.append((round(prev / SAMPLE_RATE, 3), round(s / SAMPLE_RATE, 3)))
        prev = max(prev, e)
    return pauses
