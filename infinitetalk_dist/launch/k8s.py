"""Kubernetes manifests for a dubbing job, rendered from the job's config (``k8s render``).

One source of truth: the same composed config that ``run`` executes. The RayJob's entrypoint
is ``python -m infinitetalk_dist.launch.ray_job run`` followed by every config value that
differs from the defaults, so the pod runs exactly the job that was rendered; cluster sizes
come from ``farm.replicas`` x ``farm.gpus_per_replica`` and the pod settings from ``k8s.*``.

Files written to the output folder:

    raycluster.yaml            a standing RayCluster (CPU head + GPU workers) for `ray job submit`
    rayjob-<name>.yaml         a RayJob per title: its own cluster, the farm entry, deleted when done
    job-local-<name>.yaml      the plain-Kubernetes path: one pod, farm=local (no Ray; one replica)
    podmonitor.yaml            Prometheus Operator PodMonitor for the farm's metrics on the head pod
    grafana-dashboard.yaml     ConfigMap (label grafana_dashboard=1) holding grafana-dashboard.json
    grafana-dashboard.json     the dashboard itself (throughput, windows by state, s/step, memory, retries)

Layout on the pods: official weights read-only at ``/weights`` (``k8s.weights_claim``), inputs
and outputs at ``/data`` (``k8s.data_claim``; or an object-store ``farm.store`` URL), ``/dev/shm``
a memory-backed emptyDir (Ray's object store and NCCL need more than the default 64 MiB).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from infinitetalk_dist.media.atomic import atomic_write

__all__ = ["config_overrides", "dashboard", "job_manifests", "render", "write_manifests"]

PACKAGE = Path(__file__).resolve().parents[1]
DASHBOARD = PACKAGE / "launch" / "grafana_dashboard.json"
APP = "infinitetalk-dist"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _value(v: Any) -> str:
    """A Hydra override value that composes back to ``v``: strings quoted where needed, lists and
    dicts in Hydra's own grammar with every element by these rules (a YAML flow dump would leave
    a ``${`` or a quote in a list's string, e.g. a LoRA path, to Hydra's parser)."""
    if isinstance(v, str):
        plain = re.fullmatch(r"[A-Za-z_/.][\w./@+-]*", v) and v.lower() not in ("null", "true", "false", "none")
        return v if plain else _quoted(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        for k in v:
            if not re.fullmatch(r"[A-Za-z_][\w-]*", str(k)):
                raise ValueError(f"cannot write the key {k!r} into a Hydra override (letters, digits, _ and - only)")
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _quoted(text: str) -> str:
    """A Hydra quoted override value that composes back to ``text``: ``${`` escaped for OmegaConf
    (a literal, not an interpolation), then Hydra's rule — backslashes are literal except before a
    quote or at the end, where each is doubled — so ``a\\d`` arrives as ``a\\d``, not doubled."""
    from .config import literal

    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", literal(text))
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def config_overrides(cfg: DictConfig, defaults: DictConfig) -> list[str]:
    """``++key=value`` for every config value that differs from ``defaults`` (sorted), the
    ``k8s`` block left out: replaying them on the defaults gives ``cfg`` back."""
    now = _flatten(OmegaConf.to_container(cfg, resolve=True))
    base = _flatten(OmegaConf.to_container(defaults, resolve=True))
    return [f"++{k}={_value(v)}" for k, v in sorted(now.items())
            if not k.startswith("k8s.") and (k not in base or base[k] != v)]


def _name(cfg: DictConfig) -> str:
    raw = cfg.k8s.name or Path(str(cfg.output)).stem
    name = re.sub(r"[^a-z0-9-]+", "-", str(raw).lower()).strip("-")[:40].strip("-")
    if not name:
        raise ValueError(f"cannot make a Kubernetes name from {raw!r}; set k8s.name")
    return name


OUTPUTS = (".mp4", ".mov", ".mkv")


def title_configs(cfg: DictConfig, titles: str) -> list[DictConfig]:
    """One job config per row of the titles CSV (``name,audio`` and ``video`` or ``image``;
    optional ``audio2``, ``output``), each checked: a row without its own audio or picture, two
    names that become the same Kubernetes name (their manifests would overwrite each other), an
    output that is not an absolute .mp4/.mov/.mkv path or climbs with ``..`` -> one ValueError.
    The default output is ``/data/out/<kubernetes name>.mp4``, so a name cannot leave /data/out."""
    import csv

    from .config import literal

    with open(titles, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = set(reader.fieldnames or ())
    if not {"name", "audio"} <= header or not header & {"video", "image"}:
        raise ValueError(f"{titles}: the header needs name, audio and video or image (has {sorted(header)})")
    if not rows:
        raise ValueError(f"{titles}: a header and no title rows")
    out, seen = [], {}
    for n, row in enumerate(rows, start=2):  # line numbers as an editor shows them
        where = f"{titles} line {n} ({row.get('name')!r})"
        if not (row.get("audio") or "").strip() or not ((row.get("video") or row.get("image") or "").strip()):
            raise ValueError(f"{where}: needs its own audio and video or image")
        title = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # escaped strings stay escaped
        title.k8s.name = literal(row["name"])
        name = _name(title)
        if name in seen:
            raise ValueError(f"{where}: its Kubernetes name {name!r} is also line {seen[name]}'s")
        seen[name] = n
        for key in ("video", "image", "audio", "audio2"):
            if row.get(key):
                title.input[key] = literal(row[key])
        output = row.get("output") or f"/data/out/{name}.mp4"
        p = Path(output)
        if not p.is_absolute() or ".." in p.parts or p.suffix.lower() not in OUTPUTS:
            raise ValueError(f"{where}: output {output!r} must be an absolute {'/'.join(OUTPUTS)} path without '..'")
        title.output = literal(output)
        out.append(title)
    return out


def _volumes(k: DictConfig) -> tuple[list, list]:
    volumes = [
        {"name": "weights", "persistentVolumeClaim": {"claimName": k.weights_claim, "readOnly": True}},
        {"name": "data", "persistentVolumeClaim": {"claimName": k.data_claim}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{int(k.shm_gi)}Gi"}},
    ]
    mounts = [{"name": "weights", "mountPath": "/weights", "readOnly": True},
              {"name": "data", "mountPath": "/data"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    return volumes, mounts


def _pod(cfg: DictConfig, *, role: str, gpus: int, cpu: float, memory_gi: float, command=None,
         ports=(), restart: str | None = None) -> dict:
    k = cfg.k8s
    volumes, mounts = _volumes(k)
    resources = {"cpu": str(cpu), "memory": f"{int(memory_gi)}Gi"}
    limits = dict(resources)
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": role, "image": str(k.image), "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": resources, "limits": limits},
        "volumeMounts": mounts,
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }
    if command:
        container["command"] = list(command)
    if ports:
        container["ports"] = [{"name": n, "containerPort": int(p)} for n, p in ports]
    spec: dict = {"containers": [container], "volumes": volumes,
                  "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}}
    if gpus:
        spec["nodeSelector"] = OmegaConf.to_container(k.gpu_node_selector) or {}
        spec["tolerations"] = OmegaConf.to_container(k.tolerations) or []
    if restart:
        spec["restartPolicy"] = restart
    return {"metadata": {"labels": {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": role}},
            "spec": spec}


def _cluster_spec(cfg: DictConfig) -> dict:
    k, f = cfg.k8s, cfg.farm
    gpus = int(f.get("gpus_per_replica", 1))
    replicas = int(f.replicas)
    metrics = [("dashboard", 8265), ("gcs", 6379), ("client", 10001), ("farm-metrics", int(k.metrics_port))]
    head = _pod(cfg, role="ray-head", gpus=0, cpu=k.head.cpu, memory_gi=k.head.memory_gi, ports=metrics)
    # One worker pod per replica: a replica's G GPUs are on one node by construction (STRICT_PACK).
    worker = _pod(cfg, role="ray-worker", gpus=gpus, cpu=max(1, gpus) * k.worker.cpu_per_gpu,
                  memory_gi=max(1, gpus) * k.worker.memory_gi_per_gpu)
    return {
        "rayVersion": str(k.ray_version),
        "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"}, "template": head},
        "workerGroupSpecs": [{
            "groupName": "gpu", "replicas": replicas, "minReplicas": replicas, "maxReplicas": replicas,
            "rayStartParams": {}, "template": worker,
        }],
    }


def _labels(cfg: DictConfig) -> dict:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": _name(cfg)}


def _meta(cfg: DictConfig, name: str) -> dict:
    return {"name": name, "namespace": str(cfg.k8s.namespace), "labels": _labels(cfg)}


def job_manifests(cfg: DictConfig, defaults: DictConfig) -> dict[str, Any]:
    """The two per-title documents: ``rayjob-<name>.yaml`` (own cluster, the farm on Ray) and
    ``job-local-<name>.yaml`` (one pod, farm=local)."""
    name, k = _name(cfg), cfg.k8s
    args = ["run", *config_overrides(cfg, defaults)]
    if not any(a.startswith("++farm.backend=") for a in args):
        args.append("++farm.backend=ray")
    entry = " ".join(["python", "-m", "infinitetalk_dist.launch.ray_job", *(shlex.quote(a) for a in args)])
    if f"++farm.metrics_port={int(k.metrics_port)}" not in args:
        entry += f" ++farm.metrics_port={int(k.metrics_port)}"
    if not any(a.startswith("++farm.metrics_addr=") for a in args):
        entry += " ++farm.metrics_addr=0.0.0.0"  # the PodMonitor scrapes the pod's address
    rayjob = {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(cfg, f"dub-{name}"),
        "spec": {"entrypoint": entry, "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": int(k.ttl_s),
                 "submissionMode": "K8sJobMode", "rayClusterSpec": _cluster_spec(cfg)},
    }
    local_args = [a for a in args if not a.startswith(("++farm.backend=", "++farm.gpus_per_replica="))]
    local_pod = _pod(cfg, role="farm-local", gpus=max(1, int(cfg.farm.get("gpus_per_replica", 1))),
                     cpu=k.worker.cpu_per_gpu, memory_gi=k.worker.memory_gi_per_gpu, restart="Never",
                     command=["infinitetalk-dist", *local_args, "++farm.backend=local"])
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(cfg, f"dub-local-{name}"),
           "spec": {"backoffLimit": 3, "ttlSecondsAfterFinished": int(k.ttl_s), "template": local_pod}}
    return {f"rayjob-{name}.yaml": rayjob, f"job-local-{name}.yaml": job}


def render(cfg: DictConfig, defaults: DictConfig, *, jobs: bool = True) -> dict[str, Any]:
    """file name -> manifest document(s) (dicts; the dashboard as its JSON text). ``jobs=False``
    leaves out the per-title documents (:func:`job_manifests`)."""
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": _meta(cfg, "infinitetalk"),
               "spec": _cluster_spec(cfg)}
    podmonitor = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": _meta(cfg, "infinitetalk-farm"),
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "ray-head"}},
                 "podMetricsEndpoints": [{"port": "farm-metrics", "path": "/metrics", "interval": "15s"}]},
    }
    board = dashboard()
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {**_meta(cfg, "infinitetalk-dashboard"), "labels": {**_labels(cfg), "grafana_dashboard": "1"}},
                 "data": {"infinitetalk-dist.json": board}}
    return {"raycluster.yaml": cluster, **(job_manifests(cfg, defaults) if jobs else {}),
            "podmonitor.yaml": podmonitor, "grafana-dashboard.yaml": configmap, "grafana-dashboard.json": board}


def dashboard() -> str:
    """The Grafana dashboard JSON (kept as a file in the package; metric names checked by tests)."""
    return json.dumps(json.loads(DASHBOARD.read_text()), indent=1)


def write_manifests(docs: dict[str, Any], out: str | Path) -> list[Path]:
    """Write each manifest (YAML, or the dashboard JSON) into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, doc in docs.items():
        text = doc if isinstance(doc, str) else "---\n" + yaml.safe_dump(doc, sort_keys=False, width=120)
        with atomic_write(out / fname) as tmp:
            Path(tmp).write_text(text)
        paths.append(out / fname)
    return paths
