"""Seconds per DiT forward / guided step on one replica of N GPUs: Ulysses (sp) + FSDP2, CFG-parallel.

Run under torchrun; every rank builds the model with seeded random weights, FSDP-sharded
over all N ranks (N > 1), and times, per resolution, these modes (a mode is skipped when
its sp size does not divide the 40 heads, or it needs N >= 2):

    sp        cfg 1 x sp N       1 branch        one forward (B=1): the scaling figure
    batched2  cfg 1 x sp N       2 branches      one forward with B=2 (4-step presets: cond, drop_audio)
    cfg2      cfg 2 x sp N/2     2 branches      one B=1 forward per cfg rank, all-gathered
    batched3  cfg 1 x sp N       3 branches      one forward with B=3 (40-step default: cond, drop_text, uncond)
    cfgpar3   cfg 3 x sp N/3     3 branches      one B=1 forward per cfg rank (cfg 2 when 3 does not divide N:
                                                 one cfg rank then runs 2 branches batched)

A step is ``predict_branches`` (every rank ends with every branch's prediction). Timing: CUDA
events after a barrier, ``--warmup`` untimed calls, median of ``--repeats`` (>= 3), max over
ranks. Memory: peak allocated per GPU (max over ranks), parameter bytes per GPU. Scaling
efficiency = branches x (1-GPU seconds per forward) / (N x seconds per step), with the
1-GPU figure from ``--baseline-json`` (a ``--nproc_per_node 1`` run of this script) or
``--baseline-seconds``; a 1-process run measures it itself (mode sp). Correctness on the
real config and hardware: the 1-GPU run saves its predictions at a small resolution
(``--check-save``), the N-GPU run compares every mode's with them (``--check-against``,
relative L2 per mode; bf16 rounding only, flagged above ``--check-tol``).

    torchrun --standalone --nproc_per_node 1 benchmarks/dit_parallel.py --modes sp \\
        --json /tmp/dit_1gpu.json --check-save /tmp/dit_check.pt
    torchrun --standalone --nproc_per_node 8 benchmarks/dit_parallel.py --baseline-json /tmp/dit_1gpu.json \\
        --check-against /tmp/dit_check.pt --json /tmp/dit_8gpu.json
    # CPU control-flow check (gloo, tiny preset):
    torchrun --standalone --nproc_per_node 2 benchmarks/dit_parallel.py --preset tiny --device cpu \\
        --resolutions 64x64 --frames 9 --dtype float32

Imports only torch and this package (the GPU image has no ray/hydra/av). Any error on any
rank prints that rank's traceback and exits the process at once (torchrun then stops the
others) instead of hanging the group.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from infinitetalk_dist.models.dit import DiTConfig, dit_14b  # noqa: E402
from infinitetalk_dist.models.random_init import seeded  # noqa: E402
from infinitetalk_dist.parallel import (  # noqa: E402
    ParallelState,
    init_distributed,
    local_param_bytes,
    predict_branches,
    random_sharded_dit,
)

ALL_MODES = ("sp", "batched2", "cfg2", "batched3", "cfgpar3")


@dataclass(frozen=True)
class Mode:
    name: str
    cfg: int
    sp: int
    branches: int


def plan_modes(names: list[str], world: int, heads: int) -> tuple[list[Mode], list[str]]:
    """The runnable modes for this world, and a note per skipped one."""
    modes, skipped = [], []
    for name in names:
        if name in ("sp", "batched2", "batched3"):
            mode = Mode(name, 1, world, {"sp": 1, "batched2": 2, "batched3": 3}[name])
        elif world < 2:
            skipped.append(f"{name}: needs N >= 2")
            continue
        elif name == "cfg2":
            if world % 2:
                skipped.append(f"{name}: N={world} is odd")
                continue
            mode = Mode(name, 2, world // 2, 2)
        elif name == "cfgpar3":
            cfg = 3 if world % 3 == 0 else 2 if world % 2 == 0 else 0
            if not cfg:
                skipped.append(f"{name}: N={world} divides by neither 3 nor 2")
                continue
            mode = Mode(name, cfg, world // cfg, 3)
        else:
            raise SystemExit(f"unknown mode {name!r}; choose from {ALL_MODES}")
        if heads % mode.sp:
            skipped.append(f"{name}: sp={mode.sp} does not divide the {heads} heads")
            continue
        modes.append(mode)
    return modes, skipped


def parse_resolution(s: str) -> tuple[int, int]:
    h, w = (int(v) for v in s.lower().split("x"))
    if h % 16 or w % 16:
        raise SystemExit(f"resolution {s}: height and width must be multiples of 16")
    return h, w


def make_branches(cfg: DiTConfig, height: int, width: int, frames: int, speakers: int, device, dtype,
                  seed: int = 0) -> dict[str, dict]:
    """The guidance branches' inputs as the sampler builds them: same latent; null text; one silent speaker."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    t_lat, h, w = (frames - 1) // 4 + 1, height // 8, width // 8

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    masks = torch.zeros(3, h, w, device=device)
    masks[0, :, : w // 2] = 1
    masks[1, :, w // 2 :] = 1
    cond = dict(
        x=torch.randn(1, cfg.out_dim, t_lat, h, w, generator=g).to(device),
        t=torch.tensor([500.0], device=device),
        context=rnd(1, min(cfg.text_len, 120), cfg.text_dim),
        clip_fea=rnd(1, 257, cfg.clip_dim),
        y=rnd(1, cfg.in_dim - cfg.out_dim, t_lat, h, w),
        audio=rnd(1, speakers, frames, cfg.audio_window, cfg.audio_blocks, cfg.audio_channels),
        ref_target_masks=masks,
    )
    null_text = rnd(1, 20, cfg.text_dim)
    silent = torch.zeros_like(cond["audio"][:, -1:])
    return dict(cond=cond, drop_text={**cond, "context": null_text},
                uncond={**cond, "context": null_text, "audio": silent}, drop_audio={**cond, "audio": silent})


BRANCH_NAMES = {1: ("cond",), 2: ("cond", "drop_audio"), 3: ("cond", "drop_text", "uncond")}


def select_branches(branches: dict, count: int) -> list:
    """1: cond; 2 (text scale 1, 4-step presets): cond, drop_audio; 3 (40-step default): cond, drop_text, uncond."""
    return [branches[name] for name in BRANCH_NAMES[count]]


CHECK_FRAMES = 9


def correctness_check(args, cfg, model, state, modes, device, dtype, rank) -> dict[str, float]:
    """Every mode's predictions at a small resolution vs the 1-GPU run's (``--check-save`` there,
    ``--check-against`` here): max over branches of the relative L2 error. Same seeded weights
    and inputs; not bitwise (other kernel shapes), so bf16 rounding is expected, nothing more."""
    if not (args.check_save or args.check_against):
        return {}
    h, w = parse_resolution(args.check_resolution)
    branches = make_branches(cfg, h, w, CHECK_FRAMES, args.speakers, device, dtype, seed=1)
    if args.check_save and state.world_size == 1:
        with torch.no_grad():
            ref = {name: model(**b).cpu() for name, b in branches.items()}  # one plain forward per branch
        if rank == 0:
            torch.save(ref, args.check_save)
        log(rank, f"check: saved {len(ref)} reference predictions at {args.check_resolution} to {args.check_save}")
    if not args.check_against:
        return {}
    ref = torch.load(args.check_against, weights_only=True)
    out = {}
    for mode in modes:
        got = predict_branches(model, select_branches(branches, mode.branches), state)
        want = select_branches(ref, mode.branches)
        errs = [float((g.cpu() - r).norm() / r.norm()) for g, r in zip(got, want)]
        out[mode.name] = all_max(max(errs), device)
        flag = "  <-- CHECK FAILED" if out[mode.name] > args.check_tol else ""
        log(rank, f"check {mode.name} vs 1 GPU at {args.check_resolution}: rel L2 {out[mode.name]:.2e}{flag}")
    return out


class Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, warmup: int, repeats: int) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if dist.is_initialized():
                dist.barrier()
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return times


def all_max(value: float, device) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def log(rank: int, *msg) -> None:
    if rank == 0:
        print(*msg, flush=True)


def load_baseline(args) -> dict[str, float]:
    base: dict[str, float] = {}
    if args.baseline_json:
        data = json.loads(Path(args.baseline_json).read_text())
        for row in data["rows"]:
            if row["world"] == 1 and row["mode"] == "sp":
                base[row["resolution"]] = row["seconds"]
        if not base:
            raise SystemExit(f"{args.baseline_json}: no 1-GPU 'sp' rows")
    for item in (args.baseline_seconds or "").split(","):
        if item.strip():
            res, sec = item.split("=")
            base[res.strip()] = float(sec)
    return base


def _size(gib: float | None) -> str:
    if gib is None:
        return "-"
    return f"{gib:.1f} GiB" if gib >= 1 else f"{gib * 1024:.1f} MiB"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"{meta['card']}, {meta['world']} process(es), {meta['preset']} DiT, {meta['dtype']}, "
        f"attention {meta['attention']}, {meta['frames']} frames, torch {meta['torch']}",
        "",
        "| resolution | tokens | mode | cfg x sp | branches | forwards/rank | s/step | s/branch | "
        "scaling eff. | peak mem/GPU | params/GPU | check vs 1 GPU (rel L2) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {m: i for i, m in enumerate(ALL_MODES)}
    res_order = {}
    for r in rows:
        res_order.setdefault(r["resolution"], len(res_order))
    for r in sorted(rows, key=lambda r: (res_order[r["resolution"]], order[r["mode"]])):
        eff = f"{r['efficiency'] * 100:.0f}%" if r.get("efficiency") is not None else "-"
        lines.append(
            f"| {r['resolution']} | {r['tokens']} | {r['mode']} | {r['cfg']} x {r['sp']} | {r['branches']} | "
            f"{r['forwards_per_rank']} | {r['seconds']:.3f} | {r['seconds'] / r['branches']:.3f} | {eff} | "
            f"{_size(r['peak_mem_gib'])} | {_size(r['param_gib'])} | "
            f"{'-' if r.get('check_rel_l2') is None else format(r['check_rel_l2'], '.1e')} |")
    return "\n".join(lines)


def run(args) -> None:
    backend = "nccl" if args.device == "cuda" else "gloo"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    device = init_distributed(backend, timeout_s=args.collective_timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.device == "cuda" and world > torch.cuda.device_count():
        raise SystemExit(f"{world} processes but {torch.cuda.device_count()} GPUs")
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dtype = getattr(torch, args.dtype)

    if args.preset == "14b":
        cfg = dit_14b()
    else:
        from infinitetalk_dist.models.presets import tiny_preset

        cfg = tiny_preset().dit
    cfg = replace(cfg, attn_backend=args.attention)
    if args.layers:
        cfg = replace(cfg, num_layers=args.layers)
    modes, skipped = plan_modes(args.modes.split(","), world, cfg.num_heads)
    resolutions = [parse_resolution(s) for s in args.resolutions.split(",")]
    baseline = load_baseline(args)
    if args.check_against and not Path(args.check_against).is_file():
        raise SystemExit(f"--check-against {args.check_against}: no such file")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    meta = dict(card=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU", world=world,
                preset=args.preset + (f" ({cfg.num_layers} layers)" if args.layers else ""), dtype=args.dtype, attention=args.attention or "sdpa", frames=args.frames,
                torch=torch.__version__)
    log(rank, f"# dit_parallel: {meta}")
    for note in skipped:
        log(rank, f"skipped {note}")
    if not modes:
        raise SystemExit("no runnable mode")

    rows: list[dict] = []
    groups: dict[tuple[int, int], list[Mode]] = {}
    for m in modes:
        groups.setdefault((m.cfg, m.sp), []).append(m)
    for (cfg_size, sp), group_modes in groups.items():
        state = ParallelState.create(cfg=cfg_size, sp=sp, device=device)
        t0 = time.perf_counter()
        model = random_sharded_dit(cfg, state, seeded(args.seed, device), dtype=dtype, device=device,
                                   fsdp=world > 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        params = all_max(local_param_bytes(model), device)
        log(rank, f"built cfg {cfg_size} x sp {sp}: {params / 2**30:.2f} GiB of parameters per rank "
                  f"({time.perf_counter() - t0:.1f} s)")
        checks = correctness_check(args, cfg, model, state, group_modes, device, dtype, rank)
        for height, width in resolutions:
            res = f"{height}x{width}"
            all_branches = make_branches(cfg, height, width, args.frames, args.speakers, device, dtype)
            t_lat = (args.frames - 1) // 4 + 1
            tokens = t_lat * (height // 16) * (width // 16)
            for mode in group_modes:
                branches = select_branches(all_branches, mode.branches)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                outputs = []

                def step(model=model):  # bound now: the loop body deletes `model` afterwards
                    outputs[:] = predict_branches(model, branches, state)

                times = Timer(device)(step, args.warmup, args.repeats)
                bad = [i for i, o in enumerate(outputs) if not torch.isfinite(o).all()]
                if bad or len(outputs) != mode.branches:
                    raise RuntimeError(f"{mode.name} {res}: non-finite or missing predictions (branches {bad})")
                seconds = all_max(statistics.median(times), device)
                peak = all_max(torch.cuda.max_memory_allocated(device), device) if device.type == "cuda" else None
                from infinitetalk_dist.parallel.cfg import plan_branches

                plan = plan_branches([b["audio"].shape[1] for b in branches], cfg_size)
                base = baseline.get(res)
                if world == 1 and mode.name == "sp":
                    base = seconds
                row = dict(resolution=res, tokens=tokens, mode=mode.name, cfg=cfg_size, sp=sp, world=world,
                           branches=mode.branches, forwards_per_rank=max(len(p) for p in plan),
                           seconds=seconds, times=[round(t, 4) for t in times],
                           peak_mem_gib=None if peak is None else peak / 2**30, param_gib=params / 2**30,
                           baseline_seconds=base,
                           efficiency=(mode.branches * base / (world * seconds)) if base else None,
                           check_rel_l2=checks.get(mode.name))
                rows.append(row)
                log(rank, f"{res} {mode.name:9s} cfg {cfg_size} x sp {sp}: {seconds:.3f} s/step "
                          f"(runs {', '.join(f'{t:.3f}' for t in times)}), peak {_size(peak and peak / 2**30)}")
                if rank == 0 and args.json:
                    Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log(rank, "\n" + markdown(rows, meta))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["14b", "tiny"], default="14b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--attention", default=None, help="attention backend (sdpa, cudnn, ...); default sdpa")
    ap.add_argument("--resolutions", default="448x896,704x1280")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--speakers", type=int, choices=[1, 2], default=1)
    ap.add_argument("--modes", default=",".join(ALL_MODES))
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=0, help="override the block count (quick checks; 0: the preset's)")
    ap.add_argument("--baseline-json", default=None, help="JSON of a --nproc_per_node 1 run (its 'sp' rows)")
    ap.add_argument("--baseline-seconds", default=None, help="1-GPU s/forward per resolution: 448x896=4.3,...")
    ap.add_argument("--json", default=None, help="write the rows here (rank 0, after every row)")
    ap.add_argument("--check-save", default=None,
                    help="(1 process) save the predictions at --check-resolution here, for --check-against")
    ap.add_argument("--check-against", default=None,
                    help="compare every mode's predictions at --check-resolution with a --check-save file")
    ap.add_argument("--check-resolution", default="128x256")
    ap.add_argument("--check-tol", type=float, default=5e-2, help="rel L2 above which a check is flagged")
    ap.add_argument("--collective-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    try:
        run(args)
    except BaseException as e:  # fail loudly, and never leave the other ranks waiting in a collective
        if isinstance(e, SystemExit) and e.code in (0, None):
            raise
        rank = os.environ.get("RANK", "?")
        print(f"[rank {rank}] dit_parallel FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
