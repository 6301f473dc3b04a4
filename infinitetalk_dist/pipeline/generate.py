"""One window end to end: media files in, a playable MP4 out (what every replica runs).

Inputs are checked before any model is built, so bad input costs nothing and leaves no
file behind; the MP4 is written atomically by :func:`media.write_mp4`.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from infinitetalk_dist.models.build import Models, load_models, random_models
from infinitetalk_dist.models.wav2vec2 import num_video_frames
from infinitetalk_dist.parallel import (ParallelState, compile_blocks, fp8_linears, load_sharded_dit, parallelize_dit,
                                       predict_branches)

from .audio import SpeakerAudio, audio_features, load_audio, prepare_audio, prepare_speakers
from .conditioning import image_to_tensor, pick_bucket, speaker_masks
from .loop import StepProgress, WindowInputs, WindowSettings, components_from_models, generate_window
from .media import VideoSource, WrittenVideo, read_image, to_uint8_frames, write_mp4
from .sampler import guidance_branches
from .teacache import teacache_on
from .text import DEFAULT_NEGATIVE_PROMPT, ByteTokenizer, HFTokenizer, PromptEncoder

log = logging.getLogger(__name__)
FPS = 25


class InputError(ValueError):
    """A request that cannot be rendered as given (missing or conflicting inputs)."""


@dataclass
class Sources:
    """Checked inputs of one job."""

    picture: Image.Image  # the first reference frame (I2V image or V2V frame 0)
    video: VideoSource | None
    audio: SpeakerAudio  # loudness-normalised tracks (model input)
    mix_original: np.ndarray | str  # what the MP4 carries: the original file or un-normalised mix
    frames: int  # output frames = the audio's frame count at 25 fps
    files: dict[str, str]  # input name -> the file read (demo inputs included): image/video, audio, audio2


def resolve_sources(cfg: DictConfig, output: Path) -> Sources:
    """Read and check every input file (no model needed); demo inputs when none are given."""
    inp = cfg.input
    if inp.image and inp.video:
        raise InputError("give either input.image (--image) or input.video (--video), not both")
    if not (inp.image or inp.video or inp.audio):
        if cfg.model.preset != "tiny" or cfg.model.weights:
            raise InputError("no inputs: give --image/--video and --audio (demo inputs are for --preset tiny)")
        from infinitetalk_dist.samples import write_demo_inputs

        folder = Path(inp.demo_dir) if inp.demo_dir else output.parent / "demo_inputs"
        image, audio = write_demo_inputs(folder, seed=cfg.seed)
        log.info("no inputs given: generated demo inputs %s and %s", image, audio)
        inp = {**inp, "image": str(image), "audio": str(audio)}
    if not (inp["image"] or inp["video"]):
        raise InputError("missing the reference picture: give --image or --video")
    if not inp["audio"]:
        raise InputError("missing the speech track: give --audio")

    video = None
    if inp["video"]:
        video = VideoSource(inp["video"])
        picture = Image.fromarray(np.ascontiguousarray(video.frame(0)))
    else:
        picture = Image.fromarray(read_image(inp["image"]))

    mode = inp["audio_mode"]
    audio = prepare_audio(inp["audio"], inp["audio2"], mode)
    if inp["audio2"]:  # two speakers: the un-normalised mix, arranged like the model's tracks
        raw = prepare_speakers(load_audio(inp["audio"], 48000), load_audio(inp["audio2"], 48000), mode)
        original = raw.mix
    else:
        original = str(inp["audio"])
    files = {k: str(inp[k]) for k in ("image", "video", "audio", "audio2") if inp[k]}
    return Sources(picture, video, audio, original, num_video_frames(audio.mix.shape[0]), files)


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise InputError(f"dtype must be float32 or bfloat16, got {name!r}")
    return table[name]


def build_models(cfg: DictConfig, skip: tuple[str, ...] = ()) -> Models:
    """The preset's models (``skip``: names left as None, e.g. a DiT loaded sharded elsewhere).
    The VAE runs in ``vae_dtype`` (float32 by default; bfloat16 halves its time on a GPU)."""
    device, dtype = torch.device(cfg.device), _dtype(cfg.dtype)
    if cfg.model.weights:
        loras = [(lo.path, float(lo.strength)) for lo in cfg.model.get("loras", [])]
        models = load_models(cfg.model.weights, variant=cfg.model.variant, dtype=dtype, device=device,
                             loras=loras, attn_backend=cfg.attention, skip=skip)
    else:
        models = random_models(cfg.model.preset, cfg.seed, dtype, device, skip=skip)
        if models.dit is not None:
            models.dit.set_attn_backend(cfg.attention)
    vae_dtype = _dtype(cfg.get("vae_dtype") or "float32")
    if models.vae is not None and vae_dtype != torch.float32:
        models.vae.to(vae_dtype)
    return models


def speed_up(cfg: DictConfig, models: Models, world: int = 1) -> Models:
    """The fast paths of the config, applied in place (benchmarks/RESULTS.md has their times
    and errors): ``fp8`` row-scaled fp8 linears in the DiT blocks (one rank per replica only),
    then ``compile`` (``auto``: on CUDA with one rank per replica; ``true``: always) of every DiT
    block and of the VAE's encoder and decoder."""
    fp8, comp = bool(cfg.get("fp8", False)), cfg.get("compile", "auto")
    if comp not in (True, False, "auto", None):
        raise ValueError(f"compile must be auto, true or false, got {comp!r}")
    if fp8:
        if world > 1:
            raise ValueError("fp8=true needs one rank per replica (FSDP shards bf16 weights)")
        fp8_linears(models.dit)
    if comp is True or (comp == "auto" and torch.device(cfg.device).type == "cuda" and world == 1):
        compile_blocks(models.dit)
        if models.vae is not None:
            models.vae.encoder.compile()
            models.vae.decoder.compile()
    return models


