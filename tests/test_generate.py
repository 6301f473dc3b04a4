"""The one-window job end to end through the CLI (tiny preset, CPU), and its bad inputs."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.media import write_mp4
from infinitetalk_dist.samples import face_image, speech_like, write_demo_inputs
from tests.media_probe import probe

FAST = ["sampler.steps=2", "--no-progress"]
SHORT_CHUNKS = ["sampler.frame_num=17", "sampler.motion_frame=5"]  # several chunks in little time


def _wav(path: Path, samples: np.ndarray, sr: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _check_mp4(path: Path, frames: int) -> dict:
    info = probe(path, decode=True)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["frames"] == frames
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / 25 + 1e-6
    return info




def test_default_job_writes_demo_mp4(tmp_path, capsys):
    out = tmp_path / "out" / "demo.mp4"
    assert main(["generate", "-o", str(out), *FAST]) == 0
    _check_mp4(out, frames=75)  # the 3 s demo track at 25 fps
    assert "wrote" in capsys.readouterr().out


def test_bf16_vae_option_close_to_float32(tmp_path):
    """vae_dtype=bfloat16 runs the whole job with a bf16 VAE; frames stay close to float32's."""
    import av

    outs = {}
    for dtype in ("float32", "bfloat16"):
        outs[dtype] = tmp_path / f"{dtype}.mp4"
        assert main(["generate", "-o", str(outs[dtype]), *FAST, f"vae_dtype={dtype}"]) == 0
        _check_mp4(outs[dtype], frames=75)

    def frames(p):
        with av.open(str(p)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)

    a, b = frames(outs["bfloat16"]), frames(outs["float32"])
    diff = np.abs(a - b).mean()
    print(f"bf16 VAE vs float32: mean |diff| {diff:.2f} levels")
    assert 0 < diff < 12  # different, and close (noise-like tiny-model frames)


def test_teacache_option(tmp_path, caplog):
    out = tmp_path / "tea.mp4"
    with caplog.at_level("INFO"):
        assert main(["generate", "-o", str(out), "--teacache", "sampler.steps=8", "--no-progress"]) == 0
    _check_mp4(out, frames=75)
    assert "TeaCache: skipped the blocks on" in caplog.text


def test_streaming_two_speakers_and_video_source(tmp_path):
    img = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(face_image((120, 200), seed=1)).save(img)
    a1 = _wav(tmp_path / "a1.wav", speech_like(1.6, seed=1))
    a2 = _wav(tmp_path / "a2.wav", speech_like(1.2, seed=2))
    out = tmp_path / "two.mp4"
    rc = main(["generate", "--image", str(img), "--audio", str(a1), "--audio2", str(a2), "--audio-mode", "add",
               "-o", str(out), *FAST, *SHORT_CHUNKS])
    assert rc == 0
    _check_mp4(out, frames=int((1.6 + 1.2) * 25))

    # V2V from a 30 fps source video: each chunk re-anchored on the source frame.
    src = tmp_path / "src.mp4"
    frames = [np.roll(face_image((96, 96), seed=3), 2 * i, axis=1) for i in range(45)]
    write_mp4(src, frames, fps=30)
    out = tmp_path / "v2v.mp4"
    assert main(["generate", "--video", str(src), "--audio", str(a1), "-o", str(out), *FAST, *SHORT_CHUNKS]) == 0
    _check_mp4(out, frames=40)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_inputs(tmp_path_factory.mktemp("demo"), seconds=1.0)


