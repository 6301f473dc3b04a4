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
import torch
from omegaconf import DictConfig
from PIL import Image

from infinitetalk_dist.models.build import Models
from infinitetalk_dist.parallel import ParallelState, predict_branches
from infinitetalk_dist.pipeline.audio import audio_features
from infinitetalk_dist.pipeline.conditioning import image_to_tensor, pick_bucket, speaker_masks
from infinitetalk_dist.pipeline.generate import (
    FPS,
    Sources,
    _bboxes,
    _clip_at,
    _tokenizer,
    window_settings,
)
from infinitetalk_dist.pipeline.loop import WindowInputs, components_from_models, generate_window
from infinitetalk_dist.pipeline.media import WrittenVideo, to_uint8_frames, write_mp4
from infinitetalk_dist.pipeline.text import DEFAULT_NEGATIVE_PROMPT, PromptEncoder

__all__ = ["SAMPLES_PER_FRAME", "WINDOW_CRF", "render_window"]

SAMPLES_PER_FRAME = 16000 // FPS  # 640 samples of 16 kHz audio per output frame
WINDOW_CRF = 12


def _output_size(cfg: DictConfig, models: Models, sources: Sources) -> tuple[str, int, int]:
    size = cfg.size if cfg.size != "auto" else ("tiny" if models.preset.name == "tiny" else "480")
    height, width = pick_bucket(sources.picture.height, sources.picture.width, size)
    return size, height, width


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
                  out_mp4_path: str | os.PathLike, *, progress=None, crf: int = WINDOW_CRF) -> WrittenVideo:
    """Render frames ``[window.start, window.end)`` of the job ``cfg`` to ``out_mp4_path``
    (H.264, no audio, ``crf``), written atomically. ``window``: a :class:`~.plan.Window` (or
    anything with ``index``, ``start``, ``end``, ``seed``). ``progress``: called after every
    sampling step with a :class:`~infinitetalk_dist.pipeline.loop.StepProgress`.

    Deterministic: the same window of the same job gives the same bytes.
    """
    start, end = int(window.start), int(window.end)
    frames = end - start
    if not 0 <= start < end <= sources.frames:
        raise ValueError(f"window {window.index}: frames [{start}, {end}) outside the job's [0, {sources.frames})")
    device = torch.device(cfg.device)
    size, height, width = _output_size(cfg, models, sources)

    def reference_frame(index: int) -> torch.Tensor:  # index: frame of the window
        if sources.video is None:
            return image_to_tensor(sources.picture, (height, width))
        frame = sources.video.frame_for_output_index(start + index, FPS, clamp=True)
        return image_to_tensor(Image.fromarray(np.ascontiguousarray(frame)), (height, width))

    with torch.inference_mode():
        audio = [audio_features(_audio_slice(track, start, end), models.wav2vec2, device=device)
                 for track in sources.audio.tracks]
        if any(x.shape[0] < frames for x in audio):
            raise ValueError(f"window {window.index}: audio gives {min(x.shape[0] for x in audio)} frames, "
                             f"need {frames}")
        prompts = PromptEncoder(models.t5, _tokenizer(cfg, models))
        dtype = models.dit_dtype
        inputs = WindowInputs(
            reference_frame=reference_frame,
            audio=[x[:frames].to(dtype) for x in audio],
            context=prompts(cfg.input.prompt).to(dtype),
            context_null=prompts(cfg.input.negative_prompt or DEFAULT_NEGATIVE_PROMPT).to(dtype),
            ref_target_masks=speaker_masks(
                (sources.picture.height, sources.picture.width), (height, width), (height // 8, width // 8),
                speakers=len(audio), bboxes=_bboxes(cfg.input.bbox)).to(device),
        )
        # The window is its own job: all its frames, its own seed (sampler.max_frames is the
        # film's limit, applied by the plan, not by each window).
        settings = dataclasses.replace(window_settings(cfg, size, frames), max_frames_num=frames,
                                       seed=int(window.seed))
        predict = None if cfg.sampler.teacache else (
            lambda branches: predict_branches(models.dit, branches, ParallelState.single(device)))
        components = components_from_models(models.dit, models.vae, _clip_at(models, device), predict)
        generator = torch.Generator(device=device).manual_seed(int(window.seed))
        if cfg.sampler.teacache:
            from infinitetalk_dist.pipeline.sampler import guidance_branches
            from infinitetalk_dist.pipeline.teacache import teacache_on

            with teacache_on(models.dit, settings.steps, len(guidance_branches(settings.text_scale)),
                             cfg.sampler.teacache_thresh, size):
                video = generate_window(components, inputs, settings, device=device, generator=generator,
                                        progress=progress)
        else:
            video = generate_window(components, inputs, settings, device=device, generator=generator,
                                    progress=progress)
    if video.shape[1] < frames:
        raise ValueError(f"window {window.index}: the generator made {video.shape[1]} frames, need {frames}")
    Path(out_mp4_path).parent.mkdir(parents=True, exist_ok=True)
    return write_mp4(out_mp4_path, to_uint8_frames(video[:, :frames]), fps=FPS, crf=crf)
