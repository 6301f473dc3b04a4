"""The farm's one worker path: the worker never decodes the job's inputs (the driver ships the
reference with its frame index and each window's audio), and farm=local retries like Ray."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from infinitetalk_dist.farm import render as render_mod
from infinitetalk_dist.farm.job import prepare_job
from infinitetalk_dist.farm.options import FarmOptions
from infinitetalk_dist.farm.replica import ReplicaWorker
from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.media import VideoSource, write_mp4
from infinitetalk_dist.pipeline.request import GenerateRequest, InputOptions, SamplerOptions
from infinitetalk_dist.samples import face_image, write_demo_inputs

FAST = SamplerOptions(steps=1, frame_num=17, motion_frame=5)
FARM = FarmOptions(min_s=1.0, target_s=1.5, overlap_s=0.4)


@pytest.fixture(scope="module")
def v2v_job(tmp_path_factory):
    d = tmp_path_factory.mktemp("worker")
    _, audio = write_demo_inputs(d, seconds=2.0)
    frames = [np.roll(face_image((96, 96), seed=2), 3 * k, axis=1) for k in range(60)]
    write_mp4(d / "src.mp4", frames, fps=30)
    request = GenerateRequest(input=InputOptions(video=str(d / "src.mp4"), audio=str(audio)),
                              output=str(d / "out" / "film.mp4"), sampler=FAST, progress=False)
    return prepare_job(request, FARM)


def test_worker_renders_v2v_windows_without_decoding_the_film(v2v_job, monkeypatch):
    job = v2v_job
    shipped = pickle.loads(pickle.dumps(job.sources.reference.for_workers()))  # what a Ray actor gets
    assert shipped.video_index is not None and shipped._video is None

    def no_full_decode(self):
        raise AssertionError("a worker decoded the whole source video")

    monkeypatch.setattr(VideoSource, "_build_index", no_full_decode)
    worker = ReplicaWorker(job.request, job.store.url, 0, 1, shipped)
    worker.setup(None)
    w = max(job.plan.windows, key=lambda w: w.start)  # the last window: frames far from frame 0
    tracks = render_mod.window_tracks(job.sources.audio.tracks, w.start, w.end)
    result = worker.render(dataclasses.asdict(w), tracks)
    assert result["frames"] == w.frames and result["size"] > 0
    # The same window from the driver's own (locally indexed) reference: the same bytes.
    monkeypatch.undo()
    local = ReplicaWorker(job.request, job.store.url, 0, 1, job.sources.reference)
    local.setup(None)
    assert local.render(dataclasses.asdict(w), tracks)["sha256"] == result["sha256"]


def test_local_backend_retries_a_failing_window(tmp_path, monkeypatch, capsys):
    """farm=local drives the worker through the shared queue: a window that fails once is
    rendered again (same bytes as a clean run); one failing every attempt fails the job."""
    image, audio = write_demo_inputs(tmp_path / "in", seconds=2.0)
    args = ["--image", str(image), "--audio", str(audio), "sampler.steps=1", "sampler.frame_num=17",
            "sampler.motion_frame=5", "--no-progress", "farm.min_s=1.0", "farm.target_s=1.0"]
    clean = tmp_path / "clean.mp4"
    assert main(["run", *args, "-o", str(clean)]) == 0

    real, calls = render_mod.render_window, []

    def flaky(request, models, reference, hw, window, *a, **kw):
        calls.append(window.index)
        if window.index == 1 and calls.count(1) == 1:
            raise RuntimeError("transient failure")
        return real(request, models, reference, hw, window, *a, **kw)

    monkeypatch.setattr(render_mod, "render_window", flaky)
    out = tmp_path / "retried.mp4"
    assert main(["run", *args, "-o", str(out)]) == 0
    assert calls.count(1) == 2 and out.read_bytes() == clean.read_bytes()
    report = (tmp_path / "retried.mp4.job" / "report.md").read_text()
    assert "backend: local" in report and "RuntimeError: transient failure" in report

    def broken(request, models, reference, hw, window, *a, **kw):
        raise RuntimeError(f"always fails on window {window.index}")

    monkeypatch.setattr(render_mod, "render_window", broken)
    failed = tmp_path / "failed.mp4"
    capsys.readouterr()
    assert main(["run", *args, "-o", str(failed), "farm.max_attempts=2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed 2 time(s)" in err[0] and "always fails" in err[0], err
    assert not failed.exists()


def test_gpu_actors_reserve_their_share_of_the_cpus():
    """Ray gives an actor as many CPU threads as CPUs it reserved: a GPU rank takes the
    cluster's CPUs per GPU unless farm.cpus_per_actor says otherwise; CPU ranks take 1."""
    from types import SimpleNamespace

    from infinitetalk_dist.farm.ray_farm import _layout

    cuda, cpu = GenerateRequest(device="cuda"), GenerateRequest(device="cpu")
    node = {"CPU": 128.0, "GPU": 8.0}
    assert _layout(SimpleNamespace(farm=FarmOptions(), request=cuda), node) == (1, {"CPU": 16.0, "GPU": 1.0})
    assert _layout(SimpleNamespace(farm=FarmOptions(gpus_per_replica=2, cpus_per_actor=4), request=cuda),
                   node) == (2, {"CPU": 4.0, "GPU": 1.0})
    assert _layout(SimpleNamespace(farm=FarmOptions(), request=cpu), node) == (1, {"CPU": 1.0})
    assert _layout(SimpleNamespace(farm=FarmOptions(), request=cuda), {"CPU": 2.0}) == (1, {"CPU": 1.0, "GPU": 1.0})
