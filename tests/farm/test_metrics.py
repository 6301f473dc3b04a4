"""The farm's Prometheus metrics: the names it exports are METRIC_NAMES (what the Grafana
dashboard and the k8s manifests are checked against), and the values follow the windows."""

from prometheus_client import generate_latest

from infinitetalk_dist.farm.metrics import METRIC_NAMES, FarmMetrics


def _samples(m: FarmMetrics, job: str = "job") -> dict[str, float]:
    """Sample name (with its labels but the job's) -> value; every sample carries the job's label."""
    text = generate_latest(m.registry).decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(f'itd_job="{job}"' in line for line in lines)
    bare = [line.replace(f'itd_job="{job}",', "").replace(f'{{itd_job="{job}"}}', "") for line in lines]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in bare}


def test_exported_names_are_the_documented_ones():
    m = FarmMetrics(total=5, done=1)
    m.started()
    m.finished(frames=44, seconds=3.0, step_seconds=[0.5, 0.7], replica=0, gpu_peak_bytes=123)
    exported = {s.name + ("_total" if s.type == "counter" else "") for s in m.registry.collect()}
    assert exported == set(METRIC_NAMES)


def test_values_follow_the_windows():
    m = FarmMetrics(total=3, job="film.mp4")
    m.started()
    m.started()
    m.retried()
    m.started()
    m.finished(frames=40, seconds=2.0, step_seconds=[0.1, 0.2], replica=1, gpu_peak_bytes=2**30)
    m.failed()
    s = _samples(m, "film.mp4")
    assert s['itd_windows{state="queued"}'] == 1 and s['itd_windows{state="running"}'] == 0
    assert s['itd_windows{state="done"}'] == 1 and s['itd_windows{state="failed"}'] == 1
    assert s["itd_window_retries_total"] == 1 and s["itd_frames_rendered_total"] == 40
    assert s["itd_dit_step_seconds_count"] == 2 and s['itd_gpu_memory_peak_bytes{replica="1"}'] == 2**30


def test_no_gauge_is_named_total_and_a_taken_port_falls_back(caplog):
    import logging

    m = FarmMetrics(total=2)
    assert not [s.name for s in m.registry.collect() if s.type == "gauge" and s.name.endswith("_total")]
    first, second = FarmMetrics(total=1), FarmMetrics(total=1)
    try:
        port = first.serve(0)
        with caplog.at_level(logging.WARNING):
            other = second.serve(port)  # two drivers on one host asking for the same port
        assert other != port and f"metrics port {port} is taken" in caplog.text
    finally:
        first.close(), second.close()


def test_the_endpoint_binds_loopback_by_default():
    m = FarmMetrics(total=1)
    try:
        m.serve(0)
        assert m.server.server_address[0] == "127.0.0.1"
    finally:
        m.close()
