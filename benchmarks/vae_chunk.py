"""Seconds of the Wan VAE per 81-frame chunk (448x896 by default): fp32 vs bf16 variants.

A chunk costs one encode of [reference frame, 80 zero frames] (the conditioning latent), one
encode of the motion frames (9 by default) and one decode of the 21 latent frames. Random
weights of the real Wan2.1 VAE; CUDA events, median of ``--repeats``; each variant's error is
the relative L2 of its latent / decoded video against fp32 on the same inputs.

    python benchmarks/vae_chunk.py [--height 448 --width 896 --variants fp32,bf16,bf16-cl]

``--tail-dependence`` instead checks whether the latents of the 80 zero frames could be
computed once and reused: it encodes [frame A, zeros] and [frame B, zeros] and prints, per
latent frame, the largest difference (0 would make the tail picture-independent).

    python benchmarks/vae_chunk.py --device cpu --height 32 --width 32 --tail-dependence
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_forward import rel_l2, timed  # noqa: E402

from infinitetalk_dist.models.build import random_models  # noqa: E402

VARIANTS = {  # name -> (dtype, channels_last_3d)
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, False),
    "bf16": (torch.bfloat16, False),
    "bf16-cl": (torch.bfloat16, True),
    "bf16-compile": (torch.bfloat16, False),  # + torch.compile of the encoder and decoder
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--height", type=int, default=448)
    ap.add_argument("--width", type=int, default=896)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--motion", type=int, default=9)
    ap.add_argument("--variants", default="fp32,tf32,bf16,bf16-cl")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default="14b")
    ap.add_argument("--tail-dependence", action="store_true", help="see the module doc")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    base = random_models(a.preset, 0, torch.float32, device, skip=("dit", "clip", "t5", "wav2vec2"),
                         generator_device=device).vae.eval()
    g = torch.Generator(device="cpu").manual_seed(0)
    ref = torch.zeros(1, 3, a.frames, a.height, a.width)
    ref[:, :, 0] = torch.rand(1, 3, a.height, a.width, generator=g) * 2 - 1
    motion = torch.rand(1, 3, a.motion, a.height, a.width, generator=g) * 2 - 1
    ref, motion = ref.to(device), motion.to(device)
    if a.tail_dependence:
        other = ref.clone()
        other[:, :, 0] = torch.rand(1, 3, a.height, a.width, generator=g).to(device) * 2 - 1
        with torch.inference_mode():
            diff = (base.encode(ref) - base.encode(other)).abs().amax(dim=(0, 1, 3, 4))
        print("max |latent(frame A, zeros) - latent(frame B, zeros)| per latent frame:")
        print(" ".join(f"{i}:{d:.1e}" for i, d in enumerate(diff.tolist())))
        return
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows, first = [], {}
    for name in a.variants.split(","):
        dtype, cl = VARIANTS[name]
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
        vae = base.to(dtype)
        fmt = torch.channels_last_3d if cl else torch.contiguous_format
        for p in vae.parameters():
            if p.ndim == 5:
                p.data = p.data.contiguous(memory_format=fmt)
        x_ref, x_mot = ref.to(dtype).contiguous(memory_format=fmt), motion.to(dtype).contiguous(memory_format=fmt)
        if name.endswith("-compile"):
            vae.encoder.compile()
            vae.decoder.compile()
        out = {}
        with torch.inference_mode():
            t_ref = timed(lambda: out.__setitem__("latent", vae.encode(x_ref)), device, 1, a.repeats)[0]
            t_mot = timed(lambda: out.__setitem__("motion", vae.encode(x_mot)), device, 1, a.repeats)[0]
            z = first["latent"].to(device, dtype) if first else out["latent"]  # the same latent in every variant
            t_dec = timed(lambda: out.__setitem__("video", vae.decode(z)), device, 1, a.repeats)[0]
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        res = {k: v.float().cpu() for k, v in out.items()}
        first = first or res
        err = {k: rel_l2(res[k], first[k]) for k in res}
        rows.append((name, t_ref, t_mot, t_dec, peak, err))
        print(f"{name:<8} encode ref+zeros {t_ref:.3f} s, motion {t_mot:.3f} s, decode {t_dec:.3f} s, total "
              f"{t_ref + t_mot + t_dec:.3f} s; rel L2 latent {err['latent']:.1e} decoded {err['video']:.1e}", flush=True)
        base = base.float()
    print(f"\n| card | size | variant | encode ref+80 zeros s | encode {a.motion} motion s | decode s | total s | "
          "peak GiB | rel L2 latent | rel L2 decoded |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, t_ref, t_mot, t_dec, peak, err in rows:
        print(f"| {card} | {a.height}x{a.width}x{a.frames} | {name} | {t_ref:.3f} | {t_mot:.3f} | {t_dec:.3f} | "
              f"{t_ref + t_mot + t_dec:.3f} | {peak:.1f} | {err['latent']:.1e} | {err['video']:.1e} |")


if __name__ == "__main__":
    main()
