"""The farm's conformed film equals `generate --conform` for the same plan: a one-window job
rendered by the farm (window crop stored as FFV1, composited at the stitch) and `generate
--conform` with that window's seed write the same frames and the same audio. The models come
from a tiny weights folder in the official layout (benchmarks/make_weights.py), so they do not
depend on the seed as the built-in tiny preset's do."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from infinitetalk_dist.farm.options import FarmOptions
from infinitetalk_dist.farm.plan import window_seed
from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.media import write_video
from infinitetalk_dist.pipeline.request import GenerateRequest
from tests.conform.test_conform import FAST, _face, _wav

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from make_weights import make_weights  # noqa: E402


def _streams(path) -> tuple[list[np.ndarray], np.ndarray, Fraction]:
    with av.open(str(path)) as c:
        rate = c.streams.video[0].average_rate
        video = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return video, audio, rate


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("farm_eq")
    make_weights(d / "weights", preset="tiny", device="cpu", lora_rank=2)
    face, rate = _face(), Fraction(25, 1)
    frames = []
    for k in range(30):
        f = np.full((288, 512, 3), (40, 60, 90), np.uint8)
        f[30:254, 120 + 2 * k:344 + 2 * k] = face
        frames.append(f)
    write_video(d / "src.mp4", frames, fps=rate, codec="h264", crf=10)
    return {"dir": d, "weights": str(d / "weights"), "video": str(d / "src.mp4"),
            # A window of 25 frames reads samples [0, 25 * 640 + 1) (farm/render.window_tracks,
            # wav2vec2 normalises over what it reads): a track that long gives generate the same.
            "speech": _wav(d / "s.wav", 16001 / 16000, 16000, 1, 4), "mix": _wav(d / "m.wav", 1.0, 48000, 2, 5)}


def test_farm_film_equals_generate_for_the_same_plan(inputs, tmp_path):
    common = ["--weights", inputs["weights"], "--preset", "tiny", "--size", "tiny", "--video", inputs["video"],
              "--audio", inputs["speech"], "--mix", inputs["mix"], "--conform", "--codec", "ffv1", *FAST]
    farm = tmp_path / "farm.mkv"
    assert main(["run", *common, "-o", str(farm), "farm.target_s=10"]) == 0
    windows = sorted((tmp_path / "farm.mkv.job" / "windows").iterdir())
    assert len(windows) == 1  # one window: the plan generate renders
    gen = tmp_path / "gen.mkv"
    threads = torch.get_num_threads()
    torch.set_num_threads(FarmOptions().cpu_threads())  # CPU numbers depend on it: the farm's window count
    try:
        assert main(["generate", *common, "-o", str(gen), f"seed={window_seed(GenerateRequest().seed, 0)}"]) == 0
    finally:
        torch.set_num_threads(threads)
    fv, fa, frate = _streams(farm)
    gv, ga, grate = _streams(gen)
    assert frate == grate and len(fv) == len(gv) > 0
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(fv, gv))
    assert worst == 0, f"frames differ by up to {worst}"
    assert fa.shape == ga.shape and np.array_equal(fa, ga)
