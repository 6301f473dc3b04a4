"""The job config: Hydra structured configs (the schema) behind ``infinitetalk_dist/conf/*.yaml``.

The schema is made of the layers' own typed options (``pipeline.request``, ``farm.options``)
plus the launch-only blocks below, registered in Hydra's ConfigStore as ``itd_schema``:
``conf/config.yaml`` lists it first in its defaults, so every group option (``model=14b``,
``sampler=lightx2v``, ``farm=ray``) and every ``key=value`` override is type-checked while
composing. :func:`to_config` turns the composed ``DictConfig`` into the typed :class:`Config`
(running the value checks); nothing below the launch layer sees a ``DictConfig``.

Site and job files: ``compose`` also searches ``$INFINITETALK_CONF`` (default: ``./conf`` when it
exists), so ``+site=cluster +job=film_dub`` picks ``conf/site/cluster.yaml`` and
``conf/job/film_dub.yaml`` (the repository's top-level ``conf/`` has examples).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.farm.options import FarmOptions
from infinitetalk_dist.pipeline.request import GenerateRequest

__all__ = ["Config", "K8sOptions", "SmokeOptions", "compose", "literal", "literal_strings", "search_path",
           "to_config"]

CONF_ENV = "INFINITETALK_CONF"


@dataclass
class SmokeOptions:
    """``smoke``: one forward of every model on seeded random inputs."""

    frames: int = 9
    """Frames (4n+1)."""
    size: list[int] = field(default_factory=lambda: [64, 64])
    """Picture [height, width]."""
    speakers: int = 1
    """1 or 2."""
    repeats: int = 1
    """Timed repeats of each model."""

    def __post_init__(self):
        if (self.frames - 1) % 4 or self.frames < 1:
            raise InputError(f"smoke.frames must be 4n+1, got {self.frames}")
        if self.speakers not in (1, 2) or len(self.size) != 2:
            raise InputError(f"smoke: 1 or 2 speakers and size [height, width], got {self.speakers}, {self.size}")


@dataclass
class K8sOptions:
    """``k8s render``: KubeRay manifests for this job (launch/k8s.py); cluster size from farm.*."""

    name: str | None = None
    """Job name (null: from the output file's name)."""
    namespace: str = "dubbing"
    """Namespace of every object."""
    image: str = "ghcr.io/infinitetalk-dist/infinitetalk-dist:0.1.0"
    """Image built from ./Dockerfile (weights not inside)."""
    ray_version: str = "2.60.0"
    """Ray version of the RayCluster."""
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    """Node selector of the GPU pods."""
    tolerations: list[Any] = field(default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                            "effect": "NoSchedule"}])
    """Tolerations of the GPU pods."""
    weights_claim: str = "infinitetalk-weights"
    """PVC holding the official weights folder, mounted read-only at /weights."""
    data_claim: str = "infinitetalk-data"
    """PVC for inputs and outputs, mounted at /data."""
    shm_gi: int = 32
    """/dev/shm (memory emptyDir) for Ray's object store and NCCL, GiB."""
    head: dict[str, Any] = field(default_factory=lambda: {"cpu": 4, "memory_gi": 16})
    """Head pod resources."""
    worker: dict[str, Any] = field(default_factory=lambda: {"cpu_per_gpu": 8, "memory_gi_per_gpu": 100})
    """Worker pod resources per GPU."""
    metrics_port: int = 9400
    """The farm's Prometheus endpoint on the head pod (PodMonitor port farm-metrics)."""
    ttl_s: int = 3600
    """RayJob/Job objects are deleted this long after they finish."""
    out: str | None = None
    """Folder for the manifests (null: k8s/ next to the output)."""
    titles: str | None = None
    """CSV (name,video,audio[,output]): one RayJob per title, the rest of the config shared."""


@dataclass
class Config(GenerateRequest):
    """Every option of every command: the render (:class:`GenerateRequest`) plus the farm,
    Kubernetes and smoke blocks."""

    farm: FarmOptions = field(default_factory=FarmOptions)
    """`plan` / `run`: a long job as windows (farm=local | farm=ray)."""
    k8s: K8sOptions = field(default_factory=K8sOptions)
    """`k8s render`."""
    smoke: SmokeOptions = field(default_factory=SmokeOptions)
    """`smoke`."""


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="itd_schema", node=Config)


def search_path() -> Path | None:
    """The site/job config folder: ``$INFINITETALK_CONF``, else ``./conf`` if it exists."""
    given = os.environ.get(CONF_ENV)
    if given:
        return Path(given).resolve()
    here = Path("conf")
    return here.resolve() if here.is_dir() else None


def compose(overrides: list[str]) -> DictConfig:
    """The composed, schema-checked config for ``overrides`` (Hydra override syntax)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    _register()
    extra = search_path()
    if extra is not None:
        overrides = [f"hydra.searchpath=[file://{extra}]", *overrides]
    with initialize_config_module(version_base="1.3", config_module="infinitetalk_dist.conf"):
        return hydra_compose(config_name="config", overrides=overrides)


def literal(text: str) -> str:
    """``text`` escaped for OmegaConf so that a ``${...}`` in it stays text (each ``${`` after k
    backslashes gets 2k + 1 of them: the backslashes stay, the interpolation does not happen)."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)


def literal_strings(node) -> None:
    """Every string in the composed config ``node`` is data: a prompt or a path holding
    ``${oc.env:SECRET}`` must not expand the renderer's environment (or fail on other ``${...}``).
    Our own configs use no interpolation, so every ``${`` is the user's."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for k in keys:
        child = node._get_node(k)
        if isinstance(child, (DictConfig, ListConfig)):
            if not child._is_none() and not child._is_missing():
                literal_strings(child)
            continue
        raw = child._value()
        if isinstance(raw, str) and "${" in raw:
            node[k] = literal(raw)


def to_config(cfg: DictConfig) -> Config:
    """The typed config (value checks run here: one :class:`InputError` for a bad value)."""
    return OmegaConf.to_object(cfg)
