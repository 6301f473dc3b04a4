"""The official InfiniteTalk tool's inputs: ``--input_json`` in its schema.

    {"prompt": "...", "cond_video": "face.png | clip.mp4",
     "cond_audio": {"person1": "a.wav", "person2": "b.wav"}, "audio_type": "para | add",
     "bbox": {"person1": [x0, y0, x1, y1], "person2": [...]}}

Paths are relative to the JSON file. ``cond_video`` is a picture (I2V) or a video (V2V), told
apart by its extension as the official tool does. ``tts_audio`` (its text-to-speech input)
is one clear error: no TTS here. Explicit flags given with ``--input_json`` win over it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from infinitetalk_dist.errors import InputError

__all__ = ["input_json_values"]

log = logging.getLogger(__name__)
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
KNOWN = {"prompt", "cond_video", "cond_image", "cond_audio", "audio_type", "bbox", "tts_audio"}


def input_json_values(path: str | Path) -> dict[str, object]:
    """Config path -> value for the official input JSON at ``path``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--input_json {path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--input_json {path}: not a JSON file ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(f"--input_json {path}: expected an object with prompt, cond_video, cond_audio")
    if doc.get("tts_audio"):
        raise InputError(f"--input_json {path}: tts_audio (text-to-speech) is not supported here: "
                         "give the speech as cond_audio files")
    extra = sorted(set(doc) - KNOWN)
    if extra:
        log.warning("--input_json %s: ignoring %s", path, ", ".join(extra))

    def local(value, key):
        if not isinstance(value, str) or not value:
            raise InputError(f"--input_json {path}: {key} must be a file path, got {value!r}")
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else path.parent / p)

    values: dict[str, object] = {}
    if "prompt" in doc:
        values["input.prompt"] = str(doc["prompt"])
    cond = doc.get("cond_video", doc.get("cond_image"))
    if cond is not None:
        cond = local(cond, "cond_video")
        values["input.image" if Path(cond).suffix.lower() in IMAGE_EXTS else "input.video"] = cond
    audio = doc.get("cond_audio")
    if audio is not None:
        if not isinstance(audio, dict) or "person1" not in audio:
            raise InputError(f"--input_json {path}: cond_audio must be {{person1: file[, person2: file]}}")
        values["input.audio"] = local(audio["person1"], "cond_audio.person1")
        if audio.get("person2"):
            values["input.audio2"] = local(audio["person2"], "cond_audio.person2")
    if "audio_type" in doc:
        values["input.audio_mode"] = doc["audio_type"]
    if "bbox" in doc:
        values["input.bbox"] = doc["bbox"]
    return values


# The official generate_infinitetalk.py flags -> our config paths (same meaning, same units).
OFFICIAL_FLAGS: dict[str, tuple[str, type, str]] = {
    "--sample_steps": ("sampler.steps", int, "sampling steps"),
    "--sample_shift": ("sampler.shift", float, "timestep shift"),
    "--sample_text_guide_scale": ("sampler.text_scale", float, "text guidance scale"),
    "--sample_audio_guide_scale": ("sampler.audio_scale", float, "audio guidance scale"),
    "--frame_num": ("sampler.frame_num", int, "frames per chunk (4n+1)"),
    "--max_frame_num": ("sampler.max_frames", int, "stop after this many frames (the official default 1000; ours: the whole audio)"),
    "--motion_frame": ("sampler.motion_frame", int, "frames carried between chunks"),
    "--base_seed": ("seed", int, "seed (-1: random, logged)"),
    "--color_correction_strength": ("sampler.color_correction", float, "colour matching to the reference, 0..1"),
    "--teacache_thresh": ("sampler.teacache_thresh", float, "TeaCache threshold"),
    "--quant_dir": ("model.quant_file", str, "the quantised DiT file"),
}
OFFICIAL_LORA_SCALE = 1.2  # --lora_dir without --lora_scale, as the official tool (ours: --lora PATH[:1.0])
OFFICIAL_SWITCHES = {"--use_teacache": ("sampler.teacache", True), "--use_apg": ("sampler.apg", True),
                     "--t5_cpu": ("encoders", "cpu")}


