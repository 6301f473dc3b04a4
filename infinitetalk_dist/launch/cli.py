"""``infinitetalk-dist``: one command line for every job; every option is a Hydra config path.

    infinitetalk-dist generate [flags] [key=value ...]   one window: audio + picture/video -> MP4
    infinitetalk-dist smoke [key=value ...]              one forward of every model
    infinitetalk-dist plan [flags] [key=value ...]       a long job's window plan (JSON + timeline PNG)
    infinitetalk-dist run [flags] [key=value ...]        a long job: every window, resumable, stitched
                                                         (farm=ray: replicas on a Ray cluster)
    infinitetalk-dist k8s render [flags] [key=value ...] KubeRay/Kubernetes manifests for the job

Flags are shorthands for config paths (the schema in ``launch/config.py``; ``--steps 8`` is
``sampler.steps=8``); any path can also be set as ``key=value`` (Hydra override syntax), and
``--cfg`` prints the composed config. The composed config is checked and turned into the typed
:class:`~.config.Config` here; the commands get that object.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from omegaconf import DictConfig, OmegaConf, open_dict

from infinitetalk_dist.errors import InfiniteTalkError, InputError

from .config import Config, compose, literal_strings, to_config
from .official import add_official_flags, input_json_values, official_values

log = logging.getLogger(__name__)

# flag -> (config path, type, help). Values are set on the composed config after overrides.
GENERATE_FLAGS = {
    "--image": ("input.image", str, "reference picture (I2V)"),
    "--video": ("input.video", str, "source video (V2V: every chunk re-anchored on its frame)"),
    "--audio": ("input.audio", str, "speech track (wav, flac, mp3, m4a, or a video's audio)"),
    "--audio2": ("input.audio2", str, "second speaker's track"),
    "--audio-mode": ("input.audio_mode", str, "two speakers: para (together) or add (in turn)"),
    "--prompt": ("input.prompt", str, "text prompt"),
    "--i2v-motion": ("input.i2v_motion", str, "I2V: zoom, pan or none: a slow virtual camera over the picture, so long "
                     "I2V chunks are anchored on a moving view (the official tip: dub such a video as V2V)"),
    "--negative-prompt": ("input.negative_prompt", str, "negative prompt (default: Wan's)"),
    "--output": ("output", str, "output MP4 (written atomically)"),
    "--weights": ("model.weights", str, "official weights folder (selects the 14b model)"),
    "--device": ("device", str, "cpu, cuda or cuda:N"),
    "--dtype": ("dtype", str, "float32 or bfloat16"),
    "--seed": ("seed", int, "seed of all noise"),
    "--size": ("size", str, "bucket table: auto, tiny, 480 or 720"),
    "--steps": ("sampler.steps", int, "sampling steps"),
    "--shift": ("sampler.shift", float, "timestep shift (default 7 at 480p, 11 at 720p)"),
    "--text-scale": ("sampler.text_scale", float, "text guidance scale (1 = two passes)"),
    "--audio-scale": ("sampler.audio_scale", float, "audio guidance scale"),
    "--motion-frames": ("sampler.motion_frame", int, "frames carried between chunks"),
    "--max-frames": ("sampler.max_frames", int, "stop after this many frames (default: the whole audio; the official tool: 1000)"),
    "--color-correction": ("sampler.color_correction", float, "0..1 colour matching to the reference (default 1.0, as the official tool)"),
    "--teacache-thresh": ("sampler.teacache_thresh", float, "TeaCache threshold (higher skips more)"),
    "--attention": ("attention", str, "auto (fa3 on Hopper with fa3-fwd, else sdpa), sdpa, cudnn, flash2, fa3, fa3_fp8, ..."),
    "--quant": ("model.quant", str, "int8 or fp8: the official quantised DiT from the weights folder's quant_models/"),
    "--quant-file": ("model.quant_file", str, "a quantised DiT file (.safetensors with its .json map; the official --quant_dir)"),
    "--dit-resident-blocks": ("offload.dit_resident_blocks", int,
                              "memory: DiT blocks (of 40) kept on the GPU, the rest streamed from host memory (0: all)"),
    "--encoders": ("encoders", str, "memory: offload (default; T5, CLIP, wav2vec2 on the GPU only for their calls), gpu or cpu"),
    "--vae-tiling": ("vae_tiling", str, "memory: auto (tiles only after a CUDA out-of-memory; not exact), on or off"),
    "--face-boxes": ("input.face_boxes", str, "conform: JSON list of {start_s, box} per shot"),
    "--mix": ("conform.mix", str, "conform: the final mix the output carries (layout and rate kept)"),
    "--codec": ("conform.codec", str, "conform: h264, hevc, prores (.mov) or ffv1 (.mkv)"),
    "--crf": ("conform.crf", int, "conform: h264/hevc quality"),
}


def smoke(config: Config) -> None:
    """Run each model once and print shapes and timings."""
    import torch

    from infinitetalk_dist.pipeline.runtime import build_models
    from infinitetalk_dist.timeline import SAMPLES_PER_FRAME

    device = torch.device(config.device)
    t0 = time.perf_counter()
    models = build_models(config)
    print(f"built preset {models.preset.name} on {device} ({config.dtype}) in {time.perf_counter() - t0:.2f} s")
    s = config.smoke
    height, width = s.size
    g = torch.Generator(device="cpu").manual_seed(config.seed)
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

    dtype = models.dit_dtype
    with torch.inference_mode():
        wave = torch.randn(s.frames * SAMPLES_PER_FRAME + SAMPLES_PER_FRAME, generator=g)
        audio = timed("wav2vec2", models.wav2vec2, wave[None].to(device, dtype), s.frames)
        ids = torch.randint(2, models.preset.t5.vocab_size, (1, 12), generator=g).to(device)
        context = timed("umt5", models.t5, ids, torch.ones_like(ids))
        image = (torch.rand(1, 3, 1, height, width, generator=g) * 2 - 1).to(device)
        clip_fea = timed("clip", models.clip, image.to(next(models.clip.parameters()).dtype))
        video = torch.cat([image, torch.zeros(1, 3, s.frames - 1, height, width, device=device)], 2)
        latent = timed("vae encode", models.vae.encode, video.to(next(models.vae.parameters()).dtype))
        mask = torch.zeros(1, 4, *latent.shape[2:], device=device, dtype=latent.dtype)
        mask[:, :, 0] = 1
        y = torch.cat([mask, latent], 1)
        # Each video frame's audio window of +-2 frames (clamped), for every speaker.
        idx = (torch.arange(s.frames)[:, None] + torch.arange(-2, 3)[None]).clamp(0, s.frames - 1).to(device)
        windows = audio[idx][None, None].expand(1, s.speakers, *audio[idx].shape)
        masks = torch.zeros(3, *latent.shape[3:], device=device)
        masks[0, :, : latent.shape[-1] // 2] = 1
        masks[1, :, latent.shape[-1] // 2:] = 1
        noise = torch.randn(latent.shape, generator=g).to(device, dtype)
        t = torch.full((1,), 999.0, device=device)
        out = timed("dit forward", models.dit, noise, t, context.to(dtype), clip_fea.to(dtype), y.to(dtype),
                    windows.to(dtype), masks if s.speakers == 2 else None)
        frames = timed("vae decode", models.vae.decode, out.to(next(models.vae.parameters()).dtype))
    if not torch.isfinite(frames).all():
        raise ValueError("non-finite output")
    print(f"{'model':<12} {'output shape':<28} {'seconds':>8}")
    for name, shape, sec in rows:
        print(f"{name:<12} {str(list(shape)):<28} {sec:8.3f}")


def _wrote(info, t0: float, suffix: str = "") -> None:
    print(f"wrote {info.path} ({info.frames} frames, {info.duration:.2f} s, {info.width}x{info.height}, "
          f"audio {'yes' if info.audio else 'no'}) in {time.perf_counter() - t0:.1f} s{suffix}")


def _save_config(config: Config) -> None:
    """``<output>.config.yaml``: the resolved config of a finished render, beside its output
    (rank 0 only under torchrun; written whole or not at all)."""
    import os

    from infinitetalk_dist.media.atomic import atomic_write

    if os.environ.get("RANK", "0") != "0":
        return
    with atomic_write(f"{config.output}.config.yaml") as tmp:
        OmegaConf.save(_literal_config(config), tmp)


def _literal_config(config: Config) -> DictConfig:
    """``config`` as a DictConfig whose user strings stay literal when it is loaded again."""
    node = OmegaConf.structured(config)
    literal_strings(node)
    return node


def _cpu_threads(config: Config) -> None:
    """The process's torch threads for a CPU render (config.cpu_threads)."""
    import torch

    threads = config.cpu_threads or (1 if config.model.preset == "tiny" else None)
    if torch.device(config.device).type == "cpu" and threads:
        torch.set_num_threads(threads)


