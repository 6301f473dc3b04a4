"""`infinitetalk-dist weights download DIR` and `weights verify DIR`: the official weights folder.

``download`` fetches only the files this project reads, from the three Hub repositories the
official README names, through huggingface_hub (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_TOKEN`` and
``HF_HUB_OFFLINE`` as everywhere; an interrupted download resumes where it stopped), into the
Hub cache, then lays DIR out as ``--weights`` expects with symbolic links into the cache (a
copy where links are not possible). The wav2vec2 weights come as ``model.safetensors`` from the
repository's ``refs/pr/1`` (the official README's second command): its main branch has only a
pickled ``.bin``. With ``--quant`` the Wan DiT shards are not fetched: the official
quantised file replaces them and the InfiniteTalk file.

``verify`` reads no tensor: every expected file is there and complete (safetensors headers and
their data size, the ``.pth`` zip directories, JSON files parse), the tokenizer folder is there;
a sub-folder given instead of the root gets a hint.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.models import weights as W
from infinitetalk_dist.models.checkpoint import CheckpointError

__all__ = ["Download", "download", "verify", "files_of"]


@dataclass(frozen=True)
class Download:
    repo: str
    folder: str  # under DIR
    patterns: tuple[str, ...]
    revision: str = "main"


def files_of(variant: str = "single", quant: str | None = None) -> list[Download]:
    """What DIR needs from the Hub for ``variant`` (single | multi | both) and ``quant``."""
    variants = ("single", "multi") if variant == "both" else (variant,)
    wan = ["config.json", W.VAE_FILE, W.T5_FILE, W.CLIP_FILE, f"{W.T5_TOKENIZER_DIR}/*"]
    if not quant:
        wan += ["diffusion_pytorch_model-*.safetensors", W.SHARD_INDEX]
    it_dir = W.INFINITETALK_FILES["single"].split("/")[0]
    if quant:
        names = [Path(W.WeightsLayout(Path("."), v).quant_file(quant)).relative_to(it_dir) for v in variants]
        it = [str(p) for n in names for p in (n, W.quant_map_path(n))]
    else:
        it = [str(Path(W.INFINITETALK_FILES[v]).relative_to(it_dir)) for v in variants]
    return [Download("Wan-AI/Wan2.1-I2V-14B-480P", W.WAN_DIR, tuple(wan)),
            Download("TencentGameMate/chinese-wav2vec2-base", W.WAV2VEC_DIR, ("config.json", "preprocessor_config.json")),
            Download("TencentGameMate/chinese-wav2vec2-base", W.WAV2VEC_DIR, ("model.safetensors",), "refs/pr/1"),
            Download("MeiGen-AI/InfiniteTalk", it_dir, tuple(it))]


def download(root: str | Path, variant: str = "single", quant: str | None = None, log=print) -> Path:
    """Fetch :func:`files_of` into the Hub cache and lay ``root`` out over it; returns ``root``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    root = Path(root)
    for d in files_of(variant, quant):
        log(f"{d.repo} ({d.revision}): {', '.join(d.patterns)}")
        try:
            snap = Path(snapshot_download(d.repo, revision=d.revision, allow_patterns=list(d.patterns)))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            raise InputError(f"weights download {d.repo}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
        # An offline run returns the cached snapshot whole: keep only what was asked for.
        names = [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]
        found = [snap / n for n in filter_repo_objects(names, allow_patterns=list(d.patterns))]
        for src in found:
            _link(src, root / d.folder / src.relative_to(snap))
        if not found:
            raise InputError(f"weights download {d.repo}: none of {', '.join(d.patterns)} in revision {d.revision}")
    verify(root, variant, quant)
    return root


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(src.resolve(), tmp)
    except OSError:  # no symlinks here (some filesystems, Windows without the right): copy
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)  # a rerun replaces what an earlier one linked


def verify(root: str | Path, variant: str = "single", quant: str | None = None) -> list[str]:
    """Raise one :class:`InputError` naming every absent or broken file; returns the files checked."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    hint = _subfolder_hint(root)
    if hint:
        raise InputError(hint)
    variants = ("single", "multi") if variant == "both" else (variant,)
    problems, checked = [], []
    for v in variants:
        lay = W.WeightsLayout(root, v)
        need = lay.required(lay.quant_file(quant) if quant else None)
        if not quant:
            try:  # from the index where there is one (every shard it names), else the files found
                need += [lay.wan / W.SHARD_INDEX] * (lay.wan / W.SHARD_INDEX).is_file() + W.dit_shards(lay.wan)
            except CheckpointError as e:
                problems.append(str(e))
        weights = lay.wav2vec2 / "model.safetensors"
        need.append(weights if weights.exists() or not (lay.wav2vec2 / "pytorch_model.bin").exists()
                    else lay.wav2vec2 / "pytorch_model.bin")
        for path in dict.fromkeys(need):
            if path not in checked:
                checked.append(path)
                problem = _check_file(path)
                if problem:
                    problems.append(f"{path}: {problem}")
        tok = lay.t5_tokenizer
        if not any((tok / n).is_file() for n in ("tokenizer.json", "spiece.model")):
            problems.append(f"{tok}: no tokenizer (tokenizer.json or spiece.model)")
    if problems:
        raise InputError(f"weights folder {root}: {len(problems)} problem(s): " + "; ".join(problems))
    return [str(p) for p in checked]


def _subfolder_hint(root: Path) -> str | None:
    names = {W.WAN_DIR, W.WAV2VEC_DIR, W.INFINITETALK_FILES["single"].split("/")[0], "single", "multi"}
    if root.name in names and not (root / W.WAN_DIR).exists():
        top = root.parent.parent if root.name in ("single", "multi") else root.parent
        return f"{root} is a sub-folder of the weights folder: pass {top} (it holds {W.WAN_DIR}/, {W.WAV2VEC_DIR}/, InfiniteTalk/)"
    return None


def _check_file(path: Path) -> str | None:
    """Why ``path`` is not a complete file of its kind (None: it is)."""
    if not path.is_file():
        return "missing" if not path.is_symlink() else "a broken link (was the Hub cache removed?)"
    size = path.stat().st_size
    if size == 0:
        return "empty"
    try:
        if path.suffix == ".safetensors":
            with path.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > size - 8:
                    return "truncated (header longer than the file)"
                header = json.loads(fh.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                return f"truncated ({size} bytes, the header needs {8 + n + end})"
        elif path.suffix == ".pth":
            with zipfile.ZipFile(path) as z:  # torch.save's zip: a truncated file has no directory
                z.infolist()
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except (struct.error, ValueError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None
