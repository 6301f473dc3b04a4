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
    dit: InfiniteTalkDiT | None  # None from load_models: see parallel.load_dit
    vae: WanVAE | None
    clip: CLIPVisionEncoder | None
    t5: UMT5Encoder | None
    wav2vec2: AudioEncoder | None

    @property
    def dit_dtype(self) -> torch.dtype:
        """The DiT's compute dtype (its parameters may be sharded DTensors)."""
        return next(self.dit.parameters()).dtype


def random_models(name: str, seed: int, dtype: torch.dtype, device: str | torch.device,
                  *, skip: tuple[str, ...] = (), generator_device: str | torch.device = "cpu") -> Models:
    """Every model of preset ``name`` with deterministic random weights (no files needed).

    The CPU generator (default) gives the same weights on every machine; a CUDA
    ``generator_device`` fills the 14B preset in seconds (benchmarks). ``skip`` leaves
    models out (``None``), e.g. ``("t5",)``.
    """
    preset = PRESETS[name]()
    made = {key: None if key in skip else
            randomize_(m, seeded(seed * 1000 + offset, generator_device), model_dtype or dtype, device)
            for key, m, offset, model_dtype in _meta_models(preset)}
    return Models(preset, made["dit"], made["vae"], made["clip"], made["t5"], made["wav2vec2"])


def preset_bytes(name: str, dtype: torch.dtype) -> int:
    """Bytes of every model of preset ``name`` in ``dtype`` (VAE and CLIP in float32), counted on
    the meta device: what :func:`random_models` would allocate."""
    return sum(p.numel() * (model_dtype or dtype).itemsize
               for _, m, _, model_dtype in _meta_models(PRESETS[name]()) for p in m.parameters())


def _meta_models(preset):
    """(key, the model on the meta device, seed offset, its dtype or None for the requested one).
    VAE and CLIP stay float32, as when loading the official files."""
    with torch.device("meta"):
        return [("dit", InfiniteTalkDiT(preset.dit), 1, None), ("vae", WanVAE(preset.vae), 2, torch.float32),
                ("clip", CLIPVisionEncoder(preset.clip), 3, torch.float32), ("t5", UMT5Encoder(preset.t5), 4, None),
                ("wav2vec2", AudioEncoder.from_config(preset.wav2vec2), 5, None)]


def load_models(weights: str | Path, *, variant: str = "single", dtype: torch.dtype = torch.bfloat16,
                device: str | torch.device = "cpu", skip: tuple[str, ...] = (),
                host: tuple[str, ...] = (), preset: str = "14b") -> Models:
    """VAE, CLIP, T5 and wav2vec2 from an official weights folder (VAE and CLIP stay fp32, as the
    reference; ``dtype`` is the T5's); ``skip`` leaves models out (``None``); ``host`` loads
    those into host memory instead of onto ``device`` (e.g. ``("t5", "clip")``); ``preset``: the
    architectures of the files without a config of their own (VAE, CLIP, T5; ``tiny`` for a
    folder written at the tiny preset's shapes).

    The DiT is not loaded here (``dit`` is ``None``): it comes from
    :func:`infinitetalk_dist.parallel.load_dit`, in one process or sharded over a replica.
    """
    from . import weights as W

    lay = W.WeightsLayout(Path(weights), variant)
    lay.check(dit=False)  # the DiT comes from parallel.load_dit / load_quantized_dit
    arch = PRESETS[preset]()
    loaders = {
        "vae": lambda: W.load_vae(lay.vae, config=arch.vae, device=device),
        "clip": lambda: W.load_clip(lay.clip, config=arch.clip, device="cpu" if "clip" in host else device),
        "t5": lambda: W.load_t5(lay.t5, config=arch.t5, dtype=dtype, device="cpu" if "t5" in host else device),
        "wav2vec2": lambda: W.load_wav2vec2(lay.wav2vec2, device="cpu" if "wav2vec2" in host else device),
    }
    return Models(arch, dit=None, **{name: None if name in skip else load() for name, load in loaders.items()})
