"""Build the model set of a preset: seeded random weights (tiny) or an official weights folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .clip import CLIPVisionEncoder
from .dit import InfiniteTalkDiT
from .presets import PRESETS, ModelPreset
from .random_init import randomize_, seeded
from .t5 import UMT5Encoder
from .vae import WanVAE
from .wav2vec2 import AudioEncoder


@dataclass
class Models:
    preset: ModelPreset
    dit: InfiniteTalkDiT
    vae: WanVAE
    clip: CLIPVisionEncoder
    t5: UMT5Encoder
    wav2vec2: AudioEncoder


def random_models(name: str, seed: int, dtype: torch.dtype, device: str | torch.device) -> Models:
    """Every model of preset ``name`` with deterministic random weights (no files needed)."""
    preset = PRESETS[name]()
    if preset.wav2vec2 is None:
        raise ValueError(f"preset {name!r} reads its wav2vec2 config from a weights folder")

    def make(cls, cfg, offset):
        with torch.device("meta"):
            m = cls(cfg)
        return randomize_(m, seeded(seed * 1000 + offset), dtype, device)

    with torch.device("meta"):
        w2v = AudioEncoder.from_config(preset.wav2vec2)
    w2v = randomize_(w2v, seeded(seed * 1000 + 5), dtype, device)
    return Models(preset, make(InfiniteTalkDiT, preset.dit, 1), make(WanVAE, preset.vae, 2),
                  make(CLIPVisionEncoder, preset.clip, 3), make(UMT5Encoder, preset.t5, 4), w2v)


def load_models(weights: str | Path, *, variant: str = "single", dtype: torch.dtype = torch.bfloat16,
                device: str | torch.device = "cpu", loras=(), attn_backend: str | None = None) -> Models:
    """The real models from an official weights folder (VAE and CLIP stay fp32, as the reference)."""
    from . import weights as W

    lay = W.WeightsLayout(Path(weights), variant)
    lay.check()
    preset = PRESETS["14b"]()
    return Models(
        preset,
        W.load_dit(lay.wan, lay.infinitetalk, dtype=dtype, device=device, loras=loras, attn_backend=attn_backend),
        W.load_vae(lay.vae, device=device),
        W.load_clip(lay.clip, device=device),
        W.load_t5(lay.t5, dtype=dtype, device=device),
        W.load_wav2vec2(lay.wav2vec2, device=device),
    )
