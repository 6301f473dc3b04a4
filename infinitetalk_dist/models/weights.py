"""User entry points: load each model from the official download layout.

Layout::

    Wan2.1-I2V-14B-480P/   config.json, diffusion_pytorch_model-0000N-of-00007.safetensors
                           (+ .index.json), Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth,
                           models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
    chinese-wav2vec2-base/ transformers folder
    InfiniteTalk/single/infinitetalk.safetensors   (audio adapter, merged over the Wan shards)
    InfiniteTalk/quant_models/infinitetalk_single_int8.safetensors + .json   (optional: --quant)

The DiT is loaded by :func:`infinitetalk_dist.parallel.load_dit` (one process or each rank
its own rows), from the config and files :func:`dit_config` and :func:`dit_sources` name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import CheckpointError, TensorSource, _meta_init, materialise
from .state_dict_adapter import clip_visual_key

if TYPE_CHECKING:
    from .dit import DiTConfig

WAN_DIR = "Wan2.1-I2V-14B-480P"
WAV2VEC_DIR = "chinese-wav2vec2-base"
INFINITETALK_FILES = {"single": "InfiniteTalk/single/infinitetalk.safetensors",
                      "multi": "InfiniteTalk/multi/infinitetalk.safetensors"}
QUANT_DIR = "InfiniteTalk/quant_models"
SHARD_INDEX = "diffusion_pytorch_model.safetensors.index.json"
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"


def quant_map_path(quant_file: str | Path) -> Path:
    """The quantisation map beside a quantised file (the official loader's ``replace('safetensors', 'json')``)."""
    p = Path(quant_file)
    return p.with_name(p.name.replace("safetensors", "json"))


@dataclass(frozen=True)
class WeightsLayout:
    """Paths of one weights folder laid out as users download it."""

    root: Path
    variant: str = "single"

    @property
    def wan(self) -> Path:
        return self.root / WAN_DIR

    @property
    def infinitetalk(self) -> Path:
        return self.root / INFINITETALK_FILES[self.variant]

    @property
    def wav2vec2(self) -> Path:
        return self.root / WAV2VEC_DIR

    @property
    def vae(self) -> Path:
        return self.wan / VAE_FILE

    @property
    def t5(self) -> Path:
        return self.wan / T5_FILE

    @property
    def clip(self) -> Path:
        return self.wan / CLIP_FILE

    @property
    def t5_tokenizer(self) -> Path:
        return self.wan / T5_TOKENIZER_DIR

    def quant_file(self, quant: str) -> Path:
        """The official quantised DiT (``int8`` | ``fp8``) of this variant (its .json map beside it)."""
        return self.root / QUANT_DIR / f"infinitetalk_{self.variant}_{quant}.safetensors"

    def required(self, dit_file: Path | None = None, *, dit: bool = True) -> list[Path]:
        """The files every load reads (the Wan shards aside: :func:`dit_shards`); ``dit_file``
        and ``dit`` as in :meth:`check`."""
        need = [self.wan / "config.json", self.vae, self.t5, self.clip, self.wav2vec2 / "config.json"]
        if dit and dit_file:
            need += [dit_file, quant_map_path(dit_file)]
        elif dit:
            need.append(self.infinitetalk)
        return need

    def check(self, dit_file: Path | None = None, *, dit: bool = True) -> None:
        """Raise one error listing every expected file or folder that is absent. ``dit_file``:
        a quantised DiT that replaces the Wan shards and the InfiniteTalk file; ``dit=False``:
        the other models' files only."""
        missing = [str(p) for p in self.required(dit_file, dit=dit) if not p.exists()]
        if dit and dit_file is None and not (self.wan / SHARD_INDEX).exists() and not list(
                self.wan.glob("diffusion_pytorch_model*.safetensors")):
            missing.append(str(self.wan / "diffusion_pytorch_model-*.safetensors"))
        if missing:
            raise CheckpointError(f"weights folder {self.root} is incomplete; missing: {', '.join(missing)}")


def dit_shards(wan_dir: Path) -> list[Path]:
    """The DiT shard files, from the index when there is one."""
    index = wan_dir / SHARD_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        shards = [wan_dir / name for name in sorted(set(weight_map.values()))]
        # By name, not by link target: `weights download` lays shards out as links into the Hub cache.
        root = Path(os.path.normpath(wan_dir))
        outside = [str(p) for p in shards if root not in Path(os.path.normpath(p)).parents]
        if outside:  # never open a file the index names outside its folder
            raise CheckpointError(f"{index}: names shard(s) outside {wan_dir}: {', '.join(outside[:3])}")
        return shards
    shards = sorted(wan_dir.glob("diffusion_pytorch_model*.safetensors"))
    if not shards:
        raise CheckpointError(f"{wan_dir}: no diffusion_pytorch_model*.safetensors shards")
    return shards


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def dit_config(wan_dir: str | Path, *, attn_backend: str | None = None) -> DiTConfig:
    """The DiT's config from ``<wan_dir>/config.json`` (``attn_backend``: its attention kernel)."""
    from .dit import DiTConfig

    return DiTConfig.from_dict({**_read_json(Path(wan_dir) / "config.json"), "attn_backend": attn_backend})


def dit_sources(wan_dir: str | Path, infinitetalk_file: str | Path) -> list[TensorSource]:
    """The DiT's checkpoint files in merge order: the Wan shards, then the InfiniteTalk file."""
    return [TensorSource(p) for p in dit_shards(Path(wan_dir))] + [TensorSource(infinitetalk_file)]


def load_vae(path: str | Path, *, config=None, dtype=torch.float32, device="cpu"):
    from .vae import WanVAE, wan21_vae

    with _meta_init():
        model = WanVAE(config or wan21_vae())
    return materialise(model, [TensorSource(path)], "the Wan VAE", dtype, device)


def load_clip(path: str | Path, *, config=None, dtype=torch.float32, device="cpu"):
    from .clip import CLIPVisionEncoder, clip_vit_h14

    config = config or clip_vit_h14()
    with _meta_init():
        model = CLIPVisionEncoder(config)
    src = TensorSource(path, key_map=lambda k: clip_visual_key(k, config.vision_layers))
    return materialise(model, [src], "the CLIP vision tower", dtype, device)


def load_t5(path: str | Path, *, config=None, dtype=torch.bfloat16, device="cpu"):
    from .t5 import UMT5Encoder, umt5_xxl_encoder

    with _meta_init():
        model = UMT5Encoder(config or umt5_xxl_encoder())
    return materialise(model, [TensorSource(path)], "the umt5 encoder", dtype, device)


# Keys of the pre-training heads in the hub's wav2vec2 checkpoints; the encoder never uses them.
_WAV2VEC_HEADS = ("quantizer.", "project_q.", "project_hid.", "lm_head.", "dropout_features")


def load_wav2vec2(folder: str | Path, *, dtype=torch.float32, device="cpu"):
    """chinese-wav2vec2-base (transformers folder) as our :class:`AudioEncoder`."""
    from transformers import Wav2Vec2Model

    from .wav2vec2 import AudioEncoder

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a transformers wav2vec2 folder (no config.json)")
    try:
        model, info = Wav2Vec2Model.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True, dtype=dtype
        )
    except Exception as e:  # transformers raises many types for a bad folder; report one
        raise CheckpointError(f"{folder}: cannot load the wav2vec2 model: {type(e).__name__}: {e}") from None
    missing = [k for k in info.get("missing_keys", []) if "masked_spec_embed" not in k]
    mismatched = [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])]
    unexpected = [k for k in info.get("unexpected_keys", []) if not any(h in k for h in _WAV2VEC_HEADS)]
    for label, keys in (("missing", missing), ("with the wrong shape", mismatched), ("unexpected", unexpected)):
        if keys:
            raise CheckpointError(f"{folder}: {len(keys)} wav2vec2 key(s) {label}: {', '.join(sorted(keys)[:5])}")
    return AudioEncoder(model).to(device).eval().requires_grad_(False)
