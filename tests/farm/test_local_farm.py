"""The single-process farm (farm=local: the farm's worker in this process) through the CLI: plan, run, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infinitetalk_dist.farm import render as render_mod
from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.samples import write_demo_inputs
from tests.media_probe import probe

FAST = ["sampler.steps=2", "sampler.frame_num=17", "sampler.motion_frame=5", "--no-progress"]
# 4 s of audio -> 3 windows.
FARM = ["farm.min_s=1.0", "farm.target_s=1.5", "farm.overlap_s=0.4"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("farm")
    image, audio = write_demo_inputs(d / "in", seconds=4.0)
    out = d / "out" / "film.mp4"
    return out, ["--image", str(image), "--audio", str(audio), "-o", str(out), *FAST, *FARM]


def _spy(monkeypatch) -> list[int]:
    rendered = []
    real = render_mod.render_window

    def spy(request, models, reference, hw, window, *args, **kw):
        rendered.append(window.index)
        return real(request, models, reference, hw, window, *args, **kw)

    monkeypatch.setattr(render_mod, "render_window", spy)
    return rendered


def test_plan_prints_json_and_draws_timeline(job, capsys):
    out, args = job
    assert main(["plan", *args]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["frames"] == 100 and len(plan["windows"]) == 3
    assert [w["cut"] for w in plan["windows"]] == ["start", "forced", "forced"]
    assert Path(f"{out}.plan.png").stat().st_size > 0


def test_run_resume_and_rerender(job, monkeypatch):
    out, args = job
    rendered = _spy(monkeypatch)
    assert main(["run", *args]) == 0
    info = probe(out, decode=True)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["frames"] == 100  # the audio's frame count at 25 fps
    assert sorted(rendered) == [0, 1, 2]
    assert rendered[0] == 1  # longest first (#1 and #2 have 44/43 frames, #0 33)
    windows = Path(f"{out}.job") / "windows"
    first = {p.name: p.read_bytes() for p in windows.glob("*.mkv")}
    assert len(first) == 3
    film = out.read_bytes()

    # Resume: nothing left to render, the same film.
    rendered.clear()
    assert main(["run", *args]) == 0
    assert rendered == []
    assert out.read_bytes() == film

    # A lost window is rendered again, alone, to the same bytes (its own seed): same film.
    (windows / "00001.mkv").unlink()
    assert main(["run", *args]) == 0
    assert rendered == [1]
    assert probe(out, decode=True)["frames"] == 100
    assert (windows / "00001.mkv").read_bytes() == first["00001.mkv"]
    assert out.read_bytes() == film


def test_store_refuses_another_job(job, capsys):
    out, args = job
    if not Path(f"{out}.job").exists():
        pytest.skip("needs the job of test_run_resume_and_rerender")
    assert main(["run", *args, "seed=7"]) == 1
    assert "holds a different job" in capsys.readouterr().err


def test_window_codec(job, tmp_path, capsys):
    # Windows are stored lossless by default (the film is encoded once); h264 is the small option.
    import numpy as np

    from infinitetalk_dist.errors import InputError
    from infinitetalk_dist.farm.options import FarmOptions
    from infinitetalk_dist.media import iter_video_frames

    out, args = job
    if not Path(f"{out}.job").exists():
        pytest.skip("needs the job of test_run_resume_and_rerender")
    assert {probe(p)["video_codec"] for p in (Path(f"{out}.job") / "windows").glob("*.mkv")} == {"ffv1"}
    small = tmp_path / "small.mp4"
    other = [small if a == str(out) else a for a in args]
    assert main(["run", *map(str, other), "farm.window_codec=h264"]) == 0
    kept = sorted((Path(f"{small}.job") / "windows").iterdir())
    assert [p.suffix for p in kept] == [".mp4"] * 3 and probe(kept[0])["video_codec"] == "h264"
    a = np.stack(list(iter_video_frames(out))).astype(int)
    b = np.stack(list(iter_video_frames(small))).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0  # one more generation of loss (9.5 on this noise)

    assert main(["run", *args, "farm.window_codec=vp9"]) == 1
    assert "farm.window_codec must be one of ffv1, h264, got 'vp9'" in capsys.readouterr().err
    with pytest.raises(InputError, match="the composite needs lossless crops"):
        FarmOptions(window_codec="h264").window_ext(conform=True)


def test_steps_are_reported_inside_windows(job, tmp_path, monkeypatch):
    """Every sampling step reaches the driver before its window ends: the progress metrics move
    inside a window (itd_dit_steps_total, itd_window_progress), not only per window."""
    from infinitetalk_dist.farm.driver import JobRun

    events = []
    real_report, real_finished = JobRun.report, JobRun.finished

    def report(self, replica, info):
        events.append(("step", info["window"], info["done"], info["chunks"] * info["steps"]))
        real_report(self, replica, info)

    def finished(self, w, a, result):
        events.append(("done", w.index, len(result["step_seconds"]), None))
        real_finished(self, w, a, result)

    monkeypatch.setattr(JobRun, "report", report)
    monkeypatch.setattr(JobRun, "finished", finished)
    _, args = job
    out = tmp_path / "film.mp4"
    assert main(["run", *args, "-o", str(out)]) == 0
    for kind, window, steps, _ in [e for e in events if e[0] == "done"]:
        mine = [e for e in events[: events.index(("done", window, steps, None))] if e[:2] == ("step", window)]
        assert [e[2] for e in mine] == list(range(1, steps + 1)) and mine[-1][3] == steps  # every step, in order
    prom = (tmp_path / "film.mp4.job" / "metrics.prom").read_text()
    total = sum(e[2] for e in events if e[0] == "done")
    assert f'itd_dit_steps_total{{itd_job="film.mp4"}} {float(total)}' in prom
    assert 'itd_window_progress{itd_job="film.mp4",replica="0"} 1.0' in prom
