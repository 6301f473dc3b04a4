"""Self-attention kernels side by side at the 14B DiT's shapes: seconds, TFLOP/s, error.

One call of ``[B, L, 40, 128]`` attention (the DiT's self-attention; one per layer) with each
kernel: SDPA's FlashAttention-2 (the reference's kernel), cuDNN, and our Triton kernel in each
precision over a few tile configurations. Error: relative L2 against float64-accumulated
attention on the first ``--check-queries`` queries (all keys). Inputs mimic the DiT's: Q and K RMS-normalised with
a per-channel offset on K, logits of standard deviation ``--logit-std``.

    python benchmarks/attention_kernels.py --tokens 32928,73920 --json att.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_forward import rel_l2, timed  # noqa: E402

from infinitetalk_dist.kernels.attention import attention  # noqa: E402
from infinitetalk_dist.kernels.fa3 import fa3_attention, fa3_available  # noqa: E402
from infinitetalk_dist.kernels.triton_attention import triton_attention  # noqa: E402
from infinitetalk_dist.models.dit import dit_14b  # noqa: E402

LAYERS, HEADS, HEAD_DIM = dit_14b().num_layers, dit_14b().num_heads, dit_14b().head_dim

# precision:BLOCK_MxBLOCK_N/warps/stages, the tiles measured best on an H100 (RESULTS.md)
KERNELS = ("bf16:128x64/8/3", "bf16:128x128/8/3", "int8:128x128/8/3", "int8:128x64/8/3", "fp8:128x128/8/3")


def tile(spec: str) -> dict:
    mn, warps, stages = spec.split("/")
    m, n = mn.split("x")
    return dict(BLOCK_M=int(m), BLOCK_N=int(n), num_warps=int(warps), num_stages=int(stages))


def inputs(tokens: int, heads: int, dim: int, logit_std: float, device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)

    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    q = rms(torch.randn(1, tokens, heads, dim, generator=g, device=device))
    k = rms(torch.randn(1, tokens, heads, dim, generator=g, device=device) + torch.randn(1, 1, heads, dim, generator=g, device=device))
    v = torch.randn(1, tokens, heads, dim, generator=g, device=device)
    # logits q.k/sqrt(d) of RMS-normalised rows have std ~ 1; scale q to the asked std
    return (q * logit_std).bfloat16(), k.bfloat16(), v.bfloat16()


def reference(q, k, v, n: int) -> torch.Tensor:
    out = []
    for h in range(q.shape[2]):  # one head at a time: [n, L] float64 logits fit in memory
        qd, kd, vd = (t[0, :, h].double() for t in (q[:, :n], k, v))
        out.append(((qd @ kd.T) / math.sqrt(q.shape[-1])).softmax(-1) @ vd)
    return torch.stack(out, 1)[None]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="32928,73920")
    ap.add_argument("--heads", type=int, default=HEADS)
    ap.add_argument("--dim", type=int, default=HEAD_DIM)
    ap.add_argument("--logit-std", type=float, default=2.0)
    ap.add_argument("--kernels", default=",".join(KERNELS), help="precision:tile entries, see KERNELS")
    ap.add_argument("--check-queries", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    card = torch.cuda.get_device_name(device)
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        q, k, v = inputs(tokens, args.heads, args.dim, args.logit_std, device)
        ref = reference(q, k, v, args.check_queries)
        flop = 4 * tokens * tokens * args.heads * args.dim
        kernels = {"flash2 (SDPA)": lambda: attention(q, k, v, backend="flash2"),
                   "cudnn (SDPA)": lambda: attention(q, k, v, backend="cudnn")}
        if fa3_available():  # fa3-fwd: bf16, and fp8 with and without K smoothing
            kernels["fa3 bf16"] = lambda: fa3_attention(q, k, v)
            kernels["fa3 fp8 (one scale per head)"] = lambda: fa3_attention(q, k, v, fp8=True, smooth_k=False)
            kernels["fa3 fp8 + K smoothing (fa3_fp8)"] = lambda: fa3_attention(q, k, v, fp8=True)
        for entry in filter(None, args.kernels.split(",")):
            precision, spec = entry.split(":")
            kernels[f"triton {precision} {spec}"] = lambda t=tile(spec), p=precision: triton_attention(
                q, k, v, precision=p, blocks=t)
        for name, fn in kernels.items():
            try:
                seconds, _ = timed(fn, device, 2, args.repeats)
                err = rel_l2(fn()[:, : args.check_queries], ref)
            except Exception as exc:  # a tile the compiler rejects: report and go on
                print(f"{tokens:>6} {name:<40} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            row = dict(card=card, tokens=tokens, kernel=name, seconds=seconds, tflops=flop / seconds / 1e12,
                       rel_l2=err, per_forward=LAYERS * seconds)
            rows.append(row)
            print(f"{tokens:>6} {name:<40} {seconds * 1e3:8.2f} ms  {row['tflops']:6.0f} TFLOP/s  x{LAYERS} {LAYERS * seconds:6.3f} s"
                  f"  rel L2 {err:.1e}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n| card | tokens | kernel | ms/call | TFLOP/s | x{LAYERS} layers s | rel L2 vs fp64 |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['card']} | {r['tokens']} | {r['kernel']} | {r['seconds'] * 1e3:.2f} | {r['tflops']:.0f} | "
              f"{r['per_forward']:.3f} | {r['rel_l2']:.1e} |")


if __name__ == "__main__":
    main()
