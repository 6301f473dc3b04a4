"""The farm on a real local Ray cluster (CPU, fake GPUs, tiny preset): replicas, equality with
farm=local, faults (killed actor, killed driver, corrupted window, failing window, full store),
metrics scraped over HTTP, the job report, and `ray job submit`."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from infinitetalk_dist.launch.cli import main  # noqa: E402
from infinitetalk_dist.farm.store import JobStore  # noqa: E402
from tests.farm.raykit import (FAST, RAY, RAY_BIN, REPO, free_port, ray_start, ray_stop, timeline,  # noqa: E402
                               when_rendering)
from tests.media_probe import probe  # noqa: E402


def _ray_init(**kw):
    ray.init(address="local", num_cpus=2, num_gpus=4, object_store_memory=256 * 2**20,
             include_dashboard=False, log_to_driver=False, **kw)


@pytest.fixture(scope="module")
def _module_ray():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def cluster(_module_ray):
    """The shared test cluster (2 CPUs, 4 fake GPUs); started again if a test replaced it."""
    if ray.is_initialized() and ray.cluster_resources().get("GPU") != 4:
        ray.shutdown()
    if not ray.is_initialized():
        _ray_init()


def _steps(out: Path) -> str:
    """The job's itd_dit_steps_total line (the replicas' step reports, counted by the driver)."""
    prom = (Path(f"{out}.job") / "metrics.prom").read_text()
    return next(line for line in prom.splitlines() if line.startswith("itd_dit_steps_total"))


def test_two_replicas_equal_local_and_report(cluster, inputs, reference, tmp_path):
    out = tmp_path / "film.mp4"
    assert main(["run", *inputs, *RAY, "-o", str(out)]) == 0
    assert out.read_bytes() == reference
    tl = timeline(out)
    assert sorted(a["window"] for a in tl if a["outcome"] == "done") == [0, 1, 2]
    assert {a["replica"] for a in tl} == {0, 1}  # both replicas worked
    first = min(tl, key=lambda a: a["start"])
    assert first["window"] in (1, 2)  # longest first (#0 is the shortest)
    job = Path(f"{out}.job")
    report = (job / "report.md").read_text()
    assert "![gantt](gantt.png)" in report and "backend: ray, 2 replica(s) x 1 rank(s) on CPU" in report
    for name in ("plan.png", "gantt.png"):
        assert (job / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'itd_windows{itd_job="film.mp4",state="done"} 3.0' in (job / "metrics.prom").read_text()
    local = next(tmp_path.parent.glob("ray-ref*/film.mp4"))  # the reference fixture's farm=local run
    assert _steps(out) == _steps(local) and not _steps(out).endswith(" 0.0")  # every step reported


def test_killed_actor_mid_window_is_rebuilt_same_bytes(cluster, inputs, reference, tmp_path):
    """Kill replica 0's actor while a window renders (seen through the metrics endpoint, which
    this also scrapes): the window is re-queued, the replica rebuilt, the film unchanged."""
    out, port = tmp_path / "film.mp4", free_port()

    def kill() -> str:
        ray.kill(ray.get_actor("itd-r0-k0-b1"), no_restart=True)
        return "itd-r0-k0-b1"

    killed, seen = when_rendering(port, kill)  # once both replicas render
    assert main(["run", *inputs, *RAY, "-o", str(out), f"farm.metrics_port={port}"]) == 0
    assert killed, "the test never saw a running window to kill"
    assert seen and seen[0]["itd_windows_planned"] == 3.0  # scraped over HTTP during the run
    assert out.read_bytes() == reference
    tl = timeline(out)
    assert [a["outcome"] for a in tl].count("lost") == 1
    assert sorted(a["window"] for a in tl if a["outcome"] == "done") == [0, 1, 2]
    final = (Path(f"{out}.job") / "metrics.prom").read_text()
    assert 'itd_window_retries_total{itd_job="film.mp4"} 1.0' in final
    assert 'itd_replica_restarts_total{itd_job="film.mp4"} 1.0' in final


def test_corrupted_window_is_rerendered(cluster, inputs, reference, tmp_path):
    out = tmp_path / "film.mp4"
    assert main(["run", *inputs, *RAY, "-o", str(out)]) == 0
    victim = Path(f"{out}.job") / "windows" / "00002.mkv"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="does not match its recorded sha256"):
        assert main(["run", *inputs, *RAY, "-o", str(out)]) == 0
    assert [a["window"] for a in timeline(out)] == [2]
    assert out.read_bytes() == reference


def test_store_full_fails_cleanly_and_keeps_windows(cluster, inputs, reference, tmp_path, monkeypatch, capsys):
    """The manifest write after the 2nd finished window hits ENOSPC: one clear error, the
    first window stays done, and a re-run (disk freed) completes the same film."""
    out = tmp_path / "film.mp4"
    real, calls = JobStore._write_bytes, []

    def full_after_two(self, path, data):
        calls.append(path)
        if len(calls) >= 3:  # 1: new manifest, 2: first window, 3: second window
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, data)

    monkeypatch.setattr(JobStore, "_write_bytes", full_after_two)
    assert main(["run", *inputs, *RAY, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("error:") == 1
    assert not out.exists()
    monkeypatch.setattr(JobStore, "_write_bytes", real)
    assert len(JobStore(f"{out}.job").done()) == 1
    assert main(["run", *inputs, *RAY, "-o", str(out)]) == 0
    assert len([a for a in timeline(out) if a["outcome"] == "done"]) == 2
    assert out.read_bytes() == reference


def test_replica_of_two_ranks(cluster, inputs, reference, tmp_path):
    """One replica = 2 actors in one gloo group (Ulysses sp=2, FSDP over both): same frames as
    one process up to float reordering."""
    out = tmp_path / "film.mp4"
    # 2 replicas x 2 ranks on a 2-CPU cluster: half a CPU per actor.
    assert main(["run", *inputs, "farm=ray", "farm.gpus_per_replica=2", "farm.cpus_per_actor=0.5",
                 "-o", str(out)]) == 0
    ref = tmp_path / "ref.mp4"
    ref.write_bytes(reference)
    a, b = _decode(out), _decode(ref)
    assert a.shape == b.shape
    diff = np.abs(a.astype(int) - b).mean()
    print(f"replica of 2 ranks vs local: mean |diff| {diff:.3f} levels")
    assert diff < 1.0


def test_replicas_that_cannot_be_placed_fail_with_what_is_missing(cluster, inputs, tmp_path, capsys):
    out = tmp_path / "film.mp4"
    # device=cuda: GPU bundles (the fake GPUs of the test cluster); placement fails before any actor starts.
    assert main(["run", *inputs, "farm=ray", "device=cuda", "farm.gpus_per_replica=8", "farm.placement_timeout_s=2",
                 "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "could be placed within 2 s" in err and "'GPU': 1.0" in err
    assert not out.exists()


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_window_failing_every_retry_fails_the_job(inputs, tmp_path, capsys):
    """Window 1 raises on every attempt (injected in the Ray workers): the job fails with that
    cause after farm.max_attempts, the other windows are in the store."""
    if ray.is_initialized():
        ray.shutdown()
    _ray_init(runtime_env={"worker_process_setup_hook": "tests.farm.faults.fail_window",
                           "env_vars": {"ITD_TEST_FAIL_WINDOW": "1", "PYTHONPATH": str(REPO)}})
    try:
        out = tmp_path / "film.mp4"
        assert main(["run", *inputs, *RAY, "-o", str(out), "farm.max_attempts=2"]) == 1
        err = capsys.readouterr().err
        assert "window 1 failed 2 time(s)" in err and "injected failure rendering window 1" in err
        assert not out.exists()
        tl = timeline(out)
        assert [a["outcome"] for a in tl if a["window"] == 1] == ["failed", "failed"]
        assert JobStore(f"{out}.job").done() <= {0, 2}
    finally:
        ray.shutdown()


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "infinitetalk_dist.launch.ray_job", *args]


@pytest.mark.slow
def test_killed_driver_resumes_same_bytes(inputs, reference, tmp_path):
    """Kill the whole driver (and the Ray instance it started) after a window is stored; the
    same command resumes: finished windows are not rendered again, same film."""
    if ray.is_initialized():
        ray.shutdown()
    out = tmp_path / "film.mp4"
    cmd = _cli("run", *inputs, "farm.gpus_per_replica=0", "farm.cpus_per_actor=1", "-o", str(out))
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = Path(f"{out}.job") / "manifest.json"
    deadline, done = time.time() + 240, 0
    while time.time() < deadline and p.poll() is None:
        if manifest.exists():
            try:
                states = json.loads(manifest.read_text())["windows"].values()
                done = sum(s["state"] == "done" for s in states)
            except ValueError:
                pass
            if done >= 1:
                break
        time.sleep(0.05)
    assert p.poll() is None and done >= 1, f"the driver ended before it could be killed: {p.stderr.read()[-2000:]}"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done_at_kill = len(JobStore(f"{out}.job").done())
    assert 1 <= done_at_kill < 3
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rendered = [a["window"] for a in timeline(out) if a["outcome"] == "done"]
    assert len(rendered) == 3 - done_at_kill  # at most the windows in flight (one per replica)
    assert out.read_bytes() == reference


@pytest.mark.slow
def test_cpu_farm_started_by_the_command(inputs, reference, tmp_path):
    """The new user's command on a CPU-only machine: `run ... farm=ray farm.replicas=2` (Ray started
    by the command, gpus_per_replica left at its default) asks Ray for CPU bundles only and
    writes the farm=local film; a replica this machine can never hold fails at once."""
    if ray.is_initialized():
        ray.shutdown()
    out = tmp_path / "film.mp4"
    r = subprocess.run(_cli("run", *inputs, "farm.replicas=2", "-o", str(out)), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.read_bytes() == reference
    assert "2 replica(s) x 1 rank(s) on CPU" in (Path(f"{out}.job") / "report.md").read_text()
    t0 = time.perf_counter()
    r = subprocess.run(_cli("run", *inputs, "farm.cpus_per_actor=64", "-o", str(tmp_path / "never.mp4")),
                       capture_output=True, text=True, timeout=300)
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(err) == 1 and "a replica needs 1 x {'CPU': 64.0}" in err[0], r.stderr[-2000:]
    assert time.perf_counter() - t0 < 60  # not after farm.placement_timeout_s (600 s)


@pytest.mark.slow
def test_ray_job_submit_against_a_local_head(inputs, reference, tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    port, dash = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    head = ray_start("--head", f"--port={port}", "--num-cpus=2", "--num-gpus=2", "--include-dashboard=true",
                     f"--dashboard-port={dash}")
    try:
        out = tmp_path / "film.mp4"
        submit = [RAY_BIN, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--",
                  *_cli("run", *inputs, *RAY[1:], "-o", str(out))]
        deadline = time.time() + 90
        while True:  # the dashboard's job API comes up a few seconds after the head
            r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
            if r.returncode == 0 or time.time() > deadline or "succeeded" in r.stdout:
                break
            time.sleep(2)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert "succeeded" in r.stdout
        assert out.read_bytes() == reference
    finally:
        ray_stop(head)


@pytest.mark.slow
def test_v2v_film_with_a_shot_cut_on_two_replicas(cluster, tmp_path):
    """The issue's acceptance job: a 24 s synthetic source video with one hard cut, dubbed with
    new audio on 2 replicas. The shot cut is a free window boundary, the film has every frame
    and the audio's length, and frames across the cut are not blended."""
    from infinitetalk_dist.media import write_mp4
    from infinitetalk_dist.samples import face_image, speech_like

    a, b = face_image((96, 96), seed=1), face_image((96, 96), seed=7)[..., ::-1].copy()
    frames = [np.roll(a, i % 4, axis=1) for i in range(300)] + [np.roll(b, i % 4, axis=0) for i in range(420)]
    video = tmp_path / "source.mp4"
    write_mp4(video, frames, fps=30)  # 24 s, cut at 10 s
    sr = 16000
    audio = np.concatenate([speech_like(9.6, seed=3), np.zeros(int(0.8 * sr)), speech_like(13.6, seed=4)])
    wav = tmp_path / "dub.wav"
    import wave

    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    out = tmp_path / "dubbed.mp4"
    args = ["--video", str(video), "--audio", str(wav), "-o", str(out), *FAST, "farm=ray", "farm.replicas=2",
            "farm.gpus_per_replica=1", "farm.min_s=4.0"]
    assert main(["run", *args]) == 0
    plan = json.loads((Path(f"{out}.job") / "manifest.json").read_text())["plan"]
    cuts = [w["cut"] for w in plan["windows"]]
    assert "shot" in cuts and len(cuts) >= 3, cuts
    shot = next(w for w in plan["windows"] if w["cut"] == "shot")
    assert abs(shot["start"] - 250) <= 1 and shot["overlap"] == 0
    info = probe(out, decode=True)
    assert info["frames"] == 600 and abs(info["audio_duration"] - 24.0) < 0.05
    tl = timeline(out)
    assert {x["replica"] for x in tl} == {0, 1} and len(tl) == len(cuts)
    # At the shot cut the film switches from the previous window's last frame to the shot
    # window's first frame (re-encoded once), not to a blend of the two.
    film = _decode(out).astype(int)
    s, windows = shot["start"], Path(f"{out}.job") / "windows"
    prev = _decode(windows / f"{shot['index'] - 1:05d}.mkv")[-1].astype(int)
    first = _decode(windows / f"{shot['index']:05d}.mkv")[0].astype(int)
    own, other = np.abs(film[s] - first).mean(), np.abs(film[s] - prev).mean()
    before = np.abs(film[s - 1] - prev).mean()
    print(f"plan {cuts}; at the shot cut: |film - own window| {own:.2f}, |film - previous window| {other:.2f}")
    # Noise-like tiny frames: the film's one H.264 generation from the lossless windows costs
    # 10-18 levels here (18 on the B-frame before the cut); a blend of the two windows would sit
    # near half of |film - previous| (~31), the other window at ~63.
    assert own < 24 and before < 24 and other > 4 * max(own, 1.0)
