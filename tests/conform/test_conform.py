"""generate --conform end to end (tiny preset, CPU): a 1280x720 source at 24000/1001 fps with a
real face (scikit-image's astronaut) and a hard cut comes back at its own size, rate and frame
count; outside the feathered mask every pixel is the source's, inside the face changed; the
mix is carried as it is; bad boxes, face-less shots and codec/container mismatches are one
error each and leave no file."""

from __future__ import annotations

import wave
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.media import VideoSource, write_video
from infinitetalk_dist.pipeline.conform.composite import feathered_mask
from infinitetalk_dist.pipeline.conform.retime import lip_sync_offset_s
from infinitetalk_dist.samples import speech_like

RATE = Fraction(24000, 1001)
FAST = ["sampler.steps=1", "sampler.frame_num=17", "sampler.motion_frame=5", "--no-progress"]


def _face() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()[20:300, 90:370]).resize((224, 224)))


def _wav(path, seconds: float, sr: int, channels: int, seed: int) -> str:
    x = speech_like(seconds, sr=sr, seed=seed)
    pcm = (np.clip(np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], 1), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return str(path)


def two_shots(path) -> str:
    """A 1280x720 source at 24000/1001 fps: two shots (1.0 s each) of the face on different
    backgrounds, moving 2 px a frame (also docs/conform_picture.py's source)."""
    face = _face()
    frames = []
    for k in range(48):
        shot2 = k >= 24
        f = np.full((720, 1280, 3), (40, 60, 90) if not shot2 else (200, 180, 120), np.uint8)
        x, y = (300 + 2 * k, 200) if not shot2 else (800 - 2 * k, 260)
        f[y:y + 224, x:x + 224] = face
        frames.append(f)
    write_video(path, frames, fps=RATE, codec="h264", crf=10)
    return str(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("conform")
    two_shots(d / "source.mp4")
    return {"video": str(d / "source.mp4"), "speech": _wav(d / "speech.wav", 1.6, 16000, 1, 1),
            "mix": _wav(d / "mix.wav", 1.6, 48000, 2, 2), "dir": d}


def _decode(path) -> tuple[list[np.ndarray], av.VideoStream]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in c.decode(s)], s


def test_conform_keeps_the_source_outside_the_mask(source, tmp_path):
    out = tmp_path / "dub.mkv"
    args = ["generate", "--video", source["video"], "--audio", source["speech"], "--mix", source["mix"],
            "--conform", "--codec", "ffv1", "-o", str(out), *FAST]
    assert main(args) == 0
    got, stream = _decode(out)
    src = VideoSource(source["video"])
    kept = [t for t in src.timestamps if t < 1.6 - 1e-9]
    assert len(got) == len(kept) and got[0].shape == (720, 1280, 3)
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == RATE
        a = c.streams.audio[0]
        assert a.codec_context.channels == 2 and a.codec_context.sample_rate == 48000
    # The plan the command used (no model needed): where each frame's mask lies.
    from infinitetalk_dist.pipeline.conform.run import plan_conform
    from infinitetalk_dist.pipeline.generate import read_sources
    from infinitetalk_dist.pipeline.request import ConformOptions, GenerateRequest, InputOptions

    request = GenerateRequest(input=InputOptions(video=source["video"], audio=source["speech"]),
                              conform=ConformOptions(enabled=True, codec="ffv1"), output=str(out))
    plan = plan_conform(request, read_sources(request)[1])
    assert len(plan.boxes) == 2 and all(b is not None for b in plan.boxes)  # the hard cut: two shots
    assert plan.boxes[0] != plan.boxes[1]
    worst_outside, inside_changed = 0, []
    for k, frame in enumerate(got):
        box = plan.box_at(float(plan.times[k]))
        support = np.zeros((720, 1280), bool)
        support[box.top:box.bottom, box.left:box.right] = feathered_mask(box.height, box.width) > 0
        diff = np.abs(frame.astype(int) - src.frame(k).astype(int)).max(axis=2)
        worst_outside = max(worst_outside, int(diff[~support].max()))
        inside_changed.append(float(diff[support].mean()))
    assert worst_outside == 0  # ffv1 keeps RGB exactly: outside the mask the film is the source
    assert min(inside_changed) > 1.0  # the face was re-rendered in every frame


