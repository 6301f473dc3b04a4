"""The farm on a GPU machine through the user's command: `infinitetalk-dist run ... farm=ray`, timed,
with a replica actor killed in the middle of a window, then checked against `farm=local`.

    python benchmarks/make_weights.py /tmp/itd-weights
    python benchmarks/farm_gpu.py --weights /tmp/itd-weights --seconds 60 --kill 1 --local killed

1. ``run --image face.png --audio speech.wav --sampler lightx2v --lora ... farm=ray
   farm.replicas=N farm.target_s=W timings=true`` on a 480p picture and ``--seconds`` of speech.
   ``--kill K``: once the K-th window (0-based, in dispatch order) has rendered ``--kill-after``
   seconds, its actor's process is sent SIGKILL (its PID from the driver's "replica ready" log
   line), as the kernel's OOM killer would; the job must re-queue the window, rebuild the
   replica and finish.
2. ``--local``: the same command with ``farm=local`` on a copy of the Ray job's store from which
   the chosen windows' files were removed (``killed``: the killed window, else window 0;
   ``all``: a fresh store, every window), so farm=local re-renders them through the resume
   path. The two films and the re-rendered windows' sha256 must be equal.

Prints the farm-on-GPU table (time to the first window, seconds per window, GPU busy share,
stitch, GPU-s per output s) from ``<output>.timings.json`` and writes ``results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from e2e import write_inputs  # noqa: E402

READY = re.compile(r"replica (\d+) ready in [\d.]+ s \(\d+ rank\(s\), pids \[([\d, ]+)\]")
TAKEN = re.compile(r"window #(\d+) \(frames .*-> replica (\d+)")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(args: list[str], log: Path, *, kill: int | None = None, kill_after: float = 30.0) -> dict:
    """One CLI process; ``kill``: SIGKILL the actor rendering the ``kill``-th dispatched window."""
    cmd = [sys.executable, "-m", "infinitetalk_dist", "run", *args]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    pids: dict[int, int] = {}
    killed: dict = {}
    taken: list[int] = []

    def killer(window: int, replica: int) -> None:
        time.sleep(kill_after)
        pid = pids.get(replica)
        if pid and p.poll() is None:
            os.kill(pid, signal.SIGKILL)
            killed.update(window=window, replica=replica, pid=pid, at_s=round(time.perf_counter() - t0, 1))
            print(f"  killed actor pid {pid} (replica {replica}, window #{window}) at {killed['at_s']} s", flush=True)

    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n\n")
        for line in p.stdout:
            f.write(line)
            f.flush()
            if m := READY.search(line):
                pids[int(m[1])] = int(m[2].split(",")[0])
                print(f"  {time.perf_counter() - t0:7.1f} s  {line.strip()[-90:]}", flush=True)
            elif m := TAKEN.search(line):
                taken.append(int(m[1]))
                print(f"  {time.perf_counter() - t0:7.1f} s  {line.strip()[-90:]}", flush=True)
                if kill is not None and len(taken) == kill + 1 and not killed:
                    threading.Thread(target=killer, args=(int(m[1]), int(m[2])), daemon=True).start()
    rc = p.wait()
    return {"rc": rc, "process_s": round(time.perf_counter() - t0, 1), "killed": killed or None}


def windows_of(store: Path) -> dict[int, str]:
    return {int(k): v["sha256"] for k, v in json.loads((store / "manifest.json").read_text())["windows"].items()}


def frame_diff(a: Path, b: Path) -> dict:
    """How two renders of a window differ, decoded: frames, frames that differ, first one, the
    largest pixel difference and the PSNR over all frames (a numeric drift or a wrong input)."""
    import numpy as np

    from infinitetalk_dist.media.container import iter_video_frames

    n = differ = 0
    first, worst, sq = None, 0, 0.0
    for fa, fb in zip(iter_video_frames(a), iter_video_frames(b), strict=False):
        d = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
        if d.any():
            differ += 1
            first = n if first is None else first
        worst, sq, n = max(worst, int(d.max())), sq + float((d.astype(np.float64) ** 2).mean()), n + 1
    psnr = float(10 * np.log10(255.0**2 / (sq / max(n, 1)))) if sq else float("inf")
    return dict(frames=n, differ=differ, first_differing=first, max_abs=worst, psnr_db=round(psnr, 2))


def row(name: str, report: dict, extra: dict) -> str:
    run = report["run"] or {}
    setup = max((s["load_s"] for s in run.get("setups", [])), default=0.0)
    peak = max((w["gpu_peak_gib"] or 0 for w in run.get("windows", [])), default=0)
    warm = max((w["compile_warmup_s"] for w in run.get("windows", [])), default=0)
    return (f"| {name} | {run.get('replicas')} x {run.get('ranks')} | {len(run.get('windows', []))} "
            f"| {report['frames']} | {report['prepare_s']:.1f} | {run.get('placement_s', 0):.1f} | {setup:.1f} | {warm:.1f} "
            f"| {run.get('first_window_done_s') or 0:.1f} | {run.get('window_median_s') or 0:.1f} "
            f"| {run.get('dit_s', 0):.0f} | {run.get('vae_s', 0):.0f} | {run.get('gpu_busy_share', 0):.0%} "
            f"| {report['stitch_s']:.1f} | {report['wall_s']:.0f} | {peak} | {run.get('retries', 0)} "
            f"| **{report['gpu_s_per_output_s']}** | {extra.get('film', '')[:12]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="a weights folder, or tiny (the tiny preset on the CPU)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of speech (the film's length)")
    ap.add_argument("--window-s", type=float, default=10.0, help="farm.target_s")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--kill", type=int, default=None, help="kill the actor of the K-th dispatched window")
    ap.add_argument("--kill-after", type=float, default=30.0, help="seconds into that window")
    ap.add_argument("--local", default="killed", help="none | killed | all: windows farm=local re-renders")
    ap.add_argument("--out", type=Path, default=Path("/tmp/itd-farm"))
    ap.add_argument("extra", nargs="*", help="more overrides for both runs (e.g. compile=false)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = write_inputs(args.out / "inputs", speech_seconds=args.seconds)
    if args.weights == "tiny":  # a dry run of this script on a CPU machine
        model = ["--preset", "tiny", "--device", "cpu", "farm.gpus_per_replica=0"]
    else:
        lora = next(Path(args.weights).glob("lightx2v_lora_rank*.safetensors"))
        model = ["--weights", args.weights, "--device", "cuda", "--dtype", "bfloat16", "--lora", f"{lora}:1.0"]
    common = [*model, "--no-progress", "--image", files["face"], "--audio", files["speech"], "--sampler", "lightx2v",
              "timings=true", f"farm.replicas={args.replicas}", f"farm.target_s={args.window_s}", f"farm.min_s={min(10.0, args.window_s)}", *args.extra]
    ray_mp4 = args.out / "ray.mp4"
    print(f"farm=ray: {args.seconds:.0f} s of speech, {args.replicas} replica(s)", flush=True)
    ray = run_cli([*common, "-o", str(ray_mp4), "farm=ray"], args.out / "ray.log", kill=args.kill,
                  kill_after=args.kill_after)
    results = {"ray": ray}
    rows = []
    if ray["rc"] == 0:
        ray["report"] = json.loads(Path(f"{ray_mp4}.timings.json").read_text())
        ray["film"] = sha(ray_mp4)
        rows.append(row("farm=ray" + (" (actor killed)" if ray["killed"] else ""), ray["report"], ray))
        print(rows[-1], flush=True)  # before farm=local: a run cut short still has this row
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if ray["rc"] == 0 and args.local != "none":
        store = args.out / "local.mp4.job"
        shutil.rmtree(store, ignore_errors=True)
        redo: list[int] = []
        if args.local != "all":
            shutil.copytree(f"{ray_mp4}.job", store)
            redo = [ray["killed"]["window"] if ray["killed"] else 0]
            for k in redo:
                next((store / "windows").glob(f"{k:05d}.*")).unlink()
        local_mp4 = args.out / "local.mp4"
        print(f"farm=local: re-rendering windows {redo or 'all'}", flush=True)
        local = run_cli([*common, "-o", str(local_mp4), "farm=local", f"farm.store={store}"], args.out / "local.log")
        results["local"] = local
        if local["rc"] == 0:
            local["report"] = json.loads(Path(f"{local_mp4}.timings.json").read_text())
            local["film"] = sha(local_mp4)
            a, b = windows_of(Path(f"{ray_mp4}.job")), windows_of(store)
            local["windows_rerendered"] = redo or sorted(b)
            local["windows_equal"] = all(a[k] == b[k] for k in local["windows_rerendered"])
            local["film_equal"] = local["film"] == ray["film"]
            for k in local["windows_rerendered"]:
                if a[k] != b[k]:  # how far apart: the decoded frames of the two renders
                    pair = [next((s / "windows").glob(f"{k:05d}.*")) for s in (Path(f"{ray_mp4}.job"), store)]
                    local.setdefault("window_diffs", {})[k] = d = frame_diff(*pair)
                    print(f"window #{k} differs: {d}", flush=True)
            rows.append(row(f"farm=local ({len(local['windows_rerendered'])} windows re-rendered)",
                            local["report"], local))
            print(f"films equal: {local['film_equal']}; re-rendered windows equal: {local['windows_equal']}")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    head = ("| run | replicas x GPUs | windows | frames | inputs + plan s | placement s | setup (load) s | compile warm-up s "
            "| first window done s | s per window | DiT s | VAE s | GPU busy (DiT+VAE) | stitch s | wall s "
            "| peak GPU GiB | retries | **GPU-s per output s** | film sha256 |")
    print("\n".join([head, "|" + "---|" * (head.count("|") - 1), *rows]))
    for name, r in results.items():
        if r["rc"]:
            print(f"{name} failed (rc {r['rc']}): see {args.out / (name + '.log')}")


if __name__ == "__main__":
    main()
