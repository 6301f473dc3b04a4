"""stitch: windows streamed in order, cross-faded overlaps, hard shot cuts, exact frame count."""

from __future__ import annotations

import dataclasses
import uuid

import fsspec
import numpy as np
import pytest

from infinitetalk_dist.errors import InfiniteTalkError
from infinitetalk_dist.farm.plan import Plan, Window
from infinitetalk_dist.farm.stitch import StitchError, stitch
from infinitetalk_dist.farm.store import JobStore
from infinitetalk_dist.media import VideoSource, write_mp4
from tests.media_probe import probe

H, W = 32, 48
COLOURS = [(200, 60, 40), (40, 60, 200), (60, 200, 60)]
K = 4  # the forced overlap


def _plan(frames=30):
    ws = [Window(index=0, start=0, end=12, cut="start", overlap=0, seed=1, cost=1),
          Window(index=1, start=12 - K, end=20, cut="forced", overlap=K, seed=2, cost=1),
          Window(index=2, start=20, end=frames, cut="shot", overlap=0, seed=3, cost=1)]
    return Plan(fps=25, frames=frames, windows=ws)


def _solid(colour, n):
    return (np.full((H, W, 3), colour, np.uint8) for _ in range(n))


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    d = tmp_path_factory.mktemp("windows")
    paths = []
    for w, c in zip(_plan().windows, COLOURS):
        p = d / f"{w.index:05d}.mp4"
        write_mp4(p, _solid(c, w.end - w.start), crf=0, preset="ultrafast")
        paths.append(str(p))
    return paths


def _frames(path):
    with VideoSource(path) as v:
        return np.stack([f.astype(np.float32).mean(axis=(0, 1)) for f in v])  # [T, 3] mean RGB


def test_stitch_blends_overlap_and_keeps_shot_cut_hard(windows, tmp_path):
    plan = _plan()
    out = tmp_path / "film.mp4"
    sr = 16000
    t = np.arange(int(1.5 * sr)) / sr  # longer than the 1.2 s film: trimmed
    audio = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    written = stitch(zip(plan.windows, windows), plan, out, audio=audio, audio_sr=sr, crf=0)
    assert written.frames == plan.frames

    info = probe(out, decode=True)
    assert info["frames"] == plan.frames
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / 25 + 1e-6

    m = _frames(out)
    a, b, c = (np.array(x, np.float32) for x in COLOURS)
    tol = 6.0  # two 8-bit RGB->YUV420->RGB round trips (window, film); blend steps are 32 apart
    assert np.abs(m[:8] - a).max() < tol  # window 0 alone
    for i in range(K):  # frames 8..11: (1 - w) * a + w * b, w = (i + 1) / (K + 1)
        wgt = (i + 1) / (K + 1)
        assert np.abs(m[8 + i] - ((1 - wgt) * a + wgt * b)).max() < tol, (i, m[8 + i])
    seam = m[7:13, 2]  # blue rises strictly through the cross-fade, red falls
    assert np.all(np.diff(seam) > 10) and np.all(np.diff(m[7:13, 0]) < -10)
    assert np.abs(m[12:20] - b).max() < tol  # window 1 alone
    assert np.abs(m[20:] - c).max() < tol  # shot cut: hard, no blend at frame 19 or 20
    assert np.abs(m[19] - b).max() < tol and np.abs(m[20] - c).max() < tol


def test_stitch_from_remote_store(windows, tmp_path):
    plan = _plan()
    url = f"memory://itd-stitch-{uuid.uuid4().hex}"
    try:
        store = JobStore.create_or_open(url, plan.to_json(), {}, {})
        for w, p in zip(plan.windows, windows):
            store.put_window(w.index, p)
        assert store.done() == {0, 1, 2}
        written = stitch(store.iter_windows(plan.windows), plan, tmp_path / "film.mp4", crf=10)
        assert written.frames == plan.frames and not written.audio
    finally:
        fsspec.filesystem("memory").rm(url, recursive=True)


@pytest.mark.parametrize("n", [11, 13])
def test_window_with_wrong_frame_count_raises(windows, tmp_path, n):
    plan = _plan()
    bad = tmp_path / "bad.mp4"
    write_mp4(bad, _solid(COLOURS[1], n), crf=10, preset="ultrafast")  # window 1 needs 12
    out = tmp_path / "film.mp4"
    with pytest.raises(StitchError, match=rf"bad\.mp4: window 1 has .*{'more than 12' if n > 12 else '11'} frames"):
        stitch([(plan.windows[0], windows[0]), (plan.windows[1], str(bad)),
                (plan.windows[2], windows[2])], plan, out)
    assert not out.exists()  # atomic: nothing half-written
    assert list(tmp_path.glob(".*")) == []


def test_unreadable_window_raises_naming_it(windows, tmp_path):
    plan = _plan()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StitchError, match=r"junk\.mp4: not a readable media file"):
        stitch([(plan.windows[0], windows[0]), (plan.windows[1], str(junk)),
                (plan.windows[2], windows[2])], plan, tmp_path / "film.mp4")
    assert not (tmp_path / "film.mp4").exists()


def _replace(plan, i, **changes):
    plan.windows[i] = dataclasses.replace(plan.windows[i], **changes)
    return plan


def test_plan_that_does_not_tile_raises(windows, tmp_path):
    # stitch checks the plan with Plan.check; its ValueError becomes a StitchError
    out = tmp_path / "x.mp4"
    plan = _replace(_plan(), 2, start=18, overlap=2)
    with pytest.raises(StitchError, match="window 2 has cut 'shot' with overlap 2") as e:
        stitch(zip(plan.windows, windows), plan, out)
    assert isinstance(e.value, InfiniteTalkError) and isinstance(e.value, ValueError)
    plan = _replace(_plan(), 2, start=21)
    with pytest.raises(StitchError, match="window 2 does not continue the previous one"):
        stitch(zip(plan.windows, windows), plan, out)
    plan = _replace(_plan(frames=31), 2, end=30)
    with pytest.raises(StitchError, match="windows end at 30, expected 31"):
        stitch(zip(plan.windows, windows), plan, out)
    # a window must hold the frames it shares with both neighbours
    plan = _replace(_plan(), 2, start=10, cut="forced", overlap=10)
    with pytest.raises(StitchError, match=r"window 1: 12 frames can't hold its overlaps \(4 with the "
                                          r"previous, 10 with the next\)"):
        stitch(zip(plan.windows, windows), plan, out)
    assert not out.exists()


def test_missing_or_misordered_windows_raise(windows, tmp_path):
    plan = _plan()
    with pytest.raises(StitchError, match="window 2: no video given"):
        stitch(list(zip(plan.windows, windows))[:2], plan, tmp_path / "x.mp4")
    pairs = list(zip(plan.windows, windows))
    with pytest.raises(StitchError, match="out of order"):
        stitch([pairs[0], pairs[2], pairs[1]], plan, tmp_path / "x.mp4")