def _tokenizer(cfg: DictConfig, models: Models):
    t5 = models.preset.t5
    if cfg.model.weights:
        from infinitetalk_dist.models.weights import WeightsLayout

        return HFTokenizer(WeightsLayout(Path(cfg.model.weights)).t5_tokenizer, t5.text_len)
    return ByteTokenizer(t5.vocab_size, t5.text_len)


def window_settings(cfg: DictConfig, size: str, frames: int) -> WindowSettings:
    s = cfg.sampler
    shift = s.shift if s.shift is not None else (11.0 if size == "720" else 7.0)
    max_frames = min(int(s.max_frames), frames) if s.max_frames else frames
    # Audio within one chunk renders as one chunk ("clip mode"), trimmed to the audio.
    return WindowSettings(
        frame_num=s.frame_num, motion_frame=s.motion_frame, steps=s.steps, shift=shift,
        text_scale=s.text_scale, audio_scale=s.audio_scale, use_apg=s.apg, apg_momentum=s.apg_momentum,
        apg_norm_threshold=s.apg_norm_threshold, max_frames_num=max_frames,
        color_correction_strength=s.color_correction, seed=cfg.seed,
    )


@dataclass
class Runtime:
    """How this process takes part in a job: models, the DiT's branch prediction, writing.

    Single process: the defaults. A multi-process replica (``launch/torchrun.py``) supplies
    sharded models, a CFG-parallel/batched ``predict`` and ``writer`` only on rank 0.
    """

    models: Models | None = None
    predict: object = None  # Components.predict; None: one batched forward per step
    writer: bool = True


def replica_runtime(cfg: DictConfig, state: ParallelState) -> Runtime:
    """This rank's part of a replica of ``state.world_size`` processes (an initialised process
    group): the DiT FSDP-sharded / sequence-parallel as ``state`` says (official weights are
    loaded straight into their shards), the other models replicated, the CFG-parallel branch
    prediction, and ``writer`` on rank 0. Used by the torchrun entry and the farm's replicas."""
    if cfg.sampler.teacache and state.cfg_size > 1:
        raise ValueError("TeaCache keeps one residual per guidance branch on every rank: use parallel.cfg=1")
    if state.world_size == 1:
        models = build_models(cfg)
        speed_up(cfg, models)
        return Runtime(models=models)
    if cfg.model.weights:
        from dataclasses import replace

        from infinitetalk_dist.models.weights import WeightsLayout

        lay = WeightsLayout(Path(cfg.model.weights), cfg.model.variant)
        loras = [(lo.path, float(lo.strength)) for lo in cfg.model.get("loras", [])]
        dit = load_sharded_dit(lay.wan, lay.infinitetalk, state, dtype=_dtype(cfg.dtype), loras=loras,
                               attn_backend=cfg.attention, fsdp=cfg.parallel.fsdp)
        models = replace(build_models(cfg, skip=("dit",)), dit=dit)
    else:  # the tiny preset: the same seeded weights on every rank, then parallelised
        models = build_models(cfg)
        parallelize_dit(models.dit, state, fsdp=cfg.parallel.fsdp)
    speed_up(cfg, models, state.world_size)
    return Runtime(models=models, predict=lambda branches: predict_branches(models.dit, branches, state),
                   writer=state.rank == 0)


