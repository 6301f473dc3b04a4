"""Windowed wav2vec2 encoding: accuracy against a whole-track encoding, and memory for long audio.

    python benchmarks/audio_windows.py            # tiny preset encoder (seconds on a CPU)
    python benchmarks/audio_windows.py --full     # chinese-wav2vec2-base architecture, random weights

Prints markdown tables:

1. accuracy: for each (window_s, context_s), max and mean |windowed - whole| over all frames,
   layers and channels, absolute and relative (max to max|whole|, mean to mean|whole|), the
   relative L2 error (overall and of the last layer), and the time of the windowed call; the
   whole-track reference is ``embed_waveform`` on a deterministic speech-like track
   (``--seconds``, default 150).
2. memory: for 10, 30, 90 minute tracks (``--minutes``), each in a fresh subprocess, the peak
   resident memory while ``audio_features`` runs (Linux VmHWM, reset before the call), the
   resident memory before it (model + waveform), the result's size and what is left: the working
   memory of the windowed encoder, which must not grow with the length. For contrast, the
   whole-track encoding at a few short lengths (``--whole-minutes``).

Weights are random (seeded): what matters for windowing is the attention span, and random
attention is diffuse (every frame sees the whole track about equally), a pessimistic proxy for a
trained model whose attention is mostly local.

Imports only torch, numpy, transformers and this package's models (the windowing code is
``infinitetalk_dist.models.wav2vec2_windows``, which needs no PyAV), so it runs on the GPU image. ``--device cuda`` runs the encoder there (memory then also reports CUDA peaks).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

SR = 16000


# ---------------------------------------------------------------------------------------------
# A deterministic speech-like test signal, generated block by block (any length, flat memory)
# ---------------------------------------------------------------------------------------------


def _hash(k: np.ndarray, salt: float) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) from integers (the classic sin hash)."""
    v = np.sin(k.astype(np.float64) * 12.9898 + salt * 78.233) * 43758.5453
    return v - np.floor(v)