def generate(config: Config) -> None:
    from infinitetalk_dist.pipeline.conform.run import generate_or_conform as run

    _cpu_threads(config)
    t0 = time.perf_counter()
    info = run(config)
    _save_config(config)
    _wrote(info, t0)


def plan(config: Config) -> None:
    """Print the job's window plan (JSON) and draw its timeline next to the output."""
    from pathlib import Path

    from infinitetalk_dist.farm.job import plan_sources
    from infinitetalk_dist.farm.plan import draw_plan
    from infinitetalk_dist.pipeline.generate import read_sources

    output, sources = read_sources(config)
    job_plan = plan_sources(config, config.farm, sources)
    output.parent.mkdir(parents=True, exist_ok=True)
    png = draw_plan(job_plan, sources.audio.mix, Path(f"{output}.plan.png"))
    print(job_plan.to_json(), end="")
    print(job_plan.summary(), file=sys.stderr)
    print(f"timeline: {png}", file=sys.stderr)


def run(config: Config) -> None:
    """The whole job: plan, render the windows not yet stored (farm.backend), stitch."""
    from infinitetalk_dist.farm.job import run_job

    t0 = time.perf_counter()
    info = run_job(config, config.farm)
    _save_config(config)
    _wrote(info, t0)


def k8s(config: Config) -> None:
    """Render the job's Kubernetes manifests (KubeRay RayCluster/RayJob, plain Job, PodMonitor,
    Grafana dashboard) into ``k8s.out``; with ``k8s.titles``, one RayJob per CSV row."""
    from pathlib import Path

    from .k8s import job_manifests, render, title_configs, write_manifests

    cfg = _literal_config(config)  # user strings stay text through the rendering
    out = Path(config.k8s.out or Path(config.output).parent / "k8s")
    defaults = compose([])
    docs = render(cfg, defaults, jobs=not config.k8s.titles)
    if config.k8s.titles:
        for title in title_configs(cfg, config.k8s.titles):
            docs.update(job_manifests(title, defaults))
    for path in write_manifests(docs, out):
        print(path)


