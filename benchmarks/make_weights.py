"""Write a random-weight folder at the real shapes, in the official download layout (no download).

    python benchmarks/make_weights.py /tmp/itd-weights            # 14B, on the GPU, ~55 GB
    python benchmarks/make_weights.py /tmp/tiny --preset tiny --device cpu
    python benchmarks/make_weights.py /tmp/itd-q --quant int8,fp8 --no-bf16-dit   # quant_models/ instead

The folder is what a user passes as ``--weights``::

    Wan2.1-I2V-14B-480P/   config.json (Wan's keys), diffusion_pytorch_model-0000N-of-00007.safetensors
                           (bf16) + index, Wan2.1_VAE.pth (fp32), models_t5_umt5-xxl-enc-bf16.pth (bf16),
                           models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (fp16, visual + a
                           stub text tower), google/umt5-xxl/ (a small fast tokenizer)
    chinese-wav2vec2-base/ transformers folder (hub keys, pre-training heads)
    InfiniteTalk/single/infinitetalk.safetensors, InfiniteTalk/multi/infinitetalk.safetensors
    lightx2v_lora_rank64.safetensors (optional, ``--lora-rank``; lightx2v key style)

Values are :func:`models.random_init.random_tensor` drawn tensor by tensor from one seeded
generator on ``--device`` (the same values ``randomize_`` gives a whole model), so memory is one
DiT shard (~5 GB) at a time and a GPU fills the 14B folder in about a minute; disk speed
decides the rest. ``multi`` is a hard link of ``single`` unless ``--multi-copy`` (random
weights either way; saves 6 GB of disk on the 64 GB GPU machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infinitetalk_dist.models import weights as W  # noqa: E402
from infinitetalk_dist.models.presets import PRESETS  # noqa: E402
from infinitetalk_dist.models.random_init import random_tensor, seeded  # noqa: E402

N_SHARDS = 7
# Wan2.1-I2V-14B's config.json as downloaded (the loader reads these and ignores the rest).
WAN_CONFIG = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 5120, "eps": 1e-06,
              "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36, "model_type": "i2v", "num_heads": 40,
              "num_layers": 40, "out_dim": 16, "text_len": 512}


def _meta(module_cls, cfg):
    with torch.device("meta"):
        return module_cls(cfg)


def stream(model: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, CPU tensor) of a meta model's state dict: parameters random, buffers zero."""
    params = dict(model.named_parameters())
    for key, t in model.state_dict(keep_vars=True).items():
        if key in params:
            value = random_tensor(key, tuple(t.shape), generator)
        else:
            value = torch.zeros(t.shape, dtype=torch.float32 if t.is_floating_point() else t.dtype)
        yield key, (value.to(dtype) if value.is_floating_point() else value).cpu().contiguous()


def _nbytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    return sum(t.numel() for t in model.state_dict(keep_vars=True).values()) * torch.tensor([], dtype=dtype).element_size()


def write_config(root: Path, cfg, *, official_config: bool) -> Path:
    from dataclasses import asdict

    wan = root / W.WAN_DIR
    wan.mkdir(parents=True, exist_ok=True)
    config = WAN_CONFIG if official_config else {"_class_name": "WanModel", **asdict(cfg)}
    (wan / "config.json").write_text(json.dumps(config, indent=2))
    return wan


def quantize_rows(w: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """optimum-quanto's weight-only quantisation of one Linear weight (axis 0): per output row,
    ``scale = absmax / 127`` (int8, rounded to nearest) or ``absmax / 448`` (fp8 e4m3), the scale
    in the weight's dtype."""
    qmax = 127.0 if kind == "int8" else float(torch.finfo(torch.float8_e4m3fn).max)
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=torch.finfo(w.dtype).tiny)  # all-zero rows
    q = w / scale
    data = q.round().clamp(-128, 127).to(torch.int8) if kind == "int8" else q.clamp(-qmax, qmax).to(torch.float8_e4m3fn)
    return data, scale


