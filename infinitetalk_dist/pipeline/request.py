"""What one render is asked to do: typed, validated options (the schema behind ``conf/*.yaml``).

These dataclasses are plain Python: the pipeline and the farm take them as arguments, and the
launch layer registers them as Hydra structured configs (``launch/config.py``), so every
``key=value`` override is type-checked by OmegaConf while composing, and the value checks in
``__post_init__`` run once, when the CLI turns the composed config into these objects. Each
field's docstring is its documentation (``--cfg`` shows the values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from infinitetalk_dist.errors import InputError

from .encoders import ENCODER_MODES
from .vae_tiles import VAE_TILING

MAX_STEPS = 1000  # the flow schedule's timesteps: more steps than that repeat them

__all__ = ["DTYPES", "ConformOptions", "GenerateRequest", "InputOptions", "LoraSpec", "ModelOptions", "ParallelOptions",
           "SamplerOptions", "torch_dtype"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
SIZES = ("auto", "tiny", "480", "720")
SIZE_ALIASES = {"infinitetalk-480": "480", "infinitetalk-720": "720"}  # the official --size names


def torch_dtype(name: str) -> torch.dtype:
    """``float32``/``fp32``/``bfloat16``/``bf16`` -> the torch dtype."""
    if name not in DTYPES:
        raise InputError(f"dtype must be float32 or bfloat16, got {name!r}")
    return DTYPES[name]


@dataclass
class LoraSpec:
    path: str = ""
    """A LoRA file (kohya or diffusers keys), merged into the DiT weights at load."""
    strength: float = 1.0
    """Scale of the LoRA delta."""


@dataclass
class ModelOptions:
    preset: str = "tiny"
    """tiny (random weights made from ``seed``, runs on a laptop CPU) | 14b (the real model)."""
    weights: str | None = None
    """Folder holding Wan2.1-I2V-14B-480P/, chinese-wav2vec2-base/ and InfiniteTalk/ as downloaded."""
    variant: str = "auto"
    """InfiniteTalk adapter file: single | multi | auto (multi when there is a second speaker)."""
    loras: list[LoraSpec] = field(default_factory=list)
    """LoRAs merged into the DiT at load: [{path: ..., strength: 1.0}]."""
    quant: str | None = None
    """int8 | fp8: the official optimum-quanto DiT (InfiniteTalk/quant_models/infinitetalk_<variant>_<quant>.safetensors
    + its .json map; the *_lora files have the LoRA merged); null: the bf16 shards."""
    quant_file: str | None = None
    """The quantised DiT file (the official --quant_dir); null: the one in the weights folder."""

    def __post_init__(self):
        if self.preset not in ("tiny", "14b"):
            raise InputError(f"model.preset must be tiny or 14b, got {self.preset!r}")
        if self.variant not in ("auto", "single", "multi"):
            raise InputError(f"model.variant must be auto, single or multi, got {self.variant!r}")
        if self.quant not in (None, "int8", "fp8"):
            raise InputError(f"model.quant must be int8 or fp8, got {self.quant!r}")
        if (self.quant or self.quant_file) and self.loras:
            raise InputError("a LoRA cannot be merged into the quantised DiT: use the official quantised file with "
                             "it merged (quant_models/infinitetalk_<variant>_<quant>_lora.safetensors, model.quant_file)")


@dataclass
class SamplerOptions:
    steps: int = 40
    """Sampling steps per chunk (the reference's default 40)."""
    shift: float | None = None
    """Timestep shift; null: 7 for 480p-class sizes, 11 for 720p."""
    text_scale: float = 5.0
    """Text guidance scale (1 = two DiT passes per step instead of three)."""
    audio_scale: float = 4.0
    """Audio guidance scale."""
    apg: bool = False
    """Adaptive projected guidance."""
    apg_momentum: float = -0.75
    """APG momentum."""
    apg_norm_threshold: float = 55.0
    """APG norm threshold."""
    frame_num: int = 81
    """Frames per chunk (4n+1)."""
    motion_frame: int = 9
    """Decoded frames carried into the next chunk."""
    max_frames: int | None = None
    """Stop after this many frames; null: as long as the audio (the official tool stops at 1000
    frames by default: --max_frame_num 1000 does the same here)."""
    color_correction: float = 1.0
    """0..1: match each chunk's colours to the reference picture (1.0: the official default)."""
    teacache: bool = False
    """Skip the DiT blocks on steps where the timestep embedding barely moves."""
    teacache_thresh: float = 0.2
    """TeaCache threshold (higher skips more)."""

    def __post_init__(self):
        if not 1 <= self.steps <= MAX_STEPS:
            raise InputError(f"sampler.steps must be in [1, {MAX_STEPS}] (the schedule's timesteps), got {self.steps}")
        if self.shift is not None and not (math.isfinite(self.shift) and self.shift > 0):
            raise InputError(f"sampler.shift must be > 0, got {self.shift}")
        for name in ("text_scale", "audio_scale"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(f"sampler.{name} must be a finite number, got {getattr(self, name)}")
        if self.frame_num % 4 != 1:
            raise InputError(f"sampler.frame_num must be 4n+1, got {self.frame_num}")
        if not 0 < self.motion_frame < self.frame_num:
            raise InputError(f"sampler.motion_frame must be in (0, frame_num), got {self.motion_frame}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"sampler.max_frames must be >= 1 (or null), got {self.max_frames}")
        if not 0.0 <= self.color_correction <= 1.0:
            raise InputError(f"sampler.color_correction must be in [0, 1], got {self.color_correction}")


@dataclass
class InputOptions:
    image: str | None = None
    """Reference picture (I2V) ..."""
    video: str | None = None
    """... or source video (V2V: each chunk re-anchored on the source frame)."""
    audio: str | None = None
    """Speech track (any container/codec PyAV reads)."""
    audio2: str | None = None
    """Second speaker's track."""
    audio_mode: str = "para"
    """Two speakers: para (simultaneous) | add (one after the other)."""
    bbox: dict[str, Any] = field(default_factory=dict)
    """Two speakers: {person1: [x0, y0, x1, y1], person2: [...]} on the source picture (x = rows);
    empty: the reference's default halves. (An empty dict, not None: Hydra cannot set keys of a
    dict that is None, so ``+input.bbox.person1=[...]`` would fail.)"""
    i2v_motion: str = "none"
    """I2V: a slow virtual camera over the picture (zoom | pan | none): each chunk is anchored on
    the moved picture, as on a V2V source's frame (the official tip for long I2V, built in)."""
    prompt: str = "A person is talking."
    """Text prompt."""
    negative_prompt: str | None = None
    """Negative prompt; null: Wan's default."""
    demo_dir: str | None = None
    """No image/video/audio given: demo inputs are generated here (default: next to the output)."""
    face_box: list[float] | None = None
    """Conform: the speaker's box [left, top, right, bottom] in source pixels, the whole clip."""
    face_boxes: str | None = None
    """Conform: JSON list of {start_s, box: [left, top, right, bottom]}, each valid until the next."""

    def __post_init__(self):
        if self.face_box is not None and len(self.face_box) != 4:
            raise InputError(f"input.face_box must be [left, top, right, bottom], got {list(self.face_box)}")
        if self.face_box is not None and self.face_boxes:
            raise InputError("give input.face_box (--face-box) or input.face_boxes, not both")
        if self.audio_mode not in ("para", "add"):
            raise InputError(f"input.audio_mode must be para or add, got {self.audio_mode!r}")
        if self.i2v_motion not in ("none", "zoom", "pan"):
            raise InputError(f"input.i2v_motion must be zoom, pan or none, got {self.i2v_motion!r}")
        if self.i2v_motion != "none" and self.video:
            raise InputError("input.i2v_motion moves a picture (--image): a --video source already moves")
        if self.bbox:
            try:
                if any(len(b) != 4 or not all(isinstance(v, (int, float)) for v in b) for b in self.boxes):
                    raise TypeError
            except (KeyError, TypeError):
                raise InputError("input.bbox must be {person1: [x0, y0, x1, y1], person2: [...]}") from None
            for who, (x0, y0, x1, y1) in zip(("person1", "person2"), self.boxes):
                if not (0 <= x0 < x1 and 0 <= y0 < y1):
                    raise InputError(f"input.bbox {who} {[x0, y0, x1, y1]}: need 0 <= x0 < x1 and 0 <= y0 < y1")

    @property
    def boxes(self) -> list[list[float]] | None:
        """The two speakers' boxes, or None."""
        return [list(self.bbox["person1"]), list(self.bbox["person2"])] if self.bbox else None


@dataclass
class ConformOptions:
    enabled: bool = False
    """V2V: re-render only the speaker's face, into the source's frames, rate and size (--conform)."""
    mask: str = "face"
    """Where the render replaces the source: face (the head) | lower (mouth and jaw) | box (the crop)."""
    feather: float = 0.08
    """Width of the mask's soft edge, a fraction of the crop's smaller side."""
    color_match: float = 1.0
    """0..1: match the render's colours to the source under the mask."""
    retime: str = "blend"
    """25 fps renders onto source timestamps: blend (the two nearest, weighted) | nearest."""
    on_missing: str = "error"
    """A shot where no face is found: error | skip (the shot stays the source's)."""
    codec: str = "h264"
    """h264 | hevc (10-bit) | prores (422 HQ 10-bit, .mov) | ffv1 (lossless, .mkv)."""
    crf: int | None = None
    """Quality for h264/hevc (null: 18 / 20)."""
    mix: str | None = None
    """What the output carries (the final mix; its layout and rate kept); null: the --audio file."""
    keep_tracks: bool = False
    """Also carry the source video's own audio tracks after the mix."""

    def __post_init__(self):
        from .conform.composite import MASKS
        from .conform.retime import RETIME_MODES

        # The codecs are media/encode.py's CODECS, spelled out here: importing it needs PyAV.
        for name, allowed in (("mask", MASKS), ("retime", RETIME_MODES), ("on_missing", ("error", "skip")),
                              ("codec", ("h264", "hevc", "prores", "ffv1"))):
            if getattr(self, name) not in allowed:
                raise InputError(f"conform.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0 <= self.feather <= 0.5 or not 0 <= self.color_match <= 1:
            raise InputError("conform.feather must be in [0, 0.5] and conform.color_match in [0, 1]")


@dataclass
class ParallelOptions:
    cfg: int = 1
    """Ranks splitting the guidance branches (CFG-parallel); sp = ranks / cfg split the sequence."""
    fsdp: bool = True
    """FSDP2-shard the DiT over all ranks of the replica."""
    vae_spread: bool = True
    """Spread each VAE encode/decode over the replica's ranks, a band of rows each (the same
    numbers as one rank; parallel/vae_spread.py); false: every rank runs the whole frame."""

    def __post_init__(self):
        if self.cfg < 1:
            raise InputError(f"parallel.cfg must be >= 1, got {self.cfg}")


@dataclass
class OffloadOptions:
    dit_resident_blocks: int | None = None
    """Keep this many DiT blocks on the GPU and stream the others from pinned host memory, one
    block ahead on a side stream (the official num_persistent_param_in_dit, in blocks; 0: stream
    all 40); null: every block resident."""

    def __post_init__(self):
        if self.dit_resident_blocks is not None and self.dit_resident_blocks < 0:
            raise InputError(f"offload.dit_resident_blocks must be >= 0, got {self.dit_resident_blocks}")


@dataclass
class GenerateRequest:
    """One render: inputs, model, sampler and how this process runs it."""

    device: str = "cpu"
    """cpu | cuda | cuda:N."""
    dtype: str = "float32"
    """float32 | bfloat16 (DiT, T5, wav2vec2; the VAE follows vae_dtype, CLIP stays float32)."""
    seed: int = 42
    """Seed of all noise (and of the tiny preset's weights); -1: a random one, logged (as the official --base_seed -1)."""
    attention: str | None = None
    """Attention kernel: null/auto (fa3 on Hopper with fa3-fwd installed, else sdpa: cuDNN on Hopper with
    torch >= 2.11) | sdpa | cudnn | flash2 | flash3 | fa3 | fa3_fp8 | sage | triton_int8 | triton_fp8."""
    compile: Any = "auto"
    """torch.compile: auto (the DiT blocks, on CUDA with one rank per replica) | true (the DiT blocks
    and the VAE) | false."""
    vae_dtype: str = "float32"
    """float32 (TF32 convs on GPUs) | bfloat16 (VAE ~1.7x faster on an H100, rel L2 2e-2)."""
    vae_tiling: str = "auto"
    """VAE in spatial tiles: auto (whole; tiles only after a CUDA out-of-memory, not exact) | on | off."""
    encoders: str = "offload"
    """T5 and CLIP between their calls: offload (host memory, on the GPU per call) | gpu (resident) | cpu (run there)."""
    fp8: bool = False
    """fp8 row-scaled linears in the DiT blocks (Ada/Hopper): faster, less exact (benchmarks/RESULTS.md)."""
    cpu_threads: int | None = None
    """Torch threads of a device=cpu render; null: 1 for the tiny preset (its small tensors gain
    nothing from more, and OpenMP threads spinning on a core another process holds made the demo
    ~30x slower), else torch's default (every core)."""
    progress: bool = True
    """Progress bars on stderr."""
    timings: bool = False
    """Time every stage (CUDA-synchronised) and write <output>.timings.json (GPU-s per output s)."""
    size: str = "auto"
    """Bucket table: auto (tiny preset: tiny, else 480) | tiny | 480 | 720 (also infinitetalk-480 | infinitetalk-720)."""
    output: str = "outputs/infinitetalk.mp4"
    """The output MP4 (written atomically)."""
    input: InputOptions = field(default_factory=InputOptions)
    """What to render."""
    model: ModelOptions = field(default_factory=ModelOptions)
    """Which weights."""
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    """How to sample."""
    parallel: ParallelOptions = field(default_factory=ParallelOptions)
    """One replica over N processes (torchrun, or a farm replica of N GPUs)."""
    conform: ConformOptions = field(default_factory=ConformOptions)
    """Studio dubbing of a source video (only the face changes)."""
    offload: OffloadOptions = field(default_factory=OffloadOptions)
    """What stays off the GPU between uses (DiT blocks; T5/CLIP: ``encoders``)."""

    def __post_init__(self):
        from infinitetalk_dist.kernels import ATTENTION_BACKENDS

        torch_dtype(self.dtype)
        torch_dtype(self.vae_dtype)
        if self.seed == -1:
            import logging
            import secrets

            self.seed = secrets.randbelow(2**31)
            logging.getLogger(__name__).warning("seed=-1: rendering with seed=%d (pass it to render the same again)",
                                                self.seed)
        if not 0 <= self.seed < 2**63:
            raise InputError(f"seed must be >= 0 (or -1 for a random one), got {self.seed}")
        try:
            kind = torch.device(self.device).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ("cpu", "cuda"):
            raise InputError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.model.loras and not self.model.weights:
            raise InputError("a LoRA (--lora) needs --weights: the tiny preset's seeded random weights have no "
                             "trained DiT to merge it into")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise InputError(f"cpu_threads must be >= 1 (or null), got {self.cpu_threads}")
        if self.compile not in (True, False, "auto", None):
            raise InputError(f"compile must be auto, true or false, got {self.compile!r}")
        if self.vae_tiling not in VAE_TILING:
            raise InputError(f"vae_tiling must be one of {', '.join(VAE_TILING)}, got {self.vae_tiling!r}")
        if self.encoders not in ENCODER_MODES:
            raise InputError(f"encoders must be one of {', '.join(ENCODER_MODES)}, got {self.encoders!r}")
        self.size = SIZE_ALIASES.get(self.size, self.size)  # so 720p picks shift 11 by either name
        if self.size not in SIZES:
            raise InputError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.attention is not None and self.attention not in ATTENTION_BACKENDS:
            raise InputError(f"unknown attention backend {self.attention!r}; choose one of {ATTENTION_BACKENDS}")
        # Derived defaults made concrete, so that --cfg and the stored job settings show them.
        self.size = self.size_table
        if self.sampler.shift is None:
            self.sampler.shift = 11.0 if self.size == "720" else 7.0

    @property
    def input_files(self) -> list[str]:
        """Every file this request reads as input (media, the conform mix, the face boxes)."""
        i = self.input
        return [f for f in (i.image, i.video, i.audio, i.audio2, i.face_boxes, self.conform.mix) if f]

    @property
    def weights_variant(self) -> str:
        """The InfiniteTalk file this request loads: model.variant, or for ``auto`` multi when there
        is a second speaker (resolved here, not stored: a k8s title may add the speaker later)."""
        if self.model.variant != "auto":
            return self.model.variant
        return "multi" if self.input.audio2 else "single"

    @property
    def size_table(self) -> str:
        """The bucket table this request renders with."""
        if self.size != "auto":
            return self.size
        return "tiny" if self.model.preset == "tiny" and not self.model.weights else "480"
