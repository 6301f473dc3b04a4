"""The official tool's --input_json (its example files' schema, written here: picture and video,
one and two speakers) through `generate` on the tiny preset; paths relative to the JSON; TTS
and broken files are one error line."""

from __future__ import annotations

import json

import pytest

from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.media import write_mp4
from infinitetalk_dist.samples import face_image, write_demo_inputs

FAST = ["sampler.steps=1", "sampler.frame_num=17", "sampler.motion_frame=5", "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("official")
    image, audio = write_demo_inputs(d / "examples", seconds=1.0)
    _, audio2 = write_demo_inputs(d / "examples2", seconds=1.0)
    write_mp4(d / "examples" / "clip.mp4", [face_image((64, 64), seed=k % 3) for k in range(30)], fps=25)
    (d / "examples" / "person2.wav").write_bytes(audio2.read_bytes())
    return d


def _write(folder, name, doc):
    p = folder / "examples" / name
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize("doc", [
    {"prompt": "A woman is talking.", "cond_video": "face.png", "cond_audio": {"person1": "speech.wav"}},
    {"prompt": "A man is talking.", "cond_video": "clip.mp4", "cond_audio": {"person1": "speech.wav"}},
    {"prompt": "Two people talk.", "cond_video": "face.png", "audio_type": "add",
     "cond_audio": {"person1": "speech.wav", "person2": "person2.wav"},
     "bbox": {"person1": [0, 0, 32, 64], "person2": [32, 0, 64, 64]}},
], ids=["image", "video", "two-speakers"])
def test_official_input_json_renders(folder, tmp_path, doc, capsys):
    spec = _write(folder, "example.json", doc)
    out = tmp_path / "res.mp4"
    assert main(["generate", "--input_json", str(spec), "-o", str(out), *FAST]) == 0
    assert out.stat().st_size > 0
    assert main(["generate", "--input_json", str(spec), "--cfg"]) == 0
    cfg = capsys.readouterr().out
    assert str(folder / "examples") in cfg and doc["prompt"] in cfg  # paths made relative to the JSON


def test_input_json_errors(folder, tmp_path, capsys):
    cases = [
        (_write(folder, "tts.json", {"prompt": "x", "cond_video": "face.png", "tts_audio": {"text": "hi"}}),
         "tts_audio (text-to-speech) is not supported"),
        (folder / "examples" / "missing.json", "file not found"),
        (_write(folder, "bad.json", {"cond_audio": "speech.wav"}), "cond_audio must be {person1"),
    ]
    (folder / "examples" / "broken.json").write_text("{not json")
    cases.append((folder / "examples" / "broken.json", "not a JSON file"))
    for spec, message in cases:
        assert main(["generate", "--input_json", str(spec), "-o", str(tmp_path / "x.mp4"), *FAST]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.mp4").exists()


def test_the_official_command_line(folder, tmp_path, capsys):
    """The issue's command: the official flags with their meaning, --save_file NAME -> NAME.mp4,
    the three official folders read as one weights folder (a tiny one in the official layout)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from make_weights import make_weights

    root = tmp_path / "weights"
    make_weights(root, preset="tiny", device="cpu", lora_rank=2)
    spec = _write(folder, "single_example_image.json", {"prompt": "A woman is talking.", "cond_video": "face.png",
                                                        "cond_audio": {"person1": "speech.wav"}})
    official = ["--ckpt_dir", str(root / "Wan2.1-I2V-14B-480P"), "--wav2vec_dir", str(root / "chinese-wav2vec2-base"),
                "--infinitetalk_dir", str(root / "InfiniteTalk/single/infinitetalk.safetensors"),
                "--input_json", str(spec), "--sample_steps", "1", "--mode", "streaming", "--motion_frame", "5",
                "--frame_num", "17", "--sample_text_guide_scale", "1.0", "--base_seed", "7",
                "--lora_dir", str(root / "lightx2v_lora_rank2.safetensors"), "--lora_scale", "1.0",
                "--save_file", str(tmp_path / "infinitetalk_res")]
    tiny = ["--preset", "tiny", "--size", "tiny", "--no-progress"]
    assert main(["generate", *official, *tiny, "--cfg"]) == 0
    cfg = capsys.readouterr().out
    for want in ("steps: 1", "motion_frame: 5", "frame_num: 17", "text_scale: 1.0", "seed: 7",
                 f"weights: {root}", "lightx2v_lora_rank2", "infinitetalk_res.mp4"):
        assert want in cfg, want
    assert main(["generate", *official, *tiny]) == 0
    assert (tmp_path / "infinitetalk_res.mp4").stat().st_size > 0
    bad = ["--ckpt_dir", str(root / "Wan2.1-I2V-14B-480P"), "--infinitetalk_dir", str(tmp_path / "elsewhere.safetensors")]
    assert main(["generate", *bad, *tiny, "-o", str(tmp_path / "n.mp4")]) == 1
    assert "one weights folder holds all three" in capsys.readouterr().err
    assert main(["generate", "--lora_dir", "a.safetensors", "b.safetensors", "--lora_scale", "1.0", *tiny]) == 1
    assert "1 value(s) for 2 --lora_dir" in capsys.readouterr().err


def test_memory_flags(capsys):
    """--num_persistent_param_in_dit (parameters) becomes whole 14B blocks; our own memory flags
    set their config paths."""
    from infinitetalk_dist.launch.official import resident_blocks

    assert resident_blocks(0) == 0 and resident_blocks(10**12) == 40
    per_block = 7_000_000_000 // resident_blocks(7_000_000_000)
    assert 4e8 < per_block < 5e8  # ~464 M parameters in a block with its audio cross-attention
    tiny = ["--preset", "tiny", "--no-progress", "--cfg"]
    assert main(["generate", "--num_persistent_param_in_dit", "7000000000", "--t5_cpu", *tiny]) == 0
    cfg = capsys.readouterr().out
    assert f"dit_resident_blocks: {resident_blocks(7_000_000_000)}" in cfg and "encoders: cpu" in cfg
    assert main(["generate", "--dit-resident-blocks", "3", "--encoders", "gpu", "--vae-tiling", "on", *tiny]) == 0
    cfg = capsys.readouterr().out
    assert "dit_resident_blocks: 3" in cfg and "encoders: gpu" in cfg and "vae_tiling: 'on'" in cfg
    assert main(["generate", "--num_persistent_param_in_dit", "-1", *tiny]) == 1
    assert "must be >= 0" in capsys.readouterr().err


def test_defaults_match_the_official_tool_or_say_so(tmp_path, capsys, caplog):
    """Colour correction 1.0 (official); --lora_dir alone at the official 1.2; --cfg shows the
    derived defaults (shift 11 at 720p by either name, the size table, multi weights for two
    speakers); a distilled sampler preset without its LoRA warns; --help names the 1000-frame cap."""
    tiny = ["--preset", "tiny", "--no-progress", "--cfg"]

    def cfg(*args):
        assert main(["generate", *args, *tiny]) == 0
        return capsys.readouterr().out

    out = cfg()
    assert "color_correction: 1.0" in out and "shift: 7.0" in out and "size: tiny" in out and "variant: auto" in out
    out = cfg("--size", "infinitetalk-720", "--lora_dir", "a.safetensors", "--weights", str(tmp_path))
    assert "shift: 11.0" in out and "size: '720'" in out and "strength: 1.2" in out

    from infinitetalk_dist.launch.config import compose, to_config

    def variant(*overrides):
        return to_config(compose(list(overrides))).weights_variant

    assert variant() == "single" and variant("input.audio2=b.wav") == "multi"
    assert variant("input.audio2=b.wav", "model.variant=single") == "single"  # an explicit choice stays
    caplog.clear()
    weights = tmp_path / "w"
    weights.mkdir()
    assert main(["generate", "--weights", str(weights), "--sampler", "lightx2v", *tiny]) == 0
    assert "no LoRA is given" in caplog.text
    caplog.clear()
    assert main(["generate", "--weights", str(weights), "--sampler", "lightx2v", "--lora", "l.safetensors", *tiny]) == 0
    assert "no LoRA is given" not in caplog.text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "the official tool: 1000" in " ".join(capsys.readouterr().out.split())


def test_scene_seg_renders_each_shot_as_its_own_window(tmp_path):
    """The official --scene_seg on generate: the job runs as `run` does, cut at the source's shot."""
    import numpy as np

    from infinitetalk_dist.samples import speech_like

    rng = np.random.default_rng(0)
    a = face_image((64, 64), seed=1)
    b = rng.integers(0, 255, a.shape).astype(np.uint8)
    video = tmp_path / "two_shots.mp4"
    sr = 16000
    write_mp4(video, [a] * 25 + [b] * 25, fps=25, audio=speech_like(2.0, seed=1), audio_sr=sr)
    out = tmp_path / "dub.mp4"
    assert main(["generate", "--preset", "tiny", "--video", str(video), "--audio", str(video), "--scene_seg",
                 "-o", str(out), *FAST]) == 0
    manifest = json.loads((tmp_path / "dub.mp4.job" / "manifest.json").read_text())
    assert [w["cut"] for w in manifest["plan"]["windows"]] == ["start", "shot"]
    assert out.stat().st_size > 0
