"""Seconds per 81-frame chunk by stage (audio, CLIP, VAE, DiT, muxing) through the real loop.

One chunk of ``pipeline.loop.generate_window`` runs with every component wrapped in a
timer (CUDA-synchronised on GPU). The DiT's cost per chunk is calls x seconds per call; a
preset whose chunk would take minutes (40 steps x 3 passes at 14B) is timed over
``--dit-calls`` real calls and projected, which the table marks. Random weights; imports
only torch, numpy, pillow, transformers and our models/pipeline (no PyAV/hydra on the GPU
image: the muxing row runs only where PyAV is installed).

    python benchmarks/chunk.py --preset tiny --device cpu               # laptop CPU demo shapes
    python benchmarks/chunk.py --preset 14b --device cuda --height 448 --width 896
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from infinitetalk_dist.models.build import random_models
from infinitetalk_dist.models.wav2vec2 import embed_waveform
from infinitetalk_dist.pipeline.loop import Components, WindowInputs, WindowSettings, generate_window

PRESETS = {  # name -> (steps, text scale, audio scale, shift): the reference's defaults / lightx2v
    "40-step": (40, 5.0, 4.0, 7.0),
    "4-step": (4, 1.0, 2.0, 2.0),
}


class Timers:
    def __init__(self, device: torch.device):
        self.device, self.total, self.calls = device, defaultdict(float), defaultdict(int)

    def wrap(self, name, fn, pick=None):
        def timed(*args, **kwargs):
            key = pick(*args) if pick else name
            self._sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.total[key] += time.perf_counter() - t
            self.calls[key] += 1
            return out

        return timed

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _StopAfter(Exception):
    pass


def run_chunk(models, steps, text_scale, audio_scale, shift, *, frames, height, width, device, dit_calls):
    """One chunk through the loop; returns ({stage: (seconds, calls)}, projected: bool)."""
    timers = Timers(device)
    dtype = next(models.dit.parameters()).dtype
    g = torch.Generator(device="cpu").manual_seed(0)
    wave = torch.randn(int(16000 * (frames + 8) / 25), generator=g) * 0.1
    audio = timers.wrap("audio (wav2vec2)", lambda w: embed_waveform(w, models.wav2vec2, device=device))(wave)
    cfg = models.preset.dit
    text = torch.randn(40, cfg.text_dim, generator=g).to(device, dtype)
    image = (torch.rand(3, height, width, generator=g) * 2 - 1).to(device)

    passes = 3 if text_scale != 1 else 2
    total_calls = steps * passes
    dit = timers.wrap("dit", lambda *a, **k: models.dit(*a, **k))

    def limited_dit(x, t, context, clip_fea, y, audio, ref_target_masks):
        if dit_calls and timers.calls["dit"] >= dit_calls:
            raise _StopAfter
        return dit(x, t, context, clip_fea, y, audio, ref_target_masks=ref_target_masks)

    vae_dtype = next(models.vae.parameters()).dtype
    components = Components(
        dit=limited_dit,
        vae_encode=timers.wrap("vae", lambda v: models.vae.encode(v.to(vae_dtype)),
                               pick=lambda v: "vae encode (ref + zeros)" if v.shape[2] > 1 else "vae encode (first frame)"),
        vae_decode=timers.wrap("vae decode", lambda z: models.vae.decode(z.to(vae_dtype))),
        clip=timers.wrap("clip", lambda im: models.clip(im.float())),
    )
    inputs = WindowInputs(reference_frame=lambda i: image, audio=[audio.to(device, dtype)], context=text,
                          context_null=text, ref_target_masks=torch.ones(3, height // 8, width // 8, device=device))
    settings = WindowSettings(frame_num=frames, steps=steps, shift=shift, text_scale=text_scale,
                              audio_scale=audio_scale, max_frames_num=frames)
    projected = False
    with torch.inference_mode():
        try:
            generate_window(components, inputs, settings, device=device)
        except _StopAfter:
            projected = True
            # The decode is the same work whatever the latent holds: time it on noise.
            z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device)
            components.vae_decode(z)
    rows = {k: (timers.total[k], timers.calls[k]) for k in timers.total}
    if projected:
        per_call = timers.total["dit"] / timers.calls["dit"]
        rows["dit"] = (per_call * total_calls, total_calls)
    return rows, projected


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "14b"], default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--dit-calls", type=int, default=0, help="time this many DiT calls, project the rest (0: all)")
    ap.add_argument("--attention", default=None)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    t = time.perf_counter()
    models = random_models(args.preset, 0, dtype, device, skip=("t5",), generator_device=device)
    models.dit.set_attn_backend(args.attention)
    build_s = time.perf_counter() - t
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    tokens = ((args.frames - 1) // 4 + 1) * (args.height // 16) * (args.width // 16)
    print(f"# chunk benchmark: {args.preset} on {card}, {args.dtype}, {args.frames} frames at "
          f"{args.height}x{args.width} ({tokens} tokens), attention {args.attention or 'sdpa'}; built in {build_s:.1f} s")
    results = {}
    for name, (steps, ts, as_, shift) in PRESETS.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rows, projected = run_chunk(models, steps, ts, as_, shift, frames=args.frames, height=args.height,
                                    width=args.width, device=device, dit_calls=args.dit_calls)
        mux = _mux_seconds(args.frames, args.height, args.width)
        if mux is not None:
            rows["mux (H.264 + AAC)"] = (mux, 1)
        total = sum(s for s, _ in rows.values())
        print(f"\n## {name} preset{' (DiT projected from measured calls)' if projected else ''}\n")
        print("| stage | calls | seconds | share |\n|---|---:|---:|---:|")
        for stage, (sec, calls) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            print(f"| {stage} | {calls} | {sec:.2f} | {100 * sec / total:.0f}% |")
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        print(f"| **chunk total** | | **{total:.2f}** | peak GPU mem {peak:.1f} GiB |")
        results[name] = {"rows": rows, "total_s": total, "projected": projected, "peak_gib": peak}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "args": vars(args), "results": results}, f, indent=1)


def _mux_seconds(frames, height, width):
    try:
        import numpy as np

        from infinitetalk_dist.media import write_mp4
    except ImportError:
        return None
    import tempfile

    video = np.random.default_rng(0).integers(0, 255, (frames, height, width, 3), dtype=np.uint8)
    audio = np.zeros(int(16000 * frames / 25), np.float32)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_mp4(f"{d}/x.mp4", video, fps=25, audio=audio, audio_sr=16000)
        return time.perf_counter() - t


if __name__ == "__main__":
    main()
