"""Write a tiny weights folder in the official download layout.

Tests load it through the same entry points a user calls (``infinitetalk_dist.models.weights``,
``infinitetalk_dist.parallel.load_dit``), so the file formats, names and key styles are the
real ones: 7 DiT shards + index + ``infinitetalk.safetensors``, ``.pth`` files for VAE/T5/CLIP
(CLIP with its text tower), a transformers wav2vec2 folder with hub-style
``weight_g``/``weight_v`` keys and pre-training heads, and LoRA files in the lightx2v and
diffusers styles.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from infinitetalk_dist.models import weights as W
from infinitetalk_dist.models.random_init import randomize_, seeded

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import make_weights  # noqa: E402  (the writers of the official formats, full size or tiny)

N_SHARDS = 7


def _random(module_cls, cfg, seed: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        m = module_cls(cfg)
    return {k: v.contiguous() for k, v in randomize_(m, seeded(seed)).state_dict().items()}


def write_dit(root: Path, cfg, seed: int = 1) -> dict[str, torch.Tensor]:
    """Wan shards (base keys) + index + InfiniteTalk file (audio keys); returns the full dict."""
    from infinitetalk_dist.models.dit import InfiniteTalkDiT

    sd = _random(InfiniteTalkDiT, cfg, seed)
    wan = root / W.WAN_DIR
    wan.mkdir(parents=True, exist_ok=True)
    (wan / "config.json").write_text(json.dumps({"_class_name": "WanModel", **asdict(cfg)}))
    audio = {k: v for k, v in sd.items() if "audio" in k or ".norm_x." in k}
    base = [k for k in sd if k not in audio]
    weight_map = {}
    for i in range(N_SHARDS):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{N_SHARDS:05d}.safetensors"
        part = {k: sd[k] for k in base[i::N_SHARDS]}
        save_file(part, str(wan / name))
        weight_map.update(dict.fromkeys(part, name))
    (wan / W.SHARD_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    it = root / W.INFINITETALK_FILES["single"]
    it.parent.mkdir(parents=True, exist_ok=True)
    save_file(audio, str(it))
    return sd


def write_vae(root: Path, cfg, seed: int = 2) -> dict[str, torch.Tensor]:
    from infinitetalk_dist.models.vae import WanVAE

    sd = _random(WanVAE, cfg, seed)
    (root / W.WAN_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(sd, root / W.WAN_DIR / W.VAE_FILE)
    return sd


def write_t5(root: Path, cfg, seed: int = 3) -> dict[str, torch.Tensor]:
    from infinitetalk_dist.models.t5 import UMT5Encoder

    sd = _random(UMT5Encoder, cfg, seed)
    (root / W.WAN_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(sd, root / W.WAN_DIR / W.T5_FILE)
    return sd


def write_clip(root: Path, cfg, seed: int = 4) -> dict[str, torch.Tensor]:
    """Full open-clip XLM-RoBERTa checkpoint: visual.* (all blocks, head) + textual.* + log_scale."""
    from infinitetalk_dist.models.clip import CLIPVisionEncoder

    sd = _random(CLIPVisionEncoder, cfg, seed)
    g = seeded(seed + 100)
    d = cfg.vision_dim
    full = {f"visual.{k}": v for k, v in sd.items()}
    last = cfg.vision_layers - 1
    for k, v in sd.items():  # the last block, never run, is still in the file
        if k.startswith("transformer.0."):
            full[f"visual.transformer.{last}." + k[len("transformer.0."):]] = torch.randn(v.shape, generator=g)
    full["visual.post_norm.weight"] = torch.ones(d)
    full["visual.post_norm.bias"] = torch.zeros(d)
    full["visual.head"] = torch.randn(d, cfg.embed_dim, generator=g)
    full["textual.token_embedding.weight"] = torch.randn(64, 16, generator=g)
    full["log_scale"] = torch.tensor(4.6)
    (root / W.WAN_DIR).mkdir(parents=True, exist_ok=True)
    torch.save(full, root / W.WAN_DIR / W.CLIP_FILE)
    return sd


def write_wav2vec2(root: Path, config: dict, seed: int = 5) -> dict[str, torch.Tensor]:
    """transformers folder as on the hub: pytorch_model.bin of a *ForPreTraining checkpoint
    (benchmarks/make_weights.py's writer, which also writes the full-size folder)."""
    return make_weights.write_wav2vec2(root, config, seeded(seed))


def write_lora(path: Path, sd: dict[str, torch.Tensor], style: str, rank: int = 2, seed: int = 6) -> dict:
    """A LoRA over every 2-D ``blocks.*`` weight (+ a norm diff and a bias diff for lightx2v)."""
    g = seeded(seed)
    out = {}
    targets = [k[: -len(".weight")] for k, v in sd.items() if k.startswith("blocks.") and v.dim() == 2]
    for t in targets:
        o, i = sd[f"{t}.weight"].shape
        down, up = torch.randn(rank, i, generator=g) * 0.1, torch.randn(o, rank, generator=g) * 0.1
        if style == "lightx2v":
            out[f"diffusion_model.{t}.lora_down.weight"] = down
            out[f"diffusion_model.{t}.lora_up.weight"] = up
            out[f"diffusion_model.{t}.alpha"] = torch.tensor(float(rank) * 0.5)
        else:  # diffusers/peft, no prefix
            out[f"{t}.lora_A.weight"] = down
            out[f"{t}.lora_B.weight"] = up
    if style == "lightx2v":
        norm = next(k for k in sd if k.startswith("blocks.") and "norm" in k and k.endswith(".weight") and sd[k].dim() == 1)
        bias = next(k for k in sd if k.startswith("blocks.") and k.endswith(".bias"))
        out[f"diffusion_model.{norm[: -len('.weight')]}.diff"] = torch.randn(sd[norm].shape, generator=g) * 0.1
        out[f"diffusion_model.{bias[: -len('.bias')]}.diff_b"] = torch.randn(sd[bias].shape, generator=g) * 0.1
    save_file(out, str(path))
    return out