COMMANDS = {
    "generate": (generate, "render one window: audio + picture/video -> MP4 (tiny preset and demo inputs by default)"),
    "plan": (plan, "print a long job's window plan (JSON) and write its timeline <output>.plan.png"),
    "run": (run, "render a long job window by window (resumable job store <output>.job), then stitch"),
    "smoke": (smoke, "one forward of every model of the preset on seeded random inputs"),
    "k8s": (k8s, "k8s render: KubeRay/Kubernetes manifests, PodMonitor and Grafana dashboard for this job"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infinitetalk-dist",
        usage="infinitetalk-dist COMMAND [flags] [key=value ...]",
        description="InfiniteTalk talking-video generation as a distributed render farm.",
        epilog="Every option is a config path (the schema: infinitetalk_dist/launch/config.py; --cfg prints "
               "them); set any of them as key=value (e.g. sampler=lightx2v 'model.loras=[{path: lora.safetensors, strength: 1.0}]').",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, epilog=_epilog(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bar")
        if name == "k8s":
            p.add_argument("action", choices=["render"], help="render: write the manifests into k8s.out")
        if name in ("generate", "plan", "run", "k8s"):
            p.add_argument("--preset", choices=["tiny", "14b"], help="model preset (default tiny; --weights implies 14b "
                           "unless --preset tiny: a weights folder at the tiny preset's shapes)")
            p.add_argument("--sampler", choices=["default", "lightx2v", "fusionx"],
                           help="sampler preset: 40-step default, 4-step lightx2v, 8-step FusionX")
            p.add_argument("--lora", action="append", metavar="PATH[:STRENGTH]",
                           help="merge a LoRA (repeatable; strength 1.0 unless given; the official --lora_scale default is 1.2)")
            p.add_argument("--apg", action="store_true", help="adaptive projected guidance")
            p.add_argument("--teacache", action="store_true", help="TeaCache: skip DiT blocks on similar steps")
            p.add_argument("--bbox", nargs=8, type=float, metavar="N",
                           help="two speakers: x0 y0 x1 y1 of person 1 then of person 2 (x = rows)")
            p.add_argument("--conform", action="store_true",
                           help="V2V: re-render only the speaker's face at the source's size, rate and audio")
            p.add_argument("--face-box", nargs=4, type=float, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
                           help="conform: the speaker's box in source pixels [input.face_box]")
            p.add_argument("--keep-tracks", action="store_true", help="conform: also carry the source's audio tracks")
            p.add_argument("--input_json", "--input-json", dest="input_json", metavar="FILE",
                           help="the official tool's input JSON (prompt, cond_video, cond_audio, audio_type, bbox); "
                                "flags given too win")
            p.add_argument("-o", dest="--output", metavar="OUT", help="output file (same as --output)")
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
            for flag, (path, type_, help_) in GENERATE_FLAGS.items():
                p.add_argument(flag, dest=flag, type=type_, metavar=path.split(".")[-1].upper(),
                               help=f"{help_} [{path}]")
            add_official_flags(p)
    _weights_parser(sub)
    return parser


def _epilog(command: str) -> str:
    """The config sections a command reads besides generate's flags, as key=value entries."""
    from infinitetalk_dist.farm.options import FarmOptions

    from .config import K8sOptions
    from .helptext import config_help

    sections = {"plan": [(FarmOptions, "farm")], "run": [(FarmOptions, "farm")],
                "k8s": [(K8sOptions, "k8s"), (FarmOptions, "farm")]}.get(command, [])
    parts = [f"{prefix} options (key=value):\n{config_help(cls, prefix)}" for cls, prefix in sections]
    return "\n\n".join([*parts, "key=value overrides set any config path; --cfg shows them all."])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("infinitetalk-dist")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


# The step-distilled sampler presets and the LoRA each is made for.
DISTILLED = {"lightx2v": "lightx2v (Wan2.1 I2V step-distill)", "fusionx": "FusionX"}


def _weights_parser(sub) -> None:
    w = sub.add_parser("weights", help="download or verify the official weights folder (huggingface_hub)",
                       description="The official weights folder that --weights reads: download it from the Hub "
                                   "(only the files this project reads; resumable; HF_HOME / HF_TOKEN honoured) "
                                   "or verify one.")
    actions = w.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_ in (("download", "fetch the files into the Hub cache and lay DIR out with links to them"),
                        ("verify", "check that DIR is complete (sizes, safetensors headers, the tokenizer)")):
        a = actions.add_parser(name, help=help_, description=help_)
        a.add_argument("dir", metavar="DIR", help="the weights folder (pass it to --weights)")
        a.add_argument("--variant", choices=["single", "multi", "both"], default="single",
                       help="InfiniteTalk weights: single (one speaker), multi (two), both")
        a.add_argument("--quant", choices=["int8", "fp8"],
                       help="the official quantised DiT instead of the Wan DiT shards (the bulk of the download)")


def _weights(args: argparse.Namespace) -> int:
    from .weights_cmd import download, verify

    try:
        if args.action == "download":
            root = download(args.dir, args.variant, args.quant, log=lambda m: print(m, file=sys.stderr))
            print(f"weights folder ready: {root} (use --weights {root})")
        else:
            checked = verify(args.dir, args.variant, args.quant)
            print(f"{args.dir}: complete ({len(checked)} files checked)")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _apply_flags(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Group choices become Hydra overrides; plain flags become (path -> value) updates."""
    groups, values = [], {}
    flags = vars(args)
    if flags.get("preset") == "14b" or ((flags.get("--weights") or flags.get("ckpt_dir"))
                                        and flags.get("preset") != "tiny"):
        groups.append("model=14b")  # --weights --preset tiny: a folder written at the tiny shapes
    if flags.get("sampler"):
        groups.append(f"sampler={flags['sampler']}")
    if flags.get("input_json"):
        values.update(input_json_values(flags["input_json"]))
    values.update(official_values(flags))  # ours, given too, win (set below)
    for flag, (path, _, _) in GENERATE_FLAGS.items():
        if flags.get(flag) is not None:
            values[path] = flags[flag]
    if flags.get("lora"):
        loras = []
        for spec in flags["lora"]:
            path, _, strength = spec.rpartition(":") if spec.rpartition(":")[2].replace(".", "", 1).isdigit() else (spec, "", "1")
            loras.append({"path": path, "strength": float(strength)})
        values["model.loras"] = loras
    if flags.get("apg"):
        values["sampler.apg"] = True
    if flags.get("teacache"):
        values["sampler.teacache"] = True
    if flags.get("bbox"):
        b = flags["bbox"]
        values["input.bbox"] = {"person1": b[:4], "person2": b[4:]}
    if flags.get("no_progress"):
        values["progress"] = False
    if flags.get("conform"):
        values["conform.enabled"] = True
    if flags.get("face_box"):
        values["input.face_box"] = list(flags["face_box"])
    if flags.get("keep_tracks"):
        values["conform.keep_tracks"] = True
    return groups, values


def configure(args: argparse.Namespace) -> DictConfig:
    """The composed config of parsed arguments: group flags and ``key=value`` overrides composed,
    then the plain flags' values set on it."""
    groups, values = _apply_flags(args)
    given = {o.lstrip("+~").split("=", 1)[0]: o for o in args.overrides}
    if getattr(args, "quiet", False) and "progress" not in given:  # -q: no bar either, unless asked for
        values["progress"] = False
    twice = [f"{path} ({given[path]} and a flag)" for path in values if path in given]
    if twice:  # a flag silently beating the key=value the user also wrote
        raise InputError(f"set twice: {', '.join(twice)}; keep one")
    cfg = compose(groups + args.overrides)
    with open_dict(cfg):
        for path, value in values.items():
            # A list (--lora's LoraSpec list) is merged so that its elements are validated and
            # converted by the schema; a merged list replaces the old one whole.
            OmegaConf.update(cfg, path, value, merge=isinstance(value, list))
        literal_strings(cfg)  # user strings are data: no ${...} interpolation
    distilled = [g.split("=", 1)[1] for g in groups + args.overrides if g.split("=", 1)[0] == "sampler"]
    quant_lora = "_lora" in str(cfg.model.get("quant_file") or "")
    if distilled and distilled[-1] in DISTILLED and cfg.model.weights and not cfg.model.loras and not quant_lora:
        log.warning("sampler=%s is the %d-step preset of the %s LoRA, and no LoRA is given (--lora FILE): "
                    "the real model renders unfinished frames in %d steps", distilled[-1], cfg.sampler.steps,
                    DISTILLED[distilled[-1]], cfg.sampler.steps)
    return cfg


def main(argv: list[str] | None = None, commands: dict | None = None) -> int:
    """Parse, compose the config and run a command (``commands`` overrides the runners,
    e.g. the torchrun entry's replica-wide ``generate``)."""
    runners = {name: fn for name, (fn, _) in COMMANDS.items()} | (commands or {})
    parser = _parser()
    # Flags and key=value overrides may come in any order: overrides are the leftovers.
    args, overrides = parser.parse_known_args(argv)
    bad = [a for a in overrides if a.startswith("-") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides are key=value)")
    args.overrides = overrides
    if args.command == "weights":
        if overrides:
            parser.error(f"weights takes no config overrides: {' '.join(overrides)}")
        return _weights(args)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    try:
        cfg = configure(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # Hydra/OmegaConf override errors: one line, no traceback
        print("error: " + "; ".join(line.strip() for line in str(e).splitlines() if line.strip()), file=sys.stderr)
        return 2
    try:
        config = to_config(cfg)
        if args.cfg:  # with the derived defaults resolved (shift, size table, weights variant)
            print(OmegaConf.to_yaml(_literal_config(config)))
            return 0
        command = args.command
        if command == "generate" and getattr(args, "scene_seg", False):  # the official --scene_seg
            log.info("--scene_seg: rendering as `run` (windows cut at the source's shots, then stitched)")
            command = "run"
        runners[command](config)
    except (InfiniteTalkError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
