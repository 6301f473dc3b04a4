"""JobStore: manifest, atomic window uploads, verified resume, failures that lose nothing."""

from __future__ import annotations

import errno
import json
import os
import uuid

import fsspec
import pytest

from infinitetalk_dist.farm.store import JobStore, StoreError, hash_file

PLAN = json.dumps({"frames": 30, "fps": 25, "windows": [
    {"index": 0, "start": 0, "end": 12, "cut": "start", "overlap": 0, "seed": 1},
    {"index": 1, "start": 8, "end": 20, "cut": "forced", "overlap": 4, "seed": 2},
    {"index": 2, "start": 20, "end": 30, "cut": "shot", "overlap": 0, "seed": 3},
]})
SETTINGS = {"steps": 4, "size": [32, 48], "seed": 42}
INPUTS = {"video": "a" * 64, "audio": "b" * 64}


def _file(tmp_path, name: str, payload: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(payload)
    return str(p)


@pytest.fixture(params=["local", "memory"])
def url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "job")
        return
    u = f"memory://itd-test-{uuid.uuid4().hex}"
    yield u
    fs = fsspec.filesystem("memory")
    if fs.exists(u):
        fs.rm(u, recursive=True)


def test_round_trip_and_resume(url, tmp_path):
    store = JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    assert store.done() == set()
    m = store.manifest
    assert m["plan"] == json.loads(PLAN) and m["settings"] == SETTINGS and m["inputs"] == INPUTS
    assert {k: v["state"] for k, v in m["windows"].items()} == {"0": "pending", "1": "pending", "2": "pending"}

    src0 = _file(tmp_path, "w0.mp4", b"window zero" * 100)
    src2 = _file(tmp_path, "w2.mp4", b"window two" * 50)
    assert store.put_window(0, src0) == hash_file(src0)
    store.put_window(2, src2)
    assert store.done() == {0, 2}
    # no temporary files left behind
    names = [os.path.basename(p) for p in store.fs.ls(store._p("windows"), detail=False)]
    assert sorted(names) == ["00000.mkv", "00002.mkv"]

    again = JobStore.create_or_open(url, PLAN, dict(SETTINGS), dict(INPUTS))  # resume
    assert again.done() == {0, 2}
    with again.open_window(2) as p:
        assert open(p, "rb").read() == b"window two" * 50
    pairs = list((w.index, open(p, "rb").read()) for w, p in again.iter_windows(
        [type("W", (), {"index": 0})(), type("W", (), {"index": 2})()]))
    assert pairs == [(0, b"window zero" * 100), (2, b"window two" * 50)]
    assert again.window_path(2).endswith("windows/00002.mkv")
    with pytest.raises(StoreError, match="window 1"):
        with again.open_window(1):
            pass


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_window_is_not_done(url, tmp_path, damage):
    store = JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    store.put_window(0, _file(tmp_path, "w0.mp4", bytes(range(256)) * 8))
    store.put_window(1, _file(tmp_path, "w1.mp4", bytes(range(255, -1, -1)) * 8))
    path = store._wp(1)
    data = store.fs.cat_file(path)
    if damage == "flip":
        data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        store.fs.pipe_file(path, data)
    elif damage == "truncate":
        store.fs.pipe_file(path, data[:-10])
    else:
        store.fs.rm(path)
    reopened = JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    with pytest.warns(UserWarning, match=r"window 1 file .*00001\.mkv"):
        assert reopened.done() == {0}
    # re-rendering it makes it done again
    reopened.put_window(1, _file(tmp_path, "w1b.mp4", b"fresh"))
    assert reopened.done() == {0, 1}


def test_unrecorded_window_file_is_not_done(url, tmp_path):
    store = JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    store.fs.pipe_file(store._wp(1), b"left by a crash before the manifest update")
    assert store.done() == set()