def add_official_flags(parser) -> None:
    """The official tool's flags, in their own group of ``--help``."""
    g = parser.add_argument_group("official InfiniteTalk flags (same meaning)")
    for flag, (path, type_, help_) in OFFICIAL_FLAGS.items():
        g.add_argument(flag, dest=flag, type=type_, metavar="V", help=f"{help_} [{path}]")
    for flag, (path, _) in OFFICIAL_SWITCHES.items():
        g.add_argument(flag, dest=flag, action="store_true", help=f"[{path}]")
    g.add_argument("--mode", choices=["clip", "streaming"], help="clip: one chunk; streaming: the whole audio (default)")
    g.add_argument("--save_file", metavar="NAME", help="output name without extension (.mp4 added)")
    g.add_argument("--lora_dir", nargs="+", metavar="FILE", help="LoRA files (with --lora_scale, one each)")
    g.add_argument("--lora_scale", nargs="+", type=float, metavar="S", help=f"their strengths (default {OFFICIAL_LORA_SCALE} each, as the official tool)")
    g.add_argument("--ckpt_dir", metavar="DIR", help="Wan2.1-I2V-14B-480P folder (with the two below: the weights folder)")
    g.add_argument("--wav2vec_dir", metavar="DIR", help="chinese-wav2vec2-base folder")
    g.add_argument("--infinitetalk_dir", metavar="FILE", help="InfiniteTalk/single|multi/infinitetalk.safetensors")
    g.add_argument("--scene_seg", action="store_true",
                   help="cut a source video at its shots: generate runs the job as `run` does (windows at shot "
                        "cuts, silences; resumable store <output>.job), which plan/run always do")
    g.add_argument("--offload_model", metavar="BOOL", help="accepted; models already leave the GPU (encoders=offload)")
    g.add_argument("--num_persistent_param_in_dit", type=int, metavar="N",
                   help="DiT parameters kept on the GPU, the rest streamed: N // (parameters of one 14B block) "
                        "blocks [offload.dit_resident_blocks]")


def official_values(flags: dict) -> dict[str, object]:
    """Config path -> value for the official flags present in ``flags`` (argparse's dict)."""
    values: dict[str, object] = {}
    for flag, (path, _, _) in OFFICIAL_FLAGS.items():
        if flags.get(flag) is not None:
            values[path] = flags[flag]
    for flag, (path, value) in OFFICIAL_SWITCHES.items():
        if flags.get(flag):
            values[path] = value
    if flags.get("mode") == "clip":
        values["sampler.max_frames"] = values.get("sampler.frame_num", 81)
    if flags.get("save_file"):
        name = Path(flags["save_file"])
        values["output"] = str(name if name.suffix.lower() in (".mp4", ".mov", ".mkv") else f"{name}.mp4")
    if flags.get("lora_dir"):
        scales = flags.get("lora_scale") or [OFFICIAL_LORA_SCALE] * len(flags["lora_dir"])
        if len(scales) != len(flags["lora_dir"]):
            raise InputError(f"--lora_scale: {len(scales)} value(s) for {len(flags['lora_dir'])} --lora_dir file(s)")
        values["model.loras"] = [{"path": p, "strength": float(s)} for p, s in zip(flags["lora_dir"], scales)]
    if flags.get("num_persistent_param_in_dit") is not None:
        values["offload.dit_resident_blocks"] = resident_blocks(flags["num_persistent_param_in_dit"])
    dirs = {k: flags.get(k) for k in ("ckpt_dir", "wav2vec_dir", "infinitetalk_dir")}
    if any(dirs.values()):
        values.update(_weights_root(dirs))
    return values


def resident_blocks(params: int) -> int:
    """The official parameter budget in whole 14B DiT blocks (ours streams block by block)."""
    import torch

    from infinitetalk_dist.models.dit import DiTBlock, dit_14b

    if params < 0:
        raise InputError(f"--num_persistent_param_in_dit must be >= 0, got {params}")
    cfg = dit_14b()
    with torch.device("meta"):  # shapes only: no memory, no time
        per_block = sum(p.numel() for p in DiTBlock(cfg).parameters())
    return min(cfg.num_layers, params // per_block)


def _weights_root(dirs: dict) -> dict[str, object]:
    """The three official paths as our one weights folder (they must share its layout)."""
    from infinitetalk_dist.models import weights as W

    if not dirs["ckpt_dir"]:
        raise InputError("--wav2vec_dir / --infinitetalk_dir need --ckpt_dir (the Wan2.1-I2V-14B-480P folder)")
    ckpt = Path(dirs["ckpt_dir"]).resolve()
    root = ckpt.parent
    out: dict[str, object] = {"model.weights": str(root)}
    if dirs["infinitetalk_dir"]:
        it = Path(dirs["infinitetalk_dir"]).resolve()
        variant = next((v for v, rel in W.INFINITETALK_FILES.items() if root / rel == it), None)
        if variant is None:
            raise InputError(f"--infinitetalk_dir {it}: expected {root / W.INFINITETALK_FILES['single']} or "
                             f"{root / W.INFINITETALK_FILES['multi']} (one weights folder holds all three)")
        out["model.variant"] = variant
    if dirs["wav2vec_dir"] and Path(dirs["wav2vec_dir"]).resolve() != root / W.WAV2VEC_DIR:
        raise InputError(f"--wav2vec_dir {dirs['wav2vec_dir']}: expected {root / W.WAV2VEC_DIR} "
                         "(one weights folder holds all three)")
    if ckpt.name != W.WAN_DIR:
        raise InputError(f"--ckpt_dir {ckpt}: expected a folder named {W.WAN_DIR}")
    return out