def _bad(tmp_path, capsys, args, match):
    out = tmp_path / "out" / "bad.mp4"
    rc = main(["generate", "-o", str(out), *FAST, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err
    # Nothing written: no output, no temp file.
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_missing_files(tmp_path, capsys, demo):
    image, audio = demo
    _bad(tmp_path, capsys, ["--image", str(tmp_path / "nope.png"), "--audio", str(audio)], "nope.png")
    _bad(tmp_path, capsys, ["--image", str(image), "--audio", str(tmp_path / "nope.wav")], "nope.wav")
    _bad(tmp_path, capsys, ["--image", str(image)], "--audio")


def test_corrupt_media(tmp_path, capsys, demo):
    image, audio = demo
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    _bad(tmp_path, capsys, ["--image", str(junk), "--audio", str(audio)], "junk.png")
    junk_audio = tmp_path / "junk.wav"
    junk_audio.write_bytes(b"RIFF" + bytes(200))
    _bad(tmp_path, capsys, ["--image", str(image), "--audio", str(junk_audio)], "junk.wav")
    empty_video = tmp_path / "empty.mp4"
    empty_video.write_bytes(b"")
    _bad(tmp_path, capsys, ["--video", str(empty_video), "--audio", str(audio)], "empty.mp4")


def test_silent_or_too_short_audio(tmp_path, capsys, demo):
    image, _ = demo
    silent = _wav(tmp_path / "silent.wav", np.zeros(16000))
    _bad(tmp_path, capsys, ["--image", str(image), "--audio", str(silent)], "silent")
    blip = _wav(tmp_path / "blip.wav", speech_like(0.02))
    _bad(tmp_path, capsys, ["--image", str(image), "--audio", str(blip)], "shorter than one")


def test_extreme_aspect_ratio(tmp_path, capsys, demo):
    _, audio = demo
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((10, 400, 3), np.uint8)).save(strip)
    _bad(tmp_path, capsys, ["--image", str(strip), "--audio", str(audio)], "aspect")


def test_weights_folder_with_missing_shard(tmp_path, capsys, demo):
    from infinitetalk_dist.models.presets import tiny_preset
    from infinitetalk_dist.models.weights import dit_shards
    from tests import tiny_weights as tw

    image, audio = demo
    root = tmp_path / "weights"
    p = tiny_preset()
    tw.write_dit(root, p.dit), tw.write_vae(root, p.vae), tw.write_t5(root, p.t5)
    tw.write_clip(root, p.clip), tw.write_wav2vec2(root, p.wav2vec2)
    dit_shards(root / "Wan2.1-I2V-14B-480P")[3].unlink()
    _bad(tmp_path, capsys, ["--weights", str(root), "--image", str(image), "--audio", str(audio)], "00004-of-00007")


def test_timings_report(tmp_path):
    """timings=true: every stage of the one-window job timed, the output's GPU-s per output s."""
    import json

    out = tmp_path / "timed.mp4"
    assert main(["generate", "-o", str(out), *FAST, "timings=true"]) == 0
    report = json.loads(Path(f"{out}.timings.json").read_text())
    assert {"inputs", "load", "wav2vec2", "t5", "clip", "vae_encode", "dit", "vae_decode", "mux"} <= set(report["stages"])
    assert report["frames"] == 75 and report["output_s"] == 3.0 and report["dit_calls"] == 2  # one batched call a step
    assert abs(sum(report["stages"].values()) - report["wall_s"]) < 0.01
    assert abs(report["gpu_s_per_output_s"] - report["wall_s"] / 3.0) <= 0.006  # both rounded in the report
    assert report["attention"] == "sdpa"  # the kernel that ran (auto resolved), not the request's name
    from omegaconf import OmegaConf

    saved = OmegaConf.load(f"{out}.config.yaml")  # the resolved config beside the output
    assert saved.output == str(out) and saved.sampler.shift == 7.0 and saved.timings is True


def test_device_and_seed_errors(tmp_path, capsys, demo):
    import torch

    image, audio = demo
    inputs = ["--image", str(image), "--audio", str(audio)]
    if not torch.cuda.is_available():
        _bad(tmp_path, capsys, [*inputs, "--device", "cuda"], "sees no CUDA GPU")
    _bad(tmp_path, capsys, [*inputs, "--seed", "-2"], "seed must be >= 0 (or -1 for a random one), got -2")


def test_seed_minus_one_is_random_and_logged(tmp_path, caplog, demo):
    import logging

    image, audio = demo
    out = tmp_path / "r.mp4"
    with caplog.at_level(logging.WARNING):
        assert main(["generate", "--image", str(image), "--audio", str(audio), "--seed", "-1", "-o", str(out),
                     *FAST]) == 0
    seeds = [int(r.getMessage().split("seed=")[2].split()[0]) for r in caplog.records if "seed=-1" in r.getMessage()]
    assert len(seeds) == 1 and 0 <= seeds[0] < 2**31 and out.stat().st_size > 0


def test_official_size_names():
    from infinitetalk_dist.pipeline.request import GenerateRequest

    r = GenerateRequest(size="infinitetalk-720")
    assert r.size == r.size_table == "720"  # and so shift 11, the 720p default (the official check missed it)
    assert GenerateRequest(size="infinitetalk-480").size_table == "480"