@pytest.mark.parametrize("what", ["plan", "settings", "inputs"])
def test_different_job_refused(url, what):
    JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    plan, settings, inputs = PLAN, SETTINGS, INPUTS
    if what == "plan":
        p = json.loads(PLAN)
        p["windows"][1]["seed"] = 99
        plan = json.dumps(p)
    elif what == "settings":
        settings = {**SETTINGS, "steps": 8}
    else:
        inputs = {**INPUTS, "audio": "c" * 64}
    with pytest.raises(StoreError, match=f"different job.*{what}"):
        JobStore.create_or_open(url, plan, settings, inputs)


def test_not_a_manifest(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "manifest.json").write_text("{half a manif")
    with pytest.raises(StoreError, match="not valid JSON"):
        JobStore.create_or_open(str(tmp_path / "job"), PLAN, SETTINGS, INPUTS)


def _check_failure_kept_state(url, tmp_path, store, before_manifest):
    assert store.done() == {0}
    again = JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    assert again.manifest == before_manifest
    assert again.done() == {0}


def test_unwritable_store_read_only_dir(tmp_path):
    url = str(tmp_path / "job")
    store = JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    store.put_window(0, _file(tmp_path, "w0.mp4", b"zero" * 10))
    before = json.loads(json.dumps(store.manifest))
    os.chmod(tmp_path / "job" / "windows", 0o555)
    os.chmod(tmp_path / "job", 0o555)
    try:
        if os.access(tmp_path / "job", os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only "
                        "(the ENOSPC test covers the failure path)")
        with pytest.raises(StoreError, match="cannot store window 1"):
            store.put_window(1, _file(tmp_path, "w1.mp4", b"one" * 10))
        _check_failure_kept_state(url, tmp_path, store, before)
    finally:
        os.chmod(tmp_path / "job", 0o755)
        os.chmod(tmp_path / "job" / "windows", 0o755)


@pytest.mark.parametrize("failing", ["put_file", "manifest"])
def test_disk_full_raises_store_error_and_loses_nothing(url, tmp_path, monkeypatch, failing):
    store = JobStore.create_or_open(url, PLAN, SETTINGS, INPUTS)
    store.put_window(0, _file(tmp_path, "w0.mp4", b"zero" * 10))
    before = json.loads(json.dumps(store.manifest))
    fs = store.fs

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "put_file":
        monkeypatch.setattr(fs, "put_file", full)
    else:
        monkeypatch.setattr(store, "_write_bytes", full)
    with pytest.raises(StoreError, match="No space left"):
        store.put_window(1, _file(tmp_path, "w1.mp4", b"one" * 10))
    monkeypatch.undo()
    assert store.manifest == before  # the cached manifest did not change either
    _check_failure_kept_state(url, tmp_path, store, before)
    leftovers = [p for p in fs.find(store.root) if os.path.basename(p).startswith(".")]
    assert leftovers == []
    # after the failure the job goes on
    store.put_window(1, _file(tmp_path, "w1.mp4", b"one" * 10))
    assert store.done() == {0, 1}


def test_leftovers_of_killed_writers_are_swept(tmp_path, monkeypatch):
    """A SIGKILL mid-write leaves a hidden temp file next to the output, and a killed replica
    its scratch folder: the next writer of that file / the next window on the host removes them
    (only the dead ones: a live writer's temp file and a live process's folder stay)."""
    import os
    import tempfile
    import time

    from infinitetalk_dist.farm.store import SCRATCH, scratch_dir
    from infinitetalk_dist.media.atomic import STALE_S, atomic_write

    final = tmp_path / "film.mp4"
    stale, fresh = tmp_path / ".film.mp4.deadbeef.part", tmp_path / ".film.mp4.cafebabe.part"
    stale.write_bytes(b"half"), fresh.write_bytes(b"live")
    os.utime(stale, (time.time() - STALE_S - 60,) * 2)
    with atomic_write(final) as tmp:
        open(tmp, "wb").write(b"done")
    assert final.read_bytes() == b"done" and not stale.exists() and fresh.exists()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{SCRATCH}999999999-abc"  # no such pid
    mine = tmp_path / f"{SCRATCH}{os.getpid()}-xyz"
    dead.mkdir(), mine.mkdir()
    made = scratch_dir()
    assert not dead.exists() and mine.exists() and os.path.basename(made).startswith(f"{SCRATCH}{os.getpid()}-")


