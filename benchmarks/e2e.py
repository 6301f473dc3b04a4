"""The whole product through the user's command: `infinitetalk-dist generate` at full size, timed.

    python benchmarks/make_weights.py /tmp/itd-weights
    python benchmarks/e2e.py --weights /tmp/itd-weights --cases a --baseline

Each case is one `python -m infinitetalk_dist generate ... timings=true` process (a fresh GPU:
its own load, compile warm-up and peak memory) on inputs written here as files (picture, speech
WAV, source video), exactly as a user would pass them:

    a  480p I2V, --sampler lightx2v with the LoRA file, 20 s of audio (several chunks)
    b  480p V2V at the default 40 steps, one chunk
    c  720p, 4 steps (lightx2v), one chunk
    d  two speakers (one after the other), 480p, 4 steps, one chunk

``--baseline`` also runs each case on the reference-equivalent path (``attention=flash2
compile=false``) right after its default run (``--baseline a``: only case a's). Prints one
Markdown table (the stages from ``<output>.timings.json``; GPU-s per output second = wall time x
GPUs / seconds of video) and writes ``results.json`` after every run (a chain cut short keeps
what it measured).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CASES = {
    "a": ("480p I2V lightx2v+LoRA, 20 s", ["--image", "{face}", "--audio", "{speech20}", "--sampler", "lightx2v",
                                          "--lora", "{lora}:1.0"]),
    "b": ("480p V2V 40 steps, 1 chunk", ["--video", "{video}", "--audio", "{speech3}"]),
    "c": ("720p 4 steps, 1 chunk", ["--image", "{face}", "--audio", "{speech3}", "--size", "720", "--sampler",
                                    "lightx2v", "--lora", "{lora}:1.0"]),
    "d": ("2 speakers 480p 4 steps, 1 chunk", ["--image", "{two}", "--audio", "{speech_a}", "--audio2", "{speech_b}",
                                               "--audio-mode", "add", "--bbox", "0", "0", "448", "448", "0", "448",
                                               "448", "896", "--sampler", "lightx2v", "--lora", "{lora}:1.0"]),
}
BASELINE = ["attention=flash2", "compile=false"]


def write_inputs(folder: Path, speech_seconds: float | None = None) -> dict[str, str]:
    """The user's files: a face, a two-person picture, speech tracks, a 25 fps source video
    (``speech_seconds``: also ``speech``, that long)."""
    import wave

    from PIL import Image

    from infinitetalk_dist.media import write_mp4
    from infinitetalk_dist.samples import face_image, speech_like

    folder.mkdir(parents=True, exist_ok=True)
    # 448 x 896 pictures: the 480p bucket 448x896 and the 720p bucket 704x1280 (RESULTS.md's shapes).
    face = face_image((448, 896), seed=1)
    Image.fromarray(face).save(folder / "face.png")
    two = np.concatenate([face_image((448, 448), seed=2), face_image((448, 448), seed=3)], axis=1)
    Image.fromarray(two).save(folder / "two.png")  # speakers: rows 0-448 x columns 0-448 | 448-896

    def wav(name: str, seconds: float, seed: int) -> str:
        with wave.open(str(folder / name), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes((np.clip(speech_like(seconds, seed=seed), -1, 1) * 32767).astype("<i2").tobytes())
        return str(folder / name)

    frames = [np.roll(face, 4 * k, axis=1) for k in range(100)]  # 4 s at 25 fps
    write_mp4(folder / "source.mp4", frames, fps=25)
    files = {"face": str(folder / "face.png"), "two": str(folder / "two.png"), "video": str(folder / "source.mp4"),
             "speech20": wav("speech20.wav", 20.0, 3), "speech3": wav("speech3.wav", 3.2, 4),
             "speech_a": wav("speech_a.wav", 1.6, 5), "speech_b": wav("speech_b.wav", 1.6, 6)}
    if speech_seconds:
        files["speech"] = wav(f"speech{speech_seconds:g}.wav", speech_seconds, 7)
    return files


def run_case(key: str, extra: list[str], weights: str, files: dict, out: Path) -> dict:
    name, args = CASES[key]
    tag = key + ("-baseline" if extra else "")
    mp4 = out / f"{tag}.mp4"
    cmd = [sys.executable, "-m", "infinitetalk_dist", "generate", "--weights", weights, "--device", "cuda",
           "--dtype", "bfloat16", "--no-progress", "-o", str(mp4), "timings=true",
           *[a.format(**files) for a in args], *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    (out / f"{tag}.log").write_text(" ".join(cmd) + "\n\n" + done.stdout + done.stderr)
    if done.returncode:
        print(f"case {tag} failed (rc {done.returncode}):\n{done.stderr[-3000:]}", flush=True)
        return {"case": tag, "name": name, "error": done.stderr[-500:]}
    report = json.loads(Path(f"{mp4}.timings.json").read_text())
    report.update(case=tag, name=name, process_s=round(time.perf_counter() - t0, 1),
                  path="reference (flash2, no compile)" if extra else "default")
    print(f"case {tag}: {report['wall_s']:.1f} s, {report['gpu_s_per_output_s']} GPU-s per output s", flush=True)
    return report


def table(rows: list[dict]) -> str:
    head = ("| case | path | card | size | frames | chunks x steps | load s | compile warm-up s | DiT s | VAE s "
            "| encoders s | mux s | wall s | peak GPU GiB | peak host GiB | **GPU-s per output s** |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error'][-80:]!r} |")
            continue
        s = r["stages"]
        vae = s.get("vae_encode", 0) + s.get("vae_decode", 0)
        enc = s.get("wav2vec2", 0) + s.get("t5", 0) + s.get("clip", 0)
        lines.append(f"| {r['case']} {r['name']} | {r['path']} | {r['card']} | {r['size'][0]}x{r['size'][1]} "
                     f"| {r['frames']} | {r['chunks']} x {r['steps']} | {s.get('load', 0):.1f} "
                     f"| {r['compile_warmup_s']:.1f} | {s.get('dit', 0):.1f} | {vae:.1f} | {enc:.1f} "
                     f"| {s.get('mux', 0):.1f} | {r['wall_s']:.1f} | {r['gpu_peak_gib']} | {r['host_peak_gib']} "
                     f"| **{r['gpu_s_per_output_s']}** |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cases", default="a,b,c,d")
    ap.add_argument("--baseline", nargs="?", const="all", default="",
                    help="also the reference-equivalent path (flash2, no compile): for every case, or for these (a,c)")
    ap.add_argument("--baseline-only", action="store_true", help="only the reference-equivalent path")
    ap.add_argument("--out", type=Path, default=Path("/tmp/itd-e2e"))
    args = ap.parse_args()
    files = write_inputs(args.out / "inputs")
    files["lora"] = str(next(Path(args.weights).glob("lightx2v_lora_rank*.safetensors")))
    rows = []
    for key in args.cases.split(","):
        if not args.baseline_only:
            rows.append(run_case(key, [], args.weights, files, args.out))
        if args.baseline_only or args.baseline == "all" or key in args.baseline.split(","):
            rows.append(run_case(key, BASELINE, args.weights, files, args.out))
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
