"""Media files in and out: the reference picture, the source video, speech tracks, the finished MP4.

Everything that touches a media file is PyAV (FFmpeg's libraries, no ``ffmpeg`` binary) and PIL.
Arrays are numpy ``uint8 [H, W, 3]`` RGB; "size" tuples are numpy order ``(height, width)``.

- :func:`read_image` (``image``) -- one RGB picture, EXIF orientation applied, sanity-checked.
- :class:`VideoSource` (``video``) -- a video opened for frame access by *timestamp*: output
  frame ``i`` at 25 fps shows the source frame on screen at ``i / 25`` s, whatever the source
  rate. Its frame index (``.index``) can be shipped to other processes.
- :func:`load_audio` (``audio``) -- any audio (or a video's soundtrack) as 16 kHz mono, checked.
- :func:`write_mp4` (``writer``) -- H.264 + AAC MP4, streamed frame by frame, atomically.
- :func:`write_video` (``encode``) -- deliverables for the studio conform: the source's exact
  (or variable) frame rate, H.264/HEVC/ProRes/FFV1 in .mp4/.mov/.mkv, the mix's channels and
  rate kept, extra tracks; :func:`check_output` refuses a codec/container pair up front.
- :func:`atomic_write` (``atomic``) -- the temp-file-and-rename every writer uses.
- ``container`` -- opening files and the one decode loop (damaged files read as far as they go).

Every problem with a media file raises :class:`MediaError` (audio input: :class:`AudioError`),
both ``ValueError`` subclasses whose message starts with the file's path.

Names are loaded on first use, so ``atomic_write`` and the errors import without PyAV (the job
store uses them on machines that have no PyAV, like the GPU image).
"""

from __future__ import annotations

import importlib

from infinitetalk_dist.errors import AudioError, MediaError

from .atomic import atomic_write

__all__ = [
    "AudioError",
    "AudioWarning",
    "CODECS",
    "FrameIndex",
    "MediaError",
    "VideoSource",
    "WrittenVideo",
    "atomic_write",
    "check_output",
    "iter_video_frames",
    "load_audio",
    "load_audio_checked",
    "measure_loudness",
    "read_image",
    "to_uint8_frames",
    "write_mp4",
    "write_video",
    "x264_params",
]

_LAZY = {
    "AudioWarning": "audio",
    "load_audio": "audio",
    "load_audio_checked": "audio",
    "measure_loudness": "audio",
    "CODECS": "encode",
    "check_output": "encode",
    "write_video": "encode",
    "iter_video_frames": "container",
    "read_image": "image",
    "FrameIndex": "video",
    "VideoSource": "video",
    "WrittenVideo": "writer",
    "to_uint8_frames": "writer",
    "write_mp4": "writer",
    "x264_params": "writer",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
