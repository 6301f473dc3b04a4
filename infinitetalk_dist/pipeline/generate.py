"""One window end to end: media files in, a playable MP4 out.

Inputs are checked before any model is built, so bad input costs nothing and leaves no file
behind; the MP4 is written atomically by :func:`media.write_mp4`. :func:`render_frames` is the
part every renderer shares (``generate`` renders the whole job as one window; the farm's
worker renders one planned window of a longer job).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.media import WrittenVideo, to_uint8_frames, write_mp4
from infinitetalk_dist.models.build import Models
from infinitetalk_dist.models.wav2vec2_windows import audio_features
from infinitetalk_dist.parallel import ParallelState
from infinitetalk_dist.timeline import FPS

from .conditioning import pick_bucket, speaker_masks
from .encoders import placed
from .loop import (Components, StepProgress, WindowInputs, WindowSettings, chunk_starts, components_from_models,
                   generate_window)
from .profile import StageTimer, maybe_stage
from .request import GenerateRequest
from .runtime import Runtime, replica_runtime, tokenizer
from .sampler import guidance_branches
from .sources import Reference, Sources, check_destination, check_not_an_input, resolve_sources
from .teacache import teacache_on
from .text import DEFAULT_NEGATIVE_PROMPT, PromptEncoder

__all__ = ["generate", "output_hw", "read_sources", "render_frames", "window_settings"]

log = logging.getLogger(__name__)


def read_sources(request: GenerateRequest) -> tuple[Path, Sources]:
    """The checked output path and the request's inputs, read and checked (demo inputs for the
    tiny preset when none are given)."""
    output = Path(request.output)
    allowed = (".mp4", ".mov", ".mkv") if request.conform.enabled else (".mp4",)
    if output.suffix.lower() not in allowed:
        raise InputError(f"output must be a {' or '.join(allowed)} file, got {output}")
    check_destination(output)
    sources = resolve_sources(request.input, output, seed=request.seed,
                              allow_demo=request.model.preset == "tiny" and not request.model.weights)
    check_not_an_input(output, [*sources.files.values(), *request.input_files])  # demo inputs included
    return output, sources


def output_hw(request: GenerateRequest, reference: Reference) -> tuple[int, int]:
    """(height, width) of the output for this reference picture."""
    return pick_bucket(reference.picture.height, reference.picture.width, request.size_table)


def window_settings(request: GenerateRequest, frames: int, seed: int | None = None) -> WindowSettings:
    """The loop's settings for a window of ``frames`` frames (capped by ``sampler.max_frames``;
    audio within one chunk renders as one chunk, "clip mode", trimmed to the audio)."""
    s = request.sampler
    max_frames = min(int(s.max_frames), frames) if s.max_frames else frames
    return WindowSettings(
        frame_num=s.frame_num, motion_frame=s.motion_frame, steps=s.steps, shift=s.shift,
        text_scale=s.text_scale, audio_scale=s.audio_scale, use_apg=s.apg, apg_momentum=s.apg_momentum,
        apg_norm_threshold=s.apg_norm_threshold, max_frames_num=max_frames,
        color_correction_strength=s.color_correction, seed=request.seed if seed is None else seed,
    )


def generate(request: GenerateRequest, runtime: Runtime | None = None) -> WrittenVideo | None:
    """Render the request to ``request.output``. ``runtime``: this process's part of a replica
    (default: the whole replica in this process). Returns what was written, or None on a
    process that does not write (``runtime.writer``)."""
    timer = StageTimer(torch.device(request.device)) if request.timings else None
    with maybe_stage(timer, "inputs"):
        output, src = read_sources(request)
    with maybe_stage(timer, "load"):
        runtime = runtime or replica_runtime(request, ParallelState.single(request.device))
    hw, settings = output_hw(request, src.reference), window_settings(request, src.frames)
    video = render_frames(runtime.models, request, src.reference, src.audio.tracks, settings, hw,
                          predict=runtime.predict, show_progress=runtime.writer, timer=timer,
                          prompts=runtime.prompts)
    if not runtime.writer:
        return None
    with maybe_stage(timer, "mux"):
        written = write_mp4(output, to_uint8_frames(video[:, : src.frames]), fps=FPS, audio=src.mix_original,
                            audio_sr=src.mix_rate)
    if timer is not None:
        chunks = len(chunk_starts(src.frames, settings))
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        report = timer.report(frames=written.frames, fps=FPS, gpus=world, preset=runtime.models.preset.name,
                              size=list(hw), chunks=chunks, steps=settings.steps, speakers=len(src.audio.tracks),
                              attention=runtime.models.dit.attn_backend, compile=request.compile, fp8=request.fp8,
                              encoders=request.encoders)
        timer.write(f"{output}.timings.json", report)
    return written


def render_frames(models: Models, request: GenerateRequest, reference: Reference, tracks,
                  settings: WindowSettings, hw: tuple[int, int], *, start: int = 0, predict=None,
                  progress=None, show_progress: bool = True, timer: StageTimer | None = None,
                  prompts: PromptEncoder | None = None) -> torch.Tensor:
    """Video ``[3, frames, H, W]`` in [-1, 1] of one window whose first frame is job frame ``start``.

    ``tracks``: each speaker's 16 kHz audio of this window; ``hw``: the output size;
    ``predict``: the replica's all-branches DiT call (:class:`Runtime`). TeaCache keeps one
    residual per branch, so under it the DiT is called once per branch instead. ``timer``:
    times every model call by stage (``timings=true``); ``prompts``: the replica's prompt
    cache (:class:`Runtime`; default: one for this call).
    """
    device = torch.device(request.device)
    height, width = hw
    if request.sampler.teacache:
        predict = None
    with torch.inference_mode():
        with maybe_stage(timer, "wav2vec2"), placed(models.wav2vec2, device, request.encoders) as run:
            audio = [audio_features(track, models.wav2vec2, device=run).to(device) for track in tracks]
        prompts = prompts or PromptEncoder(models.t5, tokenizer(request, models), device=device,
                                           mode=request.encoders)
        dtype = models.dit_dtype
        with maybe_stage(timer, "t5"):
            context = prompts(request.input.prompt).to(dtype)
            context_null = prompts(request.input.negative_prompt or DEFAULT_NEGATIVE_PROMPT).to(dtype)
        inputs = WindowInputs(
            reference_frame=lambda index: reference.frame(start + index, hw),
            audio=[a.to(dtype) for a in audio],
            context=context,
            context_null=context_null,
            ref_target_masks=speaker_masks(
                (reference.picture.height, reference.picture.width), hw, (height // 8, width // 8),
                speakers=len(audio), bboxes=request.input.boxes).to(device),
        )
        components = components_from_models(models.dit, models.vae, _clip_at(models, device, request.encoders),
                                            predict, vae_tiling=request.vae_tiling)
        if timer is not None:
            components = Components(dit=timer.wrap("dit", components.dit), clip=timer.wrap("clip", components.clip),
                                    vae_encode=timer.wrap("vae_encode", components.vae_encode),
                                    vae_decode=timer.wrap("vae_decode", components.vae_decode),
                                    predict=timer.wrap("dit", components.predict))
        s = request.sampler
        cache = (teacache_on(models.dit, settings.steps, len(guidance_branches(settings.text_scale)),
                             s.teacache_thresh, request.size_table) if s.teacache else nullcontext())
        with _progress_bar(progress is None and request.progress and show_progress) as report, cache as tea:
            video = generate_window(components, inputs, settings, device=device, progress=progress or report)
        if tea is not None:
            log.info("TeaCache: skipped the blocks on %d of %d DiT calls", tea.skipped, tea.skipped + tea.computed)
    return video


def _clip_at(models: Models, device, mode: str):
    clip_dtype = next(models.clip.parameters()).dtype

    def encode(image):
        with placed(models.clip, device, mode) as run:
            return models.clip(image.to(run, clip_dtype)).to(device)

    return encode


class _progress_bar:
    """tqdm over all sampling steps of the window (chunks x steps), on stderr."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __enter__(self):
        if not self.enabled:
            return None

        def report(p: StepProgress):
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=p.chunks * p.steps, unit="step", desc="render", dynamic_ncols=True)
            self.bar.set_description(f"chunk {p.chunk + 1}/{p.chunks}")
            self.bar.update(1)

        return report

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
