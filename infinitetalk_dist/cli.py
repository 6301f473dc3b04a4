"""``infinitetalk-dist``: one command line for every job; options are Hydra config paths.

    infinitetalk-dist smoke [key=value ...]     one forward of every model (tiny preset by default)

Overrides use Hydra syntax on ``infinitetalk_dist/conf/config.yaml``, e.g.
``infinitetalk-dist smoke device=cuda dtype=bfloat16 model=14b model.weights=/data/weights``.
"""

from __future__ import annotations

import argparse
import sys
import time

from omegaconf import DictConfig, OmegaConf

COMMANDS = {"smoke": "one forward of every model of the preset on seeded random inputs"}


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="infinitetalk_dist.conf"):
        return hydra_compose(config_name="config", overrides=overrides)


def _dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16}[name]
    except KeyError:
        raise SystemExit(f"error: dtype must be float32 or bfloat16, got {name!r}") from None


def smoke(cfg: DictConfig) -> None:
    """Run each model once and print shapes and timings (the main job until the pipeline lands)."""
    import torch

    from .models.build import load_models, random_models

    device, dtype = torch.device(cfg.device), _dtype(cfg.dtype)
    t0 = time.perf_counter()
    if cfg.model.weights:
        loras = [(lo.path, float(lo.strength)) for lo in cfg.model.get("loras", [])]
        models = load_models(cfg.model.weights, variant=cfg.model.variant, dtype=dtype, device=device,
                             loras=loras, attn_backend=cfg.attention)
    else:
        models = random_models(cfg.model.preset, cfg.seed, dtype, device)
        models.dit.set_attn_backend(cfg.attention)
    print(f"built preset {models.preset.name} on {device} ({cfg.dtype}) in {time.perf_counter() - t0:.2f} s")

    s = cfg.smoke
    if (s.frames - 1) % 4:
        raise SystemExit(f"error: smoke.frames must be 4n+1, got {s.frames}")
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    rows = []

    def timed(name, fn, *args):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(max(1, s.repeats)):
            out = fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rows.append((name, tuple(out.shape), (time.perf_counter() - t) / max(1, s.repeats)))
        return out

    with torch.inference_mode():
        wave = torch.randn(int(16000 * s.frames / 25) + 640, generator=g)
        audio = timed("wav2vec2", models.wav2vec2, wave[None].to(device, dtype), s.frames)
        ids = torch.randint(2, models.preset.t5.vocab_size, (1, 12), generator=g).to(device)
        context = timed("umt5", models.t5, ids, torch.ones_like(ids))
        image = (torch.rand(1, 3, 1, s.height, s.width, generator=g) * 2 - 1).to(device)
        clip_fea = timed("clip", models.clip, image.to(next(models.clip.parameters()).dtype))
        video = torch.cat([image, torch.zeros(1, 3, s.frames - 1, s.height, s.width, device=device)], 2)
        latent = timed("vae encode", models.vae.encode, video.to(next(models.vae.parameters()).dtype))
        mask = torch.zeros(1, 4, *latent.shape[2:], device=device, dtype=latent.dtype)
        mask[:, :, 0] = 1
        y = torch.cat([mask, latent], 1)
        # Each video frame's audio window of +-2 frames (clamped), for speakers copies.
        idx = (torch.arange(s.frames)[:, None] + torch.arange(-2, 3)[None]).clamp(0, s.frames - 1)
        windows = audio[idx.to(device)][None, None].expand(1, s.speakers, *audio[idx].shape)
        masks = torch.zeros(3, *latent.shape[3:], device=device)
        masks[0, :, : latent.shape[-1] // 2] = 1
        masks[1, :, latent.shape[-1] // 2:] = 1
        noise = torch.randn(latent.shape, generator=g).to(device, dtype)
        t = torch.full((1,), 999.0, device=device)
        out = timed("dit forward", models.dit, noise, t, context.to(dtype), clip_fea.to(dtype), y.to(dtype),
                    windows.to(dtype), masks if s.speakers == 2 else None)
        frames = timed("vae decode", models.vae.decode, out.to(next(models.vae.parameters()).dtype))
    if not torch.isfinite(frames).all():
        raise SystemExit("error: non-finite output")
    print(f"{'model':<12} {'output shape':<28} {'seconds':>8}")
    for name, shape, sec in rows:
        print(f"{name:<12} {str(list(shape)):<28} {sec:8.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infinitetalk-dist",
        description="InfiniteTalk talking-video generation as a distributed render farm.",
        epilog="Options are Hydra overrides of infinitetalk_dist/conf/config.yaml "
               "(e.g. device=cuda dtype=bfloat16 model=14b model.weights=DIR); "
               "`infinitetalk-dist COMMAND --cfg` prints the composed config.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    args = parser.parse_args(argv)

    from .models.checkpoint import CheckpointError

    try:
        cfg = compose(args.overrides)
    except Exception as e:  # hydra's override/config errors: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        {"smoke": smoke}[args.command](cfg)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