def speech_like(t: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Voiced harmonic source with drifting f0, per-syllable formants and loudness, syllables at
    3-5 Hz with short and long pauses, fricative noise bursts and a noise floor. ``t`` in
    seconds (float64), ``noise`` standard normal of the same length."""
    # f0: slow speaker drift + intonation + vibrato; phase is the closed-form integral.
    f0 = 120 + 35 * np.sin(2 * np.pi * t / 97.0) + 25 * np.sin(2 * np.pi * t / 3.1) + 6 * np.sin(2 * np.pi * t / 0.21)
    phase = 2 * np.pi * (120 * t - 35 * 97.0 / (2 * np.pi) * np.cos(2 * np.pi * t / 97.0)
                         - 25 * 3.1 / (2 * np.pi) * np.cos(2 * np.pi * t / 3.1)
                         - 6 * 0.21 / (2 * np.pi) * np.cos(2 * np.pi * t / 0.21))
    # syllables: rate 3-5 Hz, index k and position u in the syllable.
    syl = 4.0 * t - 1.0 * 7.3 / (2 * np.pi) * np.cos(2 * np.pi * t / 7.3)
    k = np.floor(syl).astype(np.int64)
    u = syl - k
    amp = 0.3 + 0.7 * _hash(k, 1.0)
    amp = np.where(_hash(k, 2.0) < 0.12, 0.0, amp)  # short pauses
    amp = np.where(_hash(k // 40, 3.0) < 0.15, 0.0, amp)  # long pauses (~10 s stretches)
    env = amp * np.sin(np.pi * u) ** 2
    f1 = 300 + 600 * _hash(k, 4.0)
    f2 = 900 + 1600 * _hash(k, 5.0)
    voiced = np.zeros_like(t)
    z = np.exp(1j * phase)  # harmonic h = imag(z**h), by repeated multiplication
    zh = z.copy()
    c = slice(None, None, 32)  # harmonic amplitudes at a 500 Hz control rate
    n = t.shape[0]
    for h in range(1, 13):
        fh = h * f0[c]
        a = np.exp(-(((fh - f1[c]) / 150.0) ** 2)) + 0.6 * np.exp(-(((fh - f2[c]) / 250.0) ** 2)) + 0.03
        voiced += np.repeat(a, 32)[:n] * zh.imag / h**0.5
        zh *= z
    fric = np.where(_hash(k, 6.0) > 0.7, 1.0, 0.0) * np.sin(np.pi * u) ** 8
    x = 0.25 * env * voiced + 0.08 * fric * noise + 0.002 * noise
    return x.astype(np.float32)


def make_signal(seconds: float, seed: int = 0, block_s: float = 10.0) -> np.ndarray:
    """``seconds`` of the speech-like signal, filled in ``block_s`` blocks (noise seeded per block)."""
    n = int(round(seconds * SR))
    out = np.empty(n, np.float32)
    block = int(block_s * SR)
    for b, i in enumerate(range(0, n, block)):
        m = min(block, n - i)
        t = (i + np.arange(m)) / SR
        noise = np.random.default_rng([seed, b]).standard_normal(m)
        out[i:i + m] = speech_like(t, noise)
    return out


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------


def build_encoder(full: bool, attn: str, device: str, seed: int = 5, weights: str | None = None):
    from transformers import Wav2Vec2Config

    from infinitetalk_dist.models.presets import TINY_WAV2VEC2
    from infinitetalk_dist.models.random_init import randomize_, seeded
    from infinitetalk_dist.models.wav2vec2 import AudioEncoder

    # Wav2Vec2Config() defaults are the wav2vec2-base architecture of chinese-wav2vec2-base:
    # hidden 768, 12 layers x 12 heads, FFN 3072, 7 convs of 512 (first with GroupNorm), pos conv 128/16.
    if weights:  # a real chinese-wav2vec2-base folder (transformers layout)
        from infinitetalk_dist.models.weights import load_wav2vec2

        enc = load_wav2vec2(weights, device=device)
        enc.model.config._attn_implementation = attn
        return enc
    cfg = Wav2Vec2Config() if full else Wav2Vec2Config(**TINY_WAV2VEC2)
    with torch.device("meta"):
        enc = AudioEncoder.from_config(cfg, attn_implementation=attn)
    return randomize_(enc, seeded(seed), torch.float32, device)


# ---------------------------------------------------------------------------------------------
# Memory helpers (Linux)
# ---------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def memory_child(args) -> dict:
    """Run in a fresh process: encode ``args.child_minutes`` of audio, report memory as JSON."""
    from infinitetalk_dist.models.wav2vec2 import embed_waveform
    from infinitetalk_dist.models.wav2vec2_windows import audio_features

    torch.manual_seed(0)
    enc = build_encoder(args.full, args.attn, args.device, weights=args.weights)
    wave = make_signal(args.child_minutes * 60)
    gc.collect()
    rss0 = _status_kb("VmRSS")
    can_reset = _reset_peak()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if args.child_mode == "whole":
        out = embed_waveform(wave, enc, device=args.device).cpu()
    else:
        out = audio_features(wave, enc, window_s=args.window, context_s=args.context, device=args.device)
    dt = time.perf_counter() - t0
    peak = _status_kb("VmHWM") if can_reset else None
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = dict(minutes=args.child_minutes, mode=args.child_mode, frames=out.shape[0], rss_before_mb=rss0 / 1024,
               peak_mb=peak / 1024, result_mb=out.numel() * out.element_size() / 2**20,
               wave_mb=wave.nbytes / 2**20, seconds=dt, peak_is_reset=can_reset)
    if args.device.startswith("cuda"):
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def run_child(args, minutes: float, mode: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-minutes", str(minutes), "--child-mode", mode,
           "--window", str(args.window), "--context", str(args.context), "--attn", args.attn, "--device", args.device]
    if args.full:
        cmd.append("--full")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.weights:
        cmd += ["--weights", args.weights]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return dict(minutes=minutes, mode=mode, error=(p.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_configs(text: str) -> list[tuple[float, float]]:
    out = []
    for item in text.split(","):
        w, c = item.split(":")
        out.append((float(w), float(c)))
    return out


TINY_CONFIGS = "5:0,5:2,10:0,10:5,20:0,20:5,20:10,30:15,40:10,60:0,60:5,60:15,60:30,90:15,120:30,120:60"
FULL_CONFIGS = "10:5,20:10,30:15,60:5,60:30"


def accuracy(args) -> None:
    from infinitetalk_dist.models.wav2vec2 import embed_waveform
    from infinitetalk_dist.models.wav2vec2_windows import windowed_features

    enc = build_encoder(args.full, args.attn, args.device, weights=args.weights)
    wave = make_signal(args.seconds)
    t0 = time.perf_counter()
    whole = embed_waveform(wave, enc, device=args.device).cpu().double()
    t_whole = time.perf_counter() - t0
    amax, amean, norm = whole.abs().max().item(), whole.abs().mean().item(), whole.norm().item()
    last = whole[:, -1]
    print(f"\n### Accuracy: {'chinese-wav2vec2-base architecture' if args.full else 'tiny preset'}, {'weights from ' + args.weights if args.weights else 'random weights'}, "
          f"{args.seconds:g} s speech-like track ({whole.shape[0]} frames, {whole.shape[1]} layers x {whole.shape[2]}), "
          f"attn={args.attn}, {torch.get_num_threads()} threads\n")
    print(f"whole-track embed_waveform: {t_whole:.2f} s; max|whole| = {amax:.3g}, mean|whole| = {amean:.3g}\n")
    print("| window_s | context_s | span_s | windows | max abs | mean abs | max rel | mean rel | rel L2 | rel L2 last layer | time s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    frames = whole.shape[0]
    for w, c in parse_configs(args.configs):
        win, ctx = max(1, round(w * 25)), round(c * 25)
        t0 = time.perf_counter()
        got = windowed_features(wave, enc, win, ctx, device=args.device).double()
        dt = time.perf_counter() - t0
        d = (got - whole).abs()
        n_win = math.ceil(frames / win)
        span = min(frames, math.ceil(frames / n_win) + 2 * ctx) / 25
        rl2 = (got - whole).norm().item() / norm
        rl2_last = (got[:, -1] - last).norm().item() / last.norm().item()
        print(f"| {w:g} | {c:g} | {span:g} | {n_win} | {d.max().item():.3g} | {d.mean().item():.3g} | "
              f"{d.max().item() / amax:.2e} | {d.mean().item() / amean:.2e} | {rl2:.2e} | {rl2_last:.2e} | {dt:.2f} |",
              flush=True)


def memory(args) -> None:
    print(f"\n### Memory: {'chinese-wav2vec2-base architecture' if args.full else 'tiny preset'}, "
          f"audio_features(window_s={args.window:g}, context_s={args.context:g}), attn={args.attn}, one process per row\n")
    print("Peak = highest resident memory during the call (VmHWM, reset just before it); before = resident memory "
          "before the call (Python + torch + model + the float32 waveform); working = peak - before - result.\n")
    cuda = args.device.startswith("cuda")
    print("| mode | minutes | frames | waveform MB | before MB | peak MB | result MB | working MB | time s |"
          + (" CUDA peak MB |" if cuda else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else ""))
    rows = [("whole", m) for m in parse_list(args.whole_minutes)] + [("windowed", m) for m in parse_list(args.minutes)]
    for mode, m in rows:
        r = run_child(args, m, mode)
        if "error" in r:
            print(f"| {mode} | {m:g} | - | - | - | - | - | - | {r['error']} |", flush=True)
            continue
        working = r["peak_mb"] - r["rss_before_mb"] - r["result_mb"]
        print(f"| {mode} | {m:g} | {r['frames']} | {r['wave_mb']:.0f} | {r['rss_before_mb']:.0f} | {r['peak_mb']:.0f} | "
              f"{r['result_mb']:.0f} | {working:.0f} | {r['seconds']:.1f} |"
              + (f" {r['cuda_peak_mb']:.0f} |" if cuda else ""), flush=True)


def parse_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="chinese-wav2vec2-base architecture (default: tiny preset)")
    p.add_argument("--seconds", type=float, default=None, help="accuracy track length (default 300; 150 with --full)")
    p.add_argument("--configs", default=None, help="window_s:context_s,... for the accuracy table")
    p.add_argument("--window", type=float, default=None, help="window_s for the memory table (default: audio_features')")
    p.add_argument("--context", type=float, default=None, help="context_s for the memory table (default: audio_features')")
    p.add_argument("--minutes", default="10,30,90", help="track lengths of the memory table (windowed)")
    p.add_argument("--whole-minutes", default=None, help="whole-track rows of the memory table (default 2.5,5; none with --full)")
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--attn", default=None, choices=["eager", "sdpa"], help="default: eager (tiny), sdpa (--full)")
    p.add_argument("--weights", default=None, help="a chinese-wav2vec2-base folder: measure the trained model instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child-minutes", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-mode", default="windowed", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from infinitetalk_dist.models.wav2vec2_windows import DEFAULT_CONTEXT_S, DEFAULT_WINDOW_S

    args.window = DEFAULT_WINDOW_S if args.window is None else args.window
    args.context = DEFAULT_CONTEXT_S if args.context is None else args.context
    args.full = args.full or bool(args.weights)
    args.attn = args.attn or ("sdpa" if args.full else "eager")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.child_minutes is not None:
        print(json.dumps(memory_child(args)))
        return
    args.seconds = args.seconds or (150.0 if args.full else 300.0)
    args.configs = args.configs or (FULL_CONFIGS if args.full else TINY_CONFIGS)
    if args.whole_minutes is None:
        args.whole_minutes = "" if args.full else "2.5,5"
    if not args.no_accuracy:
        accuracy(args)
    if not args.no_memory:
        memory(args)


if __name__ == "__main__":
    main()
