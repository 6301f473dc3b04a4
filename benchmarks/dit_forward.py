"""Seconds per 14B DiT forward on one GPU: the plain path and each fast path, side by side.

Builds the DiT at the real 14B config with seeded random weights (bf16) on the GPU and times
one forward (one speaker, one branch, ``--frames`` output frames) per resolution with CUDA
events: ``--warmup`` untimed calls (they include compilation), median of ``--repeats``.
Variants, applied cumulatively in this order to the same weights:

    flash2       FlashAttention-2 (PyTorch's), eager, no fusions: the reference-equivalent baseline
    sdpa         SDPA's own kernel choice (cuDNN attention on Hopper with torch 2.11), eager: our default
    compile      + torch.compile of every block (fuses the float32 modulation/norm/RoPE/gate chain)
    fa3          + FlashAttention-3 bf16 (fa3-fwd; the Hopper default where installed)
    fa3_fp8      + FlashAttention-3 with Q/K/V in fp8 e4m3 (K smoothed, one scale per head)
    fp8          + fp8 e4m3 row-scaled linear layers in the blocks (torch._scaled_mm)
    triton_int8  + our Triton attention with int8 Q/K (SageAttention's recipe), P V in bf16
    triton_fp8   + our Triton attention with Q/K/P/V in fp8 e4m3
    sage         + SageAttention 1 (8-bit QK^T, Triton) for every attention, where the package imports

Per row: seconds, FLOP of the forward (counted once with torch's FlopCounterMode on the plain
path), achieved TFLOP/s, share of the measured bf16 matmul peak, peak memory, and the output's
relative L2 error against the first variant (same weights, same inputs). ``--profile`` prints
the 25 costliest CUDA kernels of one forward of the last variant.

    python benchmarks/dit_forward.py --sizes 448x896 --json out.json
    python benchmarks/dit_forward.py --preset tiny --device cpu --sizes 64x64 --frames 9 --variants plain,compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_parallel import Timer, make_branches  # noqa: E402  (same inputs and timer as the parallel benchmark)

from infinitetalk_dist.models.dit import dit_14b, dit_tiny  # noqa: E402
from infinitetalk_dist.models.random_init import seeded  # noqa: E402
from infinitetalk_dist.parallel import ParallelState, compile_blocks, fp8_linears, random_sharded_dit  # noqa: E402

VARIANTS = ("flash2", "sdpa", "compile", "fa3", "fa3_fp8", "fp8", "triton_int8", "triton_fp8", "sage")


def matmul_peak(device: torch.device, n: int = 8192) -> dict[str, float]:
    """Measured TFLOP/s of a bf16 and (where supported) an fp8 row-scaled n x n x n matmul."""
    out = {}
    if device.type != "cuda":
        return out
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out["bf16"] = 2 * n**3 / timed(lambda: a @ b, device, 3, 10)[0] / 1e12
    from infinitetalk_dist.kernels.fp8 import fp8_supported, quantize_rows

    if fp8_supported(device):
        qa, sa = quantize_rows(a)
        qb, sb = quantize_rows(b)
        out["fp8"] = 2 * n**3 / timed(lambda: torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb.t(),
                                                               out_dtype=torch.bfloat16, use_fast_accum=True),
                                      device, 3, 10)[0] / 1e12
    return out


def timed(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """(median seconds of ``repeats`` CUDA-event-timed calls, seconds of the warm-up calls)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warm = time.perf_counter() - t0
    return statistics.median(Timer(device)(fn, 0, repeats)), warm


def count_flop(model, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**inputs)
    return counter.get_total_flops()


def apply(model, variant: str) -> None:
    if variant in ("flash2", "sdpa", "cudnn", "fa3", "fa3_fp8", "sage", "triton_int8", "triton_fp8"):
        model.set_attn_backend(variant)
    elif variant == "compile":
        compile_blocks(model)
    elif variant == "fp8":
        fp8_linears(model)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=["14b", "tiny"], default="14b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--sizes", default="448x896", help="comma-separated HxW of the video")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--profile", action="store_true", help="kernel table of the last variant (first size)")
    args = ap.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = dit_14b() if args.preset == "14b" else dit_tiny()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    variants = args.variants.split(",")
    t = time.perf_counter()
    model = random_sharded_dit(cfg, ParallelState.single(device), seeded(0, device), dtype=dtype, device=device,
                               fsdp=False)
    print(f"built {args.preset} DiT ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params) "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    peak = matmul_peak(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"card: {card}; measured matmul peak: " + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in peak.items()))
    inputs = {}
    for h, w in sizes:
        br = make_branches(cfg, h, w, args.frames, 1, device, dtype)["cond"]
        br.pop("ref_target_masks")
        inputs[(h, w)] = br
    rows, ref, flop = [], {}, {}
    with torch.inference_mode():
        for variant in variants:
            apply(model, variant)
            for (h, w), x in inputs.items():
                if (h, w) not in flop:
                    flop[(h, w)] = count_flop(model, x)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                out = []
                seconds, warm = timed(lambda: out.__setitem__(slice(None), [model(**x)]), device, args.warmup,
                                      args.repeats)
                y = out[0].float().cpu()
                ref.setdefault((h, w), y)
                tflops = flop[(h, w)] / seconds / 1e12
                tokens = ((args.frames - 1) // 4 + 1) * (h // 16) * (w // 16)
                row = dict(variant=variant, size=f"{h}x{w}", tokens=tokens, seconds=seconds, warmup_seconds=warm,
                           pflop=flop[(h, w)] / 1e15, tflops=tflops,
                           peak_share=tflops / peak["bf16"] if "bf16" in peak else None,
                           peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                           rel_l2=rel_l2(y, ref[(h, w)]), card=card)
                rows.append(row)
                print(f"{variant:<8} {h}x{w} {seconds:8.3f} s  (warm-up {warm:6.1f} s)  {tflops:6.0f} TFLOP/s  "
                      f"rel L2 {row['rel_l2']:.2e}", flush=True)
                if args.json:  # after every row: a run cut short keeps what it measured
                    Path(args.json).write_text(json.dumps(dict(rows=rows, peak=peak, frames=args.frames), indent=1))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        x = next(iter(inputs.values()))
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(**x)
            torch.cuda.synchronize(device)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    print("\n| card | size | tokens | variant | s/forward | PFLOP | TFLOP/s | share of bf16 peak | peak GiB | rel L2 vs first |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        share = f"{r['peak_share']:.0%}" if r["peak_share"] is not None else "-"
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"| {r['card']} | {r['size']} | {r['tokens']} | {r['variant']} | {r['seconds']:.3f} | {r['pflop']:.3f} | "
              f"{r['tflops']:.0f} | {share} | {mem} | {r['rel_l2']:.1e} |")


if __name__ == "__main__":
    main()