def write_quant(root: Path, cfg, generator, kind: str, variant: str = "single") -> Path:
    """The official quantised DiT file (quanto's format, every Linear quantised) and its map."""
    from infinitetalk_dist.models.dit import InfiniteTalkDiT

    model = _meta(InfiniteTalkDiT, cfg)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sd, qmap = {}, {}
    for key, value in stream(model, generator, torch.bfloat16):
        mod, _, leaf = key.rpartition(".")
        if mod in linears and leaf == "weight":
            sd[f"{mod}.weight._data"], sd[f"{mod}.weight._scale"] = quantize_rows(value, kind)
            sd[f"{mod}.input_scale"], sd[f"{mod}.output_scale"] = torch.ones(()), torch.ones(())
            qmap[mod] = {"weights": "qint8" if kind == "int8" else "qfloat8_e4m3fn", "activations": "none"}
        else:
            sd[key] = value
    path = W.WeightsLayout(root, variant).quant_file(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt"})
    W.quant_map_path(path).write_text(json.dumps(qmap))
    print(f"  {path.relative_to(root)}: {len(qmap)} quantised Linear layers", flush=True)
    return path


def write_dit(root: Path, cfg, generator, dtype, *, official_config: bool) -> list[tuple[str, tuple]]:
    """7 contiguous shards (by bytes) of the Wan keys + index, the InfiniteTalk file (audio keys).
    Returns the 2-D ``blocks.*`` weights (LoRA targets) as (key, shape)."""
    from infinitetalk_dist.models.dit import InfiniteTalkDiT

    model = _meta(InfiniteTalkDiT, cfg)
    wan = write_config(root, cfg, official_config=official_config)
    is_audio = lambda k: "audio" in k or ".norm_x." in k  # noqa: E731  (the InfiniteTalk file's keys)
    sizes = {k: t.numel() * 2 for k, t in model.state_dict(keep_vars=True).items() if not is_audio(k)}
    per_shard = math.ceil(sum(sizes.values()) / N_SHARDS)
    shard, shard_bytes, index, audio, targets = {}, 0, {}, {}, []

    def flush():
        nonlocal shard, shard_bytes
        name = f"diffusion_pytorch_model-{len(set(index.values())) + 1:05d}-of-{N_SHARDS:05d}.safetensors"
        save_file(shard, str(wan / name), metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, name))
        print(f"  {name}: {len(shard)} tensors, {shard_bytes / 2**30:.2f} GiB", flush=True)
        shard, shard_bytes = {}, 0

    for key, value in stream(model, generator, dtype):
        if key.startswith("blocks.") and value.dim() == 2:
            targets.append((key, tuple(value.shape)))
        if is_audio(key):
            audio[key] = value
            continue
        shard[key] = value
        shard_bytes += sizes[key]
        if shard_bytes >= per_shard and len(set(index.values())) < N_SHARDS - 1:
            flush()
    flush()
    total = sum(sizes.values())
    (wan / W.SHARD_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1))
    single = root / W.INFINITETALK_FILES["single"]
    single.parent.mkdir(parents=True, exist_ok=True)
    save_file(audio, str(single), metadata={"format": "pt"})
    print(f"  {W.INFINITETALK_FILES['single']}: {len(audio)} tensors", flush=True)
    return targets