def generate(cfg: DictConfig, runtime: Runtime | None = None) -> WrittenVideo | None:
    """Render the job described by ``cfg`` (see ``conf/config.yaml``) to ``cfg.output``.

    Returns what was written, or None on a process that does not write (``runtime.writer``).
    """
    runtime = runtime or Runtime()
    output = Path(cfg.output)
    if output.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {output}")
    src = resolve_sources(cfg, output)
    if runtime.models is None:
        runtime = replica_runtime(cfg, ParallelState.single(cfg.device))
    models = runtime.models
    size = output_size(cfg, models, src.picture)[0]
    video = render_frames(cfg, models, src, src.audio.tracks, window_settings(cfg, size, src.frames),
                          predict=runtime.predict, show_progress=runtime.writer)
    if not runtime.writer:
        return None
    video = video[:, : src.frames]
    return write_mp4(output, to_uint8_frames(video), fps=FPS, audio=src.mix_original,
                     audio_sr=48000 if isinstance(src.mix_original, np.ndarray) else None)


def output_size(cfg: DictConfig, models: Models, picture: Image.Image) -> tuple[str, int, int]:
    """(bucket table, height, width) of the output for this picture."""
    size = cfg.size if cfg.size != "auto" else ("tiny" if models.preset.name == "tiny" else "480")
    return (size, *pick_bucket(picture.height, picture.width, size))


def render_frames(cfg: DictConfig, models: Models, src: Sources, tracks, settings: WindowSettings, *,
                  start: int = 0, predict=None, progress=None, show_progress: bool = True) -> torch.Tensor:
    """Video ``[3, frames, H, W]`` in [-1, 1] of one window whose first frame is job frame ``start``.

    ``tracks``: each speaker's 16 kHz audio of this window. Shared by :func:`generate` (the
    whole job as one window) and the farm's per-window renderer. ``predict``: the DiT's
    all-branches call (default: one batched forward per step; per branch under TeaCache).
    """
    device = torch.device(cfg.device)
    size, height, width = output_size(cfg, models, src.picture)
    if cfg.sampler.teacache:
        predict = None  # TeaCache keeps one residual per branch: one DiT call per branch
    elif predict is None:
        predict = lambda branches: predict_branches(models.dit, branches, ParallelState.single(device))  # noqa: E731

    def reference_frame(index: int) -> torch.Tensor:  # index: frame of this window
        if src.video is None or start + index == 0:
            return image_to_tensor(src.picture, (height, width))
        frame = src.video.frame_for_output_index(start + index, FPS, clamp=True)
        return image_to_tensor(Image.fromarray(np.ascontiguousarray(frame)), (height, width))

    with torch.inference_mode():
        audio = [audio_features(track, models.wav2vec2, device=device) for track in tracks]
        prompts = PromptEncoder(models.t5, _tokenizer(cfg, models))
        dtype = models.dit_dtype
        inputs = WindowInputs(
            reference_frame=reference_frame,
            audio=[a.to(dtype) for a in audio],
            context=prompts(cfg.input.prompt).to(dtype),
            context_null=prompts(cfg.input.negative_prompt or DEFAULT_NEGATIVE_PROMPT).to(dtype),
            ref_target_masks=speaker_masks(
                (src.picture.height, src.picture.width), (height, width), (height // 8, width // 8),
                speakers=len(audio), bboxes=_bboxes(cfg.input.bbox)).to(device),
        )
        components = components_from_models(models.dit, models.vae, _clip_at(models, device), predict)
        cache = (teacache_on(models.dit, settings.steps, len(guidance_branches(settings.text_scale)),
                             cfg.sampler.teacache_thresh, size) if cfg.sampler.teacache else nullcontext())
        with _progress_bar(progress is None and cfg.progress and show_progress) as report, cache as tea:
            video = generate_window(components, inputs, settings, device=device, progress=progress or report)
        if tea is not None:
            log.info("TeaCache: skipped the blocks on %d of %d DiT calls", tea.skipped, tea.skipped + tea.computed)
    return video


def _clip_at(models: Models, device):
    clip_dtype = next(models.clip.parameters()).dtype
    return lambda image: models.clip(image.to(device, clip_dtype))


def _bboxes(bbox) -> list | None:
    if not bbox:
        return None
    try:
        return [list(bbox["person1"]), list(bbox["person2"])]
    except (KeyError, TypeError):
        raise InputError("input.bbox must be {person1: [x0, y0, x1, y1], person2: [...]}") from None


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