def test_conform_errors_leave_no_file(source, tmp_path):
    base = ["generate", "--video", source["video"], "--audio", source["speech"], "--conform", *FAST]
    cases = [
        (["--codec", "prores", "-o", str(tmp_path / "a.mp4")], "prores"),
        (["--face-box", "1200", "100", "1400", "400", "-o", str(tmp_path / "b.mp4")], "box"),
    ]
    for extra, word in cases:
        assert main([*base, *extra]) != 0
    assert not list(tmp_path.iterdir())
    plain = tmp_path / "noface.mp4"
    frames = [np.full((360, 640, 3), 90 + k, np.uint8) for k in range(30)]
    write_video(tmp_path / "empty.mp4", frames, fps=25, codec="h264")
    assert main(["generate", "--video", str(tmp_path / "empty.mp4"), "--audio", source["speech"], "--conform",
                 "-o", str(plain), *FAST]) != 0
    assert not plain.exists()


def test_mask_is_zero_on_the_border_and_one_inside():
    for shape in ("face", "lower", "box"):
        m = feathered_mask(120, 96, shape)
        assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
        assert m.max() == 1.0 and m.min() == 0.0


def test_lip_sync_offset_by_rate():
    """nearest: up to half a 25 fps frame (20 ms), over half a 30 fps frame (16.7 ms); blend: 0."""
    for num, den in ((24000, 1001), (24, 1), (25, 1), (30000, 1001), (30, 1)):
        times = [k * den / num for k in range(300)]
        assert lip_sync_offset_s(times, "nearest") <= 0.5 / 25 + 1e-9
        assert lip_sync_offset_s(times, "blend") == 0.0


def test_farm_conform_stores_lossless_windows_and_composites_at_the_stitch(tmp_path):
    """`run --conform`: the shot boxes are found once by the driver, the windows (crops) are
    stored as lossless FFV1, the stitch composites them into the source at its size and rate;
    outside the mask the film is the source's; re-running resumes to the same bytes
    (test_farm_equals_generate.py: the film of a one-window plan equals generate's)."""
    face = _face()
    frames = []
    for k in range(36):
        f = np.full((360, 640, 3), (40, 60, 90), np.uint8)
        f[60:284, 150 + 2 * k:374 + 2 * k] = face
        frames.append(f)
    rate = Fraction(30000, 1001)
    write_video(tmp_path / "src.mp4", frames, fps=rate, codec="h264", crf=10)
    speech = _wav(tmp_path / "s.wav", 1.1, 16000, 1, 3)
    film = tmp_path / "farm.mkv"
    args = ["run", "--video", str(tmp_path / "src.mp4"), "--audio", speech, "--conform", "--codec", "ffv1",
            "-o", str(film), "farm.min_s=0.4", "farm.target_s=0.5", "farm.overlap_s=0.2", *FAST]
    assert main(args) == 0
    windows = sorted((tmp_path / "farm.mkv.job" / "windows").iterdir())
    assert len(windows) >= 2 and {w.suffix for w in windows} == {".mkv"}
    with av.open(str(windows[0])) as c:
        assert c.streams.video[0].codec_context.name == "ffv1"
    got, _ = _decode(film)
    src = VideoSource(str(tmp_path / "src.mp4"))
    kept = [t for t in src.timestamps if t < 1.1 - 1e-9]
    assert len(got) == len(kept) and got[0].shape == (360, 640, 3)
    with av.open(str(film)) as c:
        assert c.streams.video[0].average_rate == rate
    from infinitetalk_dist.farm.job import prepare_job
    from infinitetalk_dist.farm.options import FarmOptions
    from infinitetalk_dist.pipeline.request import ConformOptions, GenerateRequest, InputOptions, SamplerOptions

    request = GenerateRequest(input=InputOptions(video=str(tmp_path / "src.mp4"), audio=speech),
                              conform=ConformOptions(enabled=True, codec="ffv1"), output=str(film),
                              sampler=SamplerOptions(steps=1, frame_num=17, motion_frame=5))
    job = prepare_job(request, FarmOptions(min_s=0.4, target_s=0.5, overlap_s=0.2))
    assert not job.todo  # the same job, all windows stored
    [box] = job.conform.boxes
    support = np.zeros((360, 640), bool)
    support[box.top:box.bottom, box.left:box.right] = feathered_mask(box.height, box.width) > 0
    for k, frame in enumerate(got):
        diff = np.abs(frame.astype(int) - src.frame(k).astype(int)).max(axis=2)
        assert diff[~support].max() == 0 and diff[support].mean() > 1.0
    before = film.read_bytes()
    assert main(args) == 0 and film.read_bytes() == before  # resumed: nothing rendered, same film