def test_a_store_taken_over_by_another_job_is_never_stitched_or_recorded(tmp_path):
    """Issue 19: job A runs, its manifest is removed and job B starts in the same folder: A can
    neither record a window into B's manifest nor stitch (its windows or B's); a window file
    replaced after it was recorded is refused at the stitch."""
    from types import SimpleNamespace

    from infinitetalk_dist.farm.store import JobStore, StoreError

    url = tmp_path / "job"
    plan = json.dumps({"windows": [{"index": 0}, {"index": 1}]})
    win = tmp_path / "w.mkv"
    win.write_bytes(b"window zero of A")
    a = JobStore.create_or_open(url, plan, {"steps": 4}, {"audio": "aa"})
    a.put_window(0, win)
    windows = [SimpleNamespace(index=0)]
    assert [p for _, p in a.iter_windows(windows)]  # A's own window stitches
    (url / "manifest.json").unlink()
    b = JobStore.create_or_open(url, plan, {"steps": 8}, {"audio": "aa"})  # another job, same folder
    win.write_bytes(b"window one of A")
    with pytest.raises(StoreError, match="belongs to another job"):
        a.put_window(1, win)
    with pytest.raises(StoreError, match="belongs to another job"):
        list(a.iter_windows(windows))
    win.write_bytes(b"window zero of B")
    b.put_window(0, win)
    (url / "windows" / f"00000.{b.window_ext}").write_bytes(b"window zero of B, edited!")  # after recording
    with pytest.raises(StoreError, match="not the file this job recorded"):
        list(b.iter_windows(windows))


def test_one_driver_per_store_with_a_lease_a_dead_one_is_taken_over(tmp_path, caplog):
    import logging

    from infinitetalk_dist.farm.lease import LOCK, StoreLease
    from infinitetalk_dist.farm.store import JobStore, StoreError

    store = JobStore(tmp_path / "job")
    first = StoreLease(store, "film.mp4", ttl_s=60, beat_s=0.05)
    with first:
        import time

        beat = first.read()["heartbeat"]
        time.sleep(0.3)
        assert first.read()["heartbeat"] > beat  # kept fresh by its thread
        with pytest.raises(StoreError, match=r"is in use by .*this job"):
            StoreLease(store, "film.mp4").acquire()
        with pytest.raises(StoreError, match="another job"):
            StoreLease(store, "other.mp4").acquire()
    assert not (tmp_path / "job" / LOCK).exists() and not (tmp_path / "job").exists()  # released, no empty folder
    # A driver killed without releasing: its heartbeat ages past the ttl and the next one takes over.
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / LOCK).write_text(json.dumps({"owner": "gone:1:x", "job": "film.mp4",
                                                      "heartbeat": 0.0, "ttl_s": 60}))
    with caplog.at_level(logging.WARNING), StoreLease(store, "film.mp4", beat_s=10) as lease:
        assert lease.read()["owner"] == lease.owner
    assert "taking over the lease of gone:1:x" in caplog.text


def test_a_running_job_holds_its_store(tmp_path, capsys):
    """The issue's case: a second `run` on a store whose driver is alive is refused at once."""
    from infinitetalk_dist.farm.lease import StoreLease
    from infinitetalk_dist.farm.store import JobStore
    from infinitetalk_dist.launch.cli import main
    from infinitetalk_dist.samples import write_demo_inputs

    image, audio = write_demo_inputs(tmp_path / "in", seconds=1.0)
    out = tmp_path / "film.mp4"
    with StoreLease(JobStore(f"{out}.job"), "someone else's run"):
        assert main(["run", "--image", str(image), "--audio", str(audio), "-o", str(out), "--no-progress",
                     "sampler.steps=1", "sampler.frame_num=9", "sampler.motion_frame=1"]) == 1
    assert "is in use by" in capsys.readouterr().err and not out.exists()
