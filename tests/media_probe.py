"""Test helper: describe a media file (streams, durations, frame counts), optionally by decoding it."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any

import av

from infinitetalk_dist.media import container
from infinitetalk_dist.media.container import DecodeProblem, check_file, is_attached_picture, open_input

__all__ = ["probe"]


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
    p = check_file(path)
    c = open_input(p)
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
                         fps=float(rate) if rate else None, attached_pic=is_attached_picture(s),
                         profile=cc.profile)
            elif s.type == "audio":
                d.update(sample_rate=cc.sample_rate, channels=cc.channels,
                         layout=cc.layout.name if cc.layout else None, profile=cc.profile)
            info["streams"].append(d)
    finally:
        c.close()
    if decode:
        for d in info["streams"]:
            if d["type"] in ("video", "audio"):
                d.update(_decode_stream(p, d["index"], d["type"]))
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


def _decode_stream(p, index: int, kind: str) -> dict[str, Any]:
    """Decode one stream to the end with the package's decode loop: counts and span."""
    c = open_input(p)
    try:
        s = c.streams[index]
        s.thread_type = "AUTO"
        errors: list[DecodeProblem] = []
        first = end = None
        frames = samples = 0
        for f in container.decode(c, s, errors):
            frames += 1
            if isinstance(f, av.AudioFrame):
                samples += f.samples
            if f.pts is not None and f.time_base is not None:
                start = f.pts * f.time_base
                dur = Fraction(f.samples, f.sample_rate) if isinstance(f, av.AudioFrame) else \
                    (f.duration or 0) * f.time_base
                first = start if first is None else min(first, start)
                end = start + dur if end is None else max(end, start + dur)
    finally:
        c.close()
    out: dict[str, Any] = {"decode_errors": len(errors),
                           "decoded_duration": float(end - first) if first is not None else 0.0}
    if kind == "video":
        out["decoded_frames"] = frames
    else:
        out["decoded_samples"] = samples
    return out


def decoded_frames(path: str | os.PathLike) -> list:
    """Every video frame of ``path`` as an RGB uint8 array."""
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
