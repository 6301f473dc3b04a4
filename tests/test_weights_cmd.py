"""`weights download` / `weights verify` offline: a Hub cache filled here in huggingface_hub's
layout (the three official repositories, wav2vec2's safetensors on refs/pr/1, files the command
must not take), HF_HUB_OFFLINE=1; the folder it lays out renders through --weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infinitetalk_dist.launch.weights_cmd import files_of, verify
from infinitetalk_dist.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _snapshot(cache: Path, repo: str, revision: str, files: dict[str, Path | bytes]) -> None:
    """One revision of ``repo`` in the Hub cache: refs/<revision> -> a commit, snapshots/<commit>/files."""
    base = cache / f"models--{repo.replace('/', '--')}"
    commit = f"{abs(hash((repo, revision))):040x}"[:40]
    (base / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
    (base / "refs" / revision).write_text(commit)
    for name, src in files.items():
        dst = base / "snapshots" / commit / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src) if isinstance(src, bytes) else shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hub cache holding the tiny preset's official-layout files."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO / "benchmarks"))
    from make_weights import make_weights

    tmp = tmp_path_factory.mktemp("hub")
    src = tmp / "src"
    make_weights(src, preset="tiny", device="cpu", lora_rank=0)
    cache = tmp / "cache"
    wan = src / "Wan2.1-I2V-14B-480P"
    _snapshot(cache, "Wan-AI/Wan2.1-I2V-14B-480P", "main",
              {**{p.relative_to(wan).as_posix(): p for p in wan.rglob("*") if p.is_file()},
               "examples/i2v_input.JPG": b"not for us", "xlm-roberta-large/tokenizer.json": b"{}"})
    w2v = src / "chinese-wav2vec2-base"
    _snapshot(cache, "TencentGameMate/chinese-wav2vec2-base", "main",
              {n: w2v / n for n in ("config.json", "preprocessor_config.json", "pytorch_model.bin")})
    state = torch.load(w2v / "pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
    _snapshot(cache, "TencentGameMate/chinese-wav2vec2-base", "refs/pr/1", {"model.safetensors": tmp / "model.safetensors"})
    _snapshot(cache, "MeiGen-AI/InfiniteTalk", "main",
              {f"{v}/infinitetalk.safetensors": src / f"InfiniteTalk/{v}/infinitetalk.safetensors" for v in ("single", "multi")})
    return cache


def _cli(cache: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "infinitetalk_dist", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_download_lays_out_the_folder_and_it_renders(hub, tmp_path):
    root = tmp_path / "weights"
    done = _cli(hub, "weights", "download", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"use --weights {root}" in done.stdout
    wan = root / "Wan2.1-I2V-14B-480P"
    assert (wan / "Wan2.1_VAE.pth").is_symlink() and (root / "chinese-wav2vec2-base/model.safetensors").exists()
    assert not (wan / "examples").exists() and not (wan / "xlm-roberta-large").exists()  # only what we read
    assert not (root / "chinese-wav2vec2-base/pytorch_model.bin").exists()  # the safetensors, not the pickle
    assert (root / "InfiniteTalk/single/infinitetalk.safetensors").exists()
    assert not (root / "InfiniteTalk/multi").exists()  # --variant single (the default)
    again = _cli(hub, "weights", "download", str(root), "--variant", "both", cwd=tmp_path)  # a rerun completes it
    assert again.returncode == 0 and (root / "InfiniteTalk/multi/infinitetalk.safetensors").exists()
    assert _cli(hub, "weights", "verify", str(root), cwd=tmp_path).returncode == 0
    from infinitetalk_dist.samples import write_demo_inputs

    image, audio = write_demo_inputs(tmp_path / "in", seconds=0.5)
    out = tmp_path / "talk.mp4"
    render = _cli(hub, "generate", "--weights", str(root), "--preset", "tiny", "--size", "tiny", "--no-progress",
                  "--image", str(image), "--audio", str(audio),
                  "sampler.steps=1", "sampler.frame_num=9", "sampler.motion_frame=1", "-o", str(out), cwd=tmp_path)
    assert render.returncode == 0, render.stderr
    assert out.stat().st_size > 0


def test_download_errors_offline(hub, tmp_path):
    done = _cli(hub, "weights", "download", str(tmp_path / "w"), "--quant", "int8", cwd=tmp_path)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: weights download MeiGen-AI/InfiniteTalk")
    assert "quant_models/infinitetalk_single_int8.safetensors" in done.stderr
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    done = _cli(empty, "weights", "download", str(tmp_path / "w2"), cwd=tmp_path)
    assert done.returncode == 1 and "error: weights download Wan-AI/Wan2.1-I2V-14B-480P" in done.stderr
    assert "Traceback" not in done.stderr


def test_verify_names_every_problem(hub, tmp_path):
    root = tmp_path / "weights"
    assert _cli(hub, "weights", "download", str(root), cwd=tmp_path).returncode == 0
    for p in root.rglob("*"):  # real files, so that they can be broken here
        if p.is_symlink():
            target = p.resolve()
            p.unlink()
            shutil.copyfile(target, p)
    assert len(verify(root)) >= 10
    wan = root / "Wan2.1-I2V-14B-480P"
    shard = sorted(wan.glob("diffusion_pytorch_model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])  # an interrupted download
    vae = wan / "Wan2.1_VAE.pth"
    vae.write_bytes(vae.read_bytes()[:1000])
    (wan / "google/umt5-xxl/tokenizer.json").unlink()
    (root / "InfiniteTalk/single/infinitetalk.safetensors").unlink()
    with pytest.raises(InputError) as e:
        verify(root)
    msg = str(e.value)
    assert "4 problem(s)" in msg and "truncated" in msg and "Wan2.1_VAE.pth: unreadable" in msg
    assert "no tokenizer" in msg and "infinitetalk.safetensors: missing" in msg
    with pytest.raises(InputError, match="is a sub-folder of the weights folder: pass"):
        verify(wan)
    done = _cli(hub, "weights", "verify", str(root / "InfiniteTalk" / "single"), cwd=tmp_path)
    assert done.returncode == 1 and f"pass {root}" in done.stderr


def test_files_of_each_choice():
    plain = {d.repo: d.patterns for d in files_of()}
    assert "diffusion_pytorch_model-*.safetensors" in plain["Wan-AI/Wan2.1-I2V-14B-480P"]
    assert plain["MeiGen-AI/InfiniteTalk"] == ("single/infinitetalk.safetensors",)
    quant = {d.repo: d.patterns for d in files_of("multi", "fp8")}
    assert "diffusion_pytorch_model-*.safetensors" not in quant["Wan-AI/Wan2.1-I2V-14B-480P"]  # replaced
    assert quant["MeiGen-AI/InfiniteTalk"] == ("quant_models/infinitetalk_multi_fp8.safetensors",
                                               "quant_models/infinitetalk_multi_fp8.json")
    assert [d.revision for d in files_of()].count("refs/pr/1") == 1
