"""Losing a Ray node, not only an actor, and the GCS restarting under a running job.

- Two worker nodes on this machine (``ray start``, one CPU each, so each holds one replica), one
  node's raylet killed while both replicas render: the job finishes on the node that is left,
  with the farm=local film's bytes; then the last node lost under a one-replica job: one error
  line after ``farm.placement_timeout_s``, not a wait for resources that never come back.
- The head's GCS killed and started again while both replicas render, with Ray's embedded
  RocksDB GCS storage (``RAY_gcs_storage=rocksdb``; the Redis backend needs a Redis server this
  machine lacks): the replicas and their windows live on, the job finishes, same bytes. The head
  runs without ``--block`` there: a blocking ``ray start`` tears its node down as soon as any of
  its processes (the GCS too) exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

ray = pytest.importorskip("ray")

from infinitetalk_dist.launch.cli import main  # noqa: E402
from tests.farm.raykit import (RAY, RAY_BIN, child, free_port, processes, ray_start, ray_stop, timeline,  # noqa: E402
                               when_rendering)

# The GCS declares a silent node dead after failure_threshold missed checks (default ~30 s).
FAST_HEALTH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
               "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def _wait_nodes(n: int, timeout: float = 60.0) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = [x for x in ray.nodes() if x["Alive"]]
        if len(alive) >= n:
            return alive
        time.sleep(0.5)
    raise AssertionError(f"only {len(alive)} of {n} Ray nodes came up")


@pytest.mark.slow
def test_node_lost_mid_window_job_finishes_on_the_other_node(inputs, reference, tmp_path, capsys):
    """Nodes a and b hold one replica each (the head holds none); b's raylet is killed mid-window:
    the job ends on a, same bytes. Then a one-replica job on a, whose raylet is killed too: no
    node can take the replica back, and the job stops after farm.placement_timeout_s, one line."""
    if ray.is_initialized():
        ray.shutdown()
    port, metrics = free_port(), free_port()
    head = ray_start("--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false", env=FAST_HEALTH)
    nodes = {}
    try:
        time.sleep(2)
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        for n, name in enumerate(("a", "b"), start=2):  # one after the other: two at once race for ports
            nodes[name] = ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=1", f'--resources={{"node_{name}": 1}}')
            alive = _wait_nodes(n, timeout=90)
        b_id = next(x["NodeID"] for x in alive if "node_b" in x["Resources"])

        def kill_raylet(name: str):
            def kill() -> int:
                pid = child(nodes[name], "raylet")
                os.kill(pid, signal.SIGKILL)
                return pid
            return kill

        killed = when_rendering(metrics, kill_raylet("b"))[0]
        out = tmp_path / "film.mp4"
        assert main(["run", *inputs, *RAY, "-o", str(out), f"farm.metrics_port={metrics}"]) == 0
        assert killed, "the test never saw both replicas rendering"
        assert not next(x for x in ray.nodes() if x["NodeID"] == b_id)["Alive"]
        assert out.read_bytes() == reference
        tl = timeline(out)
        lost = [a for a in tl if a["outcome"] == "lost"]
        assert len(lost) == 1, tl
        done = [a for a in tl if a["outcome"] == "done"]
        assert sorted(a["window"] for a in done) == [0, 1, 2]
        # the lost window was rendered again by the replica on the node that is left
        again = next(a for a in done if a["window"] == lost[0]["window"])
        assert again["replica"] != lost[0]["replica"] and again["start"] >= lost[0]["end"]

        capsys.readouterr()
        metrics = free_port()  # the first job's port may not be free again yet
        killed = when_rendering(metrics, kill_raylet("a"), replicas=1)[0]
        t0 = time.perf_counter()
        alone = tmp_path / "alone" / "film.mp4"  # film.mp4: the job label scrape() expects
        assert main(["run", *inputs, *RAY, "farm.replicas=1", "farm.placement_timeout_s=3", "-o", str(alone),
                     f"farm.metrics_port={metrics}"]) == 1
        assert killed and time.perf_counter() - t0 < 120
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and "no replica could be rebuilt within 3 s" in err[0], err
        assert not alone.exists()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in (*nodes.values(), head):
            ray_stop(p)


def _kill_cluster(port: int) -> None:
    """SIGKILL every process of the Ray cluster whose GCS listens on ``port`` (its GCS, raylet,
    agents and workers name that address on their command lines), and no other Ray's."""
    for pid, _, _, argv in processes():
        if pid != os.getpid() and any(a == f"--gcs_server_port={port}" or ("gcs" in a and a.endswith(f":{port}"))
                                      for a in argv):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _gcs_pid(port: int) -> int:
    """The PID of the GCS listening on ``port`` (another Ray on this machine is left alone)."""
    for pid, name, _, argv in processes():
        if name == "gcs_server" and f"--gcs_server_port={port}" in argv:
            return pid
    raise LookupError(f"no GCS on port {port}")


def _restart_gcs(port: int) -> int:
    """SIGKILL the GCS and start it again with its own command line and environment (what a
    process supervisor or the head pod's restart does); returns the new GCS's PID."""
    old = _gcs_pid(port)
    with open(f"/proc/{old}/cmdline") as f:
        cmd = f.read().split("\0")[:-1]
    with open(f"/proc/{old}/environ") as f:
        env = dict(kv.split("=", 1) for kv in f.read().split("\0") if "=" in kv)
    os.kill(old, signal.SIGKILL)
    time.sleep(1.0)
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).pid


@pytest.mark.slow
def test_gcs_restart_mid_window_job_finishes(inputs, reference, tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    port, metrics = free_port(), free_port()
    env = {**os.environ, "RAY_gcs_storage": "rocksdb", "RAY_gcs_storage_path": str(tmp_path / "gcs")}
    subprocess.run([RAY_BIN, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        restarted = when_rendering(metrics, lambda: _restart_gcs(port))[0]
        out = tmp_path / "film.mp4"
        assert main(["run", *inputs, *RAY, "-o", str(out), f"farm.metrics_port={metrics}"]) == 0
        assert restarted, "the test never saw both replicas rendering"
        assert _gcs_pid(port) == restarted[0]  # the job ran on through the new GCS
        assert out.read_bytes() == reference
        tl = timeline(out)
        assert [a["outcome"] for a in tl] == ["done"] * 3  # no actor or window was lost
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _kill_cluster(port)  # started without --block: no process group to end
