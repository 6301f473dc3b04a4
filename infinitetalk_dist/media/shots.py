"""Hard shot cuts of a video, in seconds (PySceneDetect's ContentDetector on the PyAV backend).

The farm cuts windows there for free; conform mode fixes one crop box per shot. scenedetect is
imported inside the function, so importing this module needs neither it nor OpenCV.
"""

from __future__ import annotations

import os

__all__ = ["shot_cut_times"]


def shot_cut_times(video_path: str | os.PathLike, threshold: float = 27.0, *, min_scene_s: float = 0.5,
                   backend: str = "pyav") -> list[float]:
    """Start times (seconds, > 0, sorted) of every shot after the first.

    ContentDetector (HSV-difference ``threshold``, its default 27) at the source frame rate;
    shots shorter than ``min_scene_s`` are merged into the previous one.
    """
    from scenedetect import ContentDetector, SceneManager, open_video

    if not os.path.isfile(video_path):
        raise ValueError(f"shot_cuts: no such video file: {os.fspath(video_path)!r}")
    video = open_video(os.fspath(video_path), backend=backend)
    min_len = max(1, int(round(min_scene_s * float(video.frame_rate))))
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=min_len))
    manager.detect_scenes(video=video)
    return sorted(t for t in {_seconds(tc) for tc in manager.get_cut_list(show_warning=False)} if t > 0)


def _seconds(timecode) -> float:
    """A PySceneDetect FrameTimecode in seconds (``.seconds`` from 0.7, ``get_seconds()`` before)."""
    seconds = getattr(timecode, "seconds", None)
    return float(seconds) if seconds is not None else float(timecode.get_seconds())
