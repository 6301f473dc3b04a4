"""Opening media files, and the one PyAV decode loop every reader here uses.

A damaged file is read as far as it goes, the same way everywhere: a packet the decoder
rejects is skipped, a demux error (truncated or corrupt container) ends the stream after the
decoder has given back what it holds. What went wrong is noted for the caller, which decides
whether that is a warning (a user's video or audio) or an error (a window the farm wrote).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from infinitetalk_dist.errors import MediaError

__all__ = ["AV_ERRORS", "DecodeProblem", "as_rate", "check_file", "decode", "is_attached_picture",
           "iter_video_frames", "open_input"]

# What PyAV raises for a file it can't read, decode or encode.
AV_ERRORS = (av.error.FFmpegError, OSError, EOFError)


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, after checking it is a non-empty file (else :class:`MediaError`)."""
    p = Path(path)
    if not p.exists():
        raise MediaError(p, "no such file")
    if p.is_dir():
        raise MediaError(p, "is a directory, not a file")
    if p.stat().st_size == 0:
        raise MediaError(p, "is empty (0 bytes)")
    return p


def open_input(p: Path):
    """The file opened for reading by PyAV (a container), or :class:`MediaError`."""
    try:
        return av.open(str(p))
    except AV_ERRORS as e:
        raise MediaError(p, f"not a readable media file ({e})") from e


def is_attached_picture(stream) -> bool:
    """Cover art stored as a one-frame video stream (music files, some podcasts)."""
    return bool(int(stream.disposition) & int(av.stream.Disposition.attached_pic))


def as_rate(fps) -> Fraction:
    """Frame rate as an exact fraction (floats like 29.97002997 become 30000/1001)."""
    r = Fraction(fps) if isinstance(fps, (int, Fraction)) else Fraction(float(fps)).limit_denominator(10000)
    if r <= 0:
        raise ValueError(f"frame rate must be positive, got {fps}")
    return r


@dataclass(frozen=True)
class DecodeProblem:
    """A packet the decoder rejected (skipped), or the read error that ended the stream."""

    error: BaseException
    pts: int | None = None  # the rejected packet's
    stopped: bool = False  # the demuxer failed: nothing after this point was read

    def __str__(self) -> str:
        if self.stopped:
            return f"read stopped: {self.error}"
        return f"undecodable packet at pts {self.pts}: {self.error}"


def decode(container, stream, errors: list[DecodeProblem]) -> Iterator:
    """Frames of ``stream``; packets the decoder rejects are skipped, a demux error ends the
    stream after draining the decoder; each is appended to ``errors``."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except AV_ERRORS as e:
            errors.append(DecodeProblem(e, stopped=True))
            try:
                frames = stream.decode(None)
            except AV_ERRORS:
                frames = []
            yield from frames
            return
        try:
            frames = stream.decode(packet)
        except AV_ERRORS as e:
            errors.append(DecodeProblem(e, packet.pts))
            continue
        yield from frames


def iter_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Every frame of the first video stream of ``path`` as ``uint8 [H, W, 3]`` RGB, one at a
    time, for files that must be intact (ones this package wrote): a file that can't be read, has
    no video or does not decode to the end raises :class:`MediaError` naming it."""
    p = check_file(path)
    container = open_input(p)
    try:
        if not container.streams.video:
            raise MediaError(p, "has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        errors: list[DecodeProblem] = []
        to_rgb = VideoReformatter()
        for frame in decode(container, stream, errors):
            yield to_rgb.reformat(frame, format="rgb24").to_ndarray()
        if errors:
            raise MediaError(p, f"decoding failed ({errors[0]})")
    finally:
        container.close()
