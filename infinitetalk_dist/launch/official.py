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