def write_pth(path: Path, model: torch.nn.Module, generator, dtype, prefix: str = "", extra=None) -> None:
    sd = {f"{prefix}{k}": v for k, v in stream(model, generator, dtype)}
    sd.update(extra(sd) if extra else {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    print(f"  {path.name}: {len(sd)} tensors", flush=True)


def _clip_extra(cfg, generator):
    """What the official open-clip file has beside the tower we run: the last visual block (never
    run), post_norm, head, a stub of the text tower, log_scale."""

    def extra(sd):
        last, out = cfg.vision_layers - 1, {}
        for k, v in list(sd.items()):
            if k.startswith("visual.transformer.0."):
                tail = k[len("visual.transformer.0."):]
                out[f"visual.transformer.{last}.{tail}"] = random_tensor(tail, tuple(v.shape), generator).to(v.dtype).cpu()
        d = cfg.vision_dim
        out.update({"visual.post_norm.weight": torch.ones(d, dtype=torch.float16),
                    "visual.post_norm.bias": torch.zeros(d, dtype=torch.float16),
                    "visual.head": torch.randn(d, cfg.embed_dim, dtype=torch.float16),
                    "textual.token_embedding.weight": torch.zeros(64, 16, dtype=torch.float16),
                    "log_scale": torch.tensor(4.6)})
        return out

    return extra


def write_wav2vec2(root: Path, config: dict, generator) -> dict[str, torch.Tensor]:
    """A transformers folder as on the hub: a *ForPreTraining checkpoint (weight_g/weight_v keys).
    Returns the values under the model's own keys."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(**config)
    with torch.device("meta"):
        model = Wav2Vec2Model(cfg)
    hub, sd = {}, {}
    for k, v in stream(model, generator, torch.float32):
        sd[k] = v
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                              "weight_v")
        hub[f"wav2vec2.{k}"] = v
    hub["project_q.weight"] = torch.zeros(4, cfg.hidden_size)  # pre-training heads, unused
    hub["quantizer.weight_proj.weight"] = torch.zeros(4, cfg.conv_dim[-1])
    folder = root / W.WAV2VEC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "architectures": ["Wav2Vec2ForPreTraining"]}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": False}))
    torch.save(hub, folder / "pytorch_model.bin")
    print(f"  {W.WAV2VEC_DIR}/pytorch_model.bin: {len(hub)} tensors", flush=True)
    return sd


def write_tokenizer(folder: Path) -> None:
    """A small umt5-style fast tokenizer (pad 0, </s> 1, appended to every text), saved as
    transformers does; the real one is a 256k-piece sentencepiece model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = ["A person is talking.", "A woman is talking in a calm voice.", "A man speaks to the camera.",
              "Two people talk to each other in a bright room.", "The speaker smiles and nods."] * 20
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))


def write_lora(path: Path, targets, rank: int, generator) -> None:
    """lightx2v-style LoRA (``diffusion_model.*.lora_down/lora_up/alpha``) over every 2-D block weight."""
    out = {}
    for key, (o, i) in targets:
        t = key[: -len(".weight")]
        out[f"diffusion_model.{t}.lora_down.weight"] = random_tensor(t, (rank, i), generator).to(torch.bfloat16).cpu()
        out[f"diffusion_model.{t}.lora_up.weight"] = (random_tensor(t, (o, rank), generator) * 0.01).to(torch.bfloat16).cpu()
        out[f"diffusion_model.{t}.alpha"] = torch.tensor(float(rank))
    save_file(out, str(path), metadata={"format": "pt"})
    print(f"  {path.name}: {len(targets)} targets, rank {rank}", flush=True)


def estimate_bytes(preset_name: str, lora_rank: int) -> int:
    from infinitetalk_dist.models.clip import CLIPVisionEncoder
    from infinitetalk_dist.models.dit import InfiniteTalkDiT
    from infinitetalk_dist.models.t5 import UMT5Encoder
    from infinitetalk_dist.models.vae import WanVAE

    p = PRESETS[preset_name]()
    dit = _meta(InfiniteTalkDiT, p.dit)
    lora = sum(lora_rank * sum(v.shape) * 2 for k, v in dit.state_dict(keep_vars=True).items()
               if k.startswith("blocks.") and v.dim() == 2)
    return (_nbytes(dit, torch.bfloat16) + _nbytes(_meta(UMT5Encoder, p.t5), torch.bfloat16)
            + _nbytes(_meta(CLIPVisionEncoder, p.clip), torch.float16) + _nbytes(_meta(WanVAE, p.vae), torch.float32)
            + lora + (400 << 20))


