"""``generate --conform``: a source video dubbed by re-rendering only the speaker's face.

    source video -> shots (PySceneDetect) -> one crop box per shot (given or found, boxes.py)
                 -> InfiniteTalk V2V on the crops at the bucket size (25 fps, the usual loop)
                 -> for every source frame over the audio's length: the render at that time
                    (retime.py), pasted into the full-resolution frame (composite.py)
                 -> the source's size, frame rate and timestamps, the chosen codec, the mix

Everything is checked before any model is built: the output's container and codec, the boxes
(inside the frame; every shot has a face, or is skipped by option), the audio against the
source's length.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.media import WrittenVideo, to_uint8_frames
from infinitetalk_dist.parallel import ParallelState
from infinitetalk_dist.timeline import SAMPLE_RATE

from ..conditioning import pick_bucket
from ..generate import generate, read_sources, render_frames, window_settings
from ..request import GenerateRequest
from ..runtime import Runtime, replica_runtime
from ..sources import Sources, entry_at
from .boxes import Box, read_face_boxes, shot_boxes
from .composite import Compositor
from .retime import lip_sync_offset_s, retimed

__all__ = ["ConformPlan", "conform_generate", "generate_or_conform", "plan_conform"]

log = logging.getLogger(__name__)


class ConformPlan:
    """What a conform render needs besides the models: shots, their boxes, the source frames
    the output keeps (their times), the bucket, and the reference seen through the boxes."""

    def __init__(self, sources: Sources, cuts: list[float], shots: list[tuple[float, float]],
                 boxes: list[Box | None], times: np.ndarray, hw: tuple[int, int], fallback: Box):
        self.cuts, self.shots, self.boxes, self.times, self.hw = cuts, shots, boxes, times, hw
        crops = [(start, (b or fallback).to_json()) for (start, _), b in zip(shots, boxes)]
        self.reference = sources.reference.cropped(crops)
        self.video = sources.reference.video()

    def box_at(self, seconds: float) -> Box | None:
        """The shot's box (None: a skipped shot, left as the source's)."""
        return entry_at([(start, b) for (start, _), b in zip(self.shots, self.boxes)], seconds)


def plan_conform(request: GenerateRequest, sources: Sources, *, shot_threshold: float = 27.0) -> ConformPlan:
    """Shots (cut times by PySceneDetect at ``shot_threshold``), boxes and the kept source
    frames of a conform job (no model needed)."""
    from infinitetalk_dist.media.shots import shot_cut_times

    video = sources.reference.video()
    if video is None:
        raise InputError("--conform re-renders a source video: give --video (not --image)")
    audio_s = sources.audio.mix.shape[0] / SAMPLE_RATE
    if audio_s > video.duration + 1e-3:
        raise InputError(f"--conform: the audio ({audio_s:.2f} s) is longer than the source video "
                         f"({video.duration:.2f} s); the output keeps the source's frames, so trim the audio")
    cuts = shot_cut_times(sources.reference.video_path, shot_threshold)
    edges = [0.0, *cuts, video.duration]
    shots = [(a, b) for a, b in zip(edges, edges[1:]) if a < audio_s]
    inputs = request.input
    given = None
    if inputs.face_box is not None:
        given = Box(*(int(round(v)) for v in inputs.face_box))
    elif inputs.face_boxes:
        given = read_face_boxes(inputs.face_boxes)
    c = request.conform
    boxes = shot_boxes(video, shots, bucket_table=request.size_table, given=given, on_missing=c.on_missing)
    found = [b for b in boxes if b is not None]
    if not found:
        raise InputError("--conform: no shot has a face to re-render (every shot was skipped)")
    times = video.timestamps
    times = times[times < audio_s - 1e-9]
    hw = pick_bucket(found[0].height, found[0].width, request.size_table)
    for k, ((a, b), box) in enumerate(zip(shots, boxes)):
        log.info("shot %d (%.2f s - %.2f s): %s", k, a, b, "left as the source" if box is None else
                 f"box {box.to_json()} -> {hw[1]}x{hw[0]}")
    return ConformPlan(sources, cuts, shots, boxes, times, hw, found[0])


def conform_generate(request: GenerateRequest, runtime: Runtime | None = None) -> WrittenVideo | None:
    """Render ``request`` (``conform.enabled``) to ``request.output``; None on ranks that do not write."""
    from infinitetalk_dist.media import check_output

    c = request.conform
    output, src = read_sources(request)
    check_output(output, c.codec)
    plan = plan_conform(request, src)
    runtime = runtime or replica_runtime(request, ParallelState.single(request.device))
    settings = window_settings(request, src.frames)
    video = render_frames(runtime.models, request, plan.reference, src.audio.tracks, settings, plan.hw,
                          predict=runtime.predict, show_progress=runtime.writer, prompts=runtime.prompts)
    if not runtime.writer:
        return None
    log.info("conform: %d source frames at %s fps; lip-sync offset %.1f ms (%s)", len(plan.times),
             _rate(plan.video), 1000 * lip_sync_offset_s(plan.times, c.retime), c.retime)
    return write_conformed(output, plan, to_uint8_frames(video[:, : src.frames]), request,
                           audio=c.mix or src.mix_original, audio_sr=None if c.mix else src.mix_rate)


def generate_or_conform(request: GenerateRequest, runtime: Runtime | None = None) -> WrittenVideo | None:
    """``generate``, or ``generate --conform`` when ``conform.enabled``."""
    return conform_generate(request, runtime) if request.conform.enabled else generate(request, runtime)


def write_conformed(output: Path, plan: ConformPlan, generated, request: GenerateRequest, *, audio,
                    audio_sr: int | None = None) -> WrittenVideo:
    """Stream the conformed film: each kept source frame, its shot's crop pasted in from the
    ``generated`` 25 fps crops (an iterator, consumed once), at the source's timestamps."""
    from infinitetalk_dist.media import write_video

    c = request.conform
    paste = Compositor(c.mask, c.feather, c.color_match)
    video = plan.video

    def frames():
        faces = retimed(generated, plan.times, c.retime)
        for k, (t, face) in enumerate(zip(plan.times, faces)):
            source = video.frame(k)
            box = plan.box_at(float(t))
            yield source if box is None else paste(source, face, box.to_json())

    rate = _rate(video)
    regular = np.allclose(np.diff(plan.times), 1 / float(rate), atol=1e-4) if len(plan.times) > 1 else True
    return write_video(output, frames(), fps=rate, timestamps=None if regular else list(plan.times),
                       codec=c.codec, crf=c.crf, audio=audio, audio_sr=audio_sr,
                       extra_audio=plan.reference.video_path if c.keep_tracks else None)


def _rate(video) -> Fraction:
    rate = video.frame_rate
    return Fraction(rate) if rate is not None else Fraction(video.fps).limit_denominator(1001)

