"""What the Ray farm tests share: the tiny job's settings, the job store's records, the metrics
endpoint, and Ray nodes started with ``ray start`` as a user would (own process groups)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

FAST = ["sampler.steps=2", "sampler.frame_num=17", "sampler.motion_frame=5", "--no-progress"]
# 4 s of audio -> 3 windows (44/43/33 frames) balanced over 2 replicas.
FARM = ["farm.min_s=1.0", "farm.target_s=1.5", "farm.overlap_s=0.4", "farm.replicas=2"]
RAY = ["farm=ray", "farm.gpus_per_replica=1"]
REPO = Path(__file__).resolve().parents[2]
RAY_BIN = str(Path(sys.executable).with_name("ray"))  # the venv's, activated or not


def timeline(out: Path) -> list[dict]:
    return json.loads((Path(f"{out}.job") / "timeline.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    text = text.replace('itd_job="film.mp4",', "").replace('{itd_job="film.mp4"}', "")  # every sample's job label
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def ray_start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``ray start --block ARGS`` in its own process group (stop it with :func:`ray_stop`)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([RAY_BIN, "start", "--block", "--disable-usage-stats", *args], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ray_stop(p: subprocess.Popen) -> None:
    """End a node started by :func:`ray_start` and every process of its group."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            time.sleep(0.5)  # the group's other processes follow their leader
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes():
    """``(pid, name, process group, argv)`` of every process on this machine (Linux /proc)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            argv = (d / "cmdline").read_text().split("\0")[:-1]
        except OSError:  # gone meanwhile
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        yield int(d.name), name, int(rest[2]), argv  # fields after the name: state, ppid, pgrp, ...


def child(p: subprocess.Popen, name: str) -> int:
    """The PID of the process called ``name`` in the group of node ``p``."""
    for pid, comm, group, _ in processes():
        if comm == name and group == p.pid:
            return pid
    raise LookupError(f"no {name} process in the group of pid {p.pid}")


def when_rendering(port: int, act, replicas: int = 2) -> tuple[list, list[dict]]:
    """A thread that calls ``act()`` once ``replicas`` windows render (seen on the metrics
    endpoint at ``port``, half a second into them). Returns ``(acted, seen)``: what ``act``
    returned, once it has, and every scrape so far."""
    acted: list = []
    seen: list[dict] = []

    def watch():
        deadline = time.time() + 180
        while time.time() < deadline and not acted:
            try:
                seen.append(scrape(port))
            except OSError:
                time.sleep(0.1)
                continue
            if seen[-1].get('itd_windows{state="running"}', 0) >= replicas:
                time.sleep(0.5)  # well inside the windows (~3 s each)
                acted.append(act())
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    return acted, seen