def make_weights(root: Path, *, preset: str = "14b", device: str = "cuda", seed: int = 0, lora_rank: int = 64,
                 multi_copy: bool = False, quant: tuple[str, ...] = (), bf16_dit: bool = True) -> dict[str, float]:
    """Write the folder; returns seconds per part. ``quant``: also the official quantised DiT
    files (``int8``, ``fp8``); ``bf16_dit=False``: those instead of the bf16 shards (and no
    LoRA file): the 64 GB GPU disk holds the bf16 folder or the quantised one."""
    from infinitetalk_dist.models.clip import CLIPVisionEncoder
    from infinitetalk_dist.models.t5 import UMT5Encoder
    from infinitetalk_dist.models.vae import WanVAE

    if not bf16_dit and not quant:
        raise SystemExit("make_weights: without the bf16 DiT, name the quantised ones (--quant int8,fp8)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    need, free = estimate_bytes(preset, lora_rank), shutil.disk_usage(root).free
    if need > free:
        raise SystemExit(f"make_weights: {root} has {free / 2**30:.1f} GiB free, the {preset} folder needs "
                         f"~{need / 2**30:.1f} GiB")
    p, g, times = PRESETS[preset](), seeded(seed, device), {}
    wan = root / W.WAN_DIR

    def part(name, fn):
        t0 = time.perf_counter()
        print(f"{name} ...", flush=True)
        out = fn()
        times[name] = time.perf_counter() - t0
        return out

    if bf16_dit:
        targets = part("dit", lambda: write_dit(root, p.dit, g, torch.bfloat16, official_config=preset == "14b"))
        multi = root / W.INFINITETALK_FILES["multi"]
        multi.parent.mkdir(parents=True, exist_ok=True)
        multi.unlink(missing_ok=True)
        (shutil.copyfile if multi_copy else os.link)(root / W.INFINITETALK_FILES["single"], multi)
    else:
        write_config(root, p.dit, official_config=preset == "14b")
        lora_rank = 0
    for kind in quant:
        part(f"dit {kind}", lambda kind=kind: write_quant(root, p.dit, g, kind))
    part("t5", lambda: write_pth(wan / W.T5_FILE, _meta(UMT5Encoder, p.t5), g, torch.bfloat16))
    part("clip", lambda: write_pth(wan / W.CLIP_FILE, _meta(CLIPVisionEncoder, p.clip), g, torch.float16,
                                   prefix="visual.", extra=_clip_extra(p.clip, g)))
    part("vae", lambda: write_pth(wan / W.VAE_FILE, _meta(WanVAE, p.vae), g, torch.float32))
    part("wav2vec2", lambda: write_wav2vec2(root, p.wav2vec2, g))
    part("tokenizer", lambda: write_tokenizer(wan / W.T5_TOKENIZER_DIR))
    if lora_rank:
        part("lora", lambda: write_lora(root / f"lightx2v_lora_rank{lora_rank}.safetensors", targets, lora_rank, g))
    lay = W.WeightsLayout(root)
    lay.check(None if bf16_dit else lay.quant_file(quant[0]))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the weights folder to write (created)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="14b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the random values are drawn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lora-rank", type=int, default=64, help="rank of the lightx2v-style LoRA file (0: none)")
    ap.add_argument("--multi-copy", action="store_true", help="write InfiniteTalk/multi as a copy, not a hard link")
    ap.add_argument("--quant", default="", help="also write the official quantised DiT: int8, fp8 or int8,fp8")
    ap.add_argument("--no-bf16-dit", action="store_true", help="only the quantised DiT files (saves ~31 GB of disk)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    times = make_weights(args.out, preset=args.preset, device=args.device, seed=args.seed, lora_rank=args.lora_rank,
                         multi_copy=args.multi_copy, quant=tuple(filter(None, args.quant.split(","))),
                         bf16_dit=not args.no_bf16_dit)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print("| part | seconds |\n|---|---:|")
    for name, sec in times.items():
        print(f"| {name} | {sec:.1f} |")
    print(f"| **total** ({size / 2**30:.1f} GiB in {args.out}) | **{time.perf_counter() - t0:.1f}** |")


if __name__ == "__main__":
    main()
