"""Seconds per chunk of the Wan VAE, whole frame on every rank vs spread over the ranks in bands.

Spawns ``--ranks`` processes (gloo on the CPU, NCCL on one GPU each), builds the official
Wan2.1 VAE architecture with seeded random weights on each, and times ``encode`` of an
``--frames``-frame video and ``decode`` of its latents, first whole (what every rank of a
replica did before) and then with :class:`~infinitetalk_dist.parallel.vae_spread.SpreadVAE`;
median of ``--repeats`` after one warm-up, max |spread - whole| / max |whole| as the error.

    python benchmarks/vae_spread.py --device cpu --ranks 2 --size 128x128 --frames 9
    python benchmarks/vae_spread.py --device cuda --ranks 4 --size 448x896 --frames 81
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def timed(fn, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def rank_main(rank: int, world: int, store: str, args, results) -> None:
    from infinitetalk_dist.models.random_init import randomize_, seeded
    from infinitetalk_dist.models.vae import WanVAE, wan21_vae
    from infinitetalk_dist.parallel.vae_spread import SpreadVAE

    torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{store}",
                            rank=rank, world_size=world)
    dtype = getattr(torch, args.dtype)
    with torch.device("meta"):
        vae = WanVAE(wan21_vae())
    vae = randomize_(vae, seeded(0), dtype).to(device).eval()
    h, w = (int(v) for v in args.size.split("x"))
    g = torch.Generator().manual_seed(1)
    video = (torch.rand(1, 3, args.frames, h, w, generator=g) * 2 - 1).to(device, dtype)
    spread = SpreadVAE(vae, dist.group.WORLD)
    with torch.inference_mode():
        enc_whole, z = timed(lambda: vae.encode(video), device, args.repeats)
        dec_whole, x = timed(lambda: vae.decode(z), device, args.repeats)
        enc_spread, zs = timed(lambda: spread.encode(video), device, args.repeats)
        dec_spread, xs = timed(lambda: spread.decode(z), device, args.repeats)
    err = max(float((zs - z).abs().max() / z.abs().max()), float((xs - x).abs().max() / x.abs().max()))
    results.put(dict(rank=rank, enc_whole=enc_whole, dec_whole=dec_whole, enc_spread=enc_spread,
                     dec_spread=dec_spread, err=err))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--size", default="448x896", help="HxW of the video")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=rank_main, args=(r, args.ranks, store, args, results)) for r in range(args.ranks)]
        for p in procs:
            p.start()
        rows = sorted((results.get() for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join()
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {args.threads} thread(s) per rank"
    slow = max(rows, key=lambda r: r["enc_spread"] + r["dec_spread"])  # the chunk waits for the last rank
    whole = rows[0]["enc_whole"] + rows[0]["dec_whole"]
    print(f"\n| device | ranks | video | dtype | whole: encode + decode s | spread: encode + decode s | speed-up | max rel err |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    print(f"| {card} | {args.ranks} | {args.frames}x{args.size} | {args.dtype} | {rows[0]['enc_whole']:.2f} + "
          f"{rows[0]['dec_whole']:.2f} | {slow['enc_spread']:.2f} + {slow['dec_spread']:.2f} | "
          f"{whole / (slow['enc_spread'] + slow['dec_spread']):.2f}x | {max(r['err'] for r in rows):.1e} |")


if __name__ == "__main__":
    main()
