"""The farm on Ray: R replicas of G actors render the job's windows, longest first (DESIGN.md 7).

    run_job_ray(cfg) -> plan + store (farm.local.prepare_job)
                     -> R placement groups (STRICT_PACK: a replica's G GPUs on one node)
                     -> G ReplicaWorker actors per group, one torch.distributed group each
                     -> windows to whichever replica is free; rank 0 uploads the window file,
                        the driver records it in the manifest (the only manifest writer)
                     -> stitch, job report, metrics

Faults: an actor that dies (killed, OOM, node lost) or a window that raises makes the whole
replica be rebuilt (new actors in the same placement group; Ray re-places the group if its
node is gone) and the window go back to the queue; a window failing ``farm.max_attempts``
times fails the job with its cause. Store errors fail the job at once (retrying cannot help).
Finished windows are in the store whatever happens; re-running the command resumes.

Connecting: ``farm.address``, else the cluster ``ray job submit`` / ``RAY_ADDRESS`` names,
else a new local Ray instance that ends with the job. A caller that already called
``ray.init`` (tests, notebooks) is used as is.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from infinitetalk_dist.pipeline.media import WrittenVideo

from .local import Job, farm_options, prepare_job
from .metrics import FarmMetrics
from .replica import ReplicaWorker
from .schedule import Attempt, WindowFailed, WindowQueue
from .store import StoreError

__all__ = ["FarmError", "run_job_ray"]

log = logging.getLogger(__name__)


class FarmError(RuntimeError):
    """The farm could not finish the job (a window failed every attempt, replicas could not be
    placed, the store failed). Finished windows stay in the store; re-run to resume."""


@dataclass
class _Replica:
    index: int
    pg: object
    actors: list = field(default_factory=list)
    pids: list = field(default_factory=list)
    builds: int = 0


@dataclass
class _Task:
    kind: str  # setup | render
    replica: _Replica
    pending: set
    result: object = None
    window: object = None
    attempt: Attempt | None = None
    rank0: object = None  # render: the ref whose value is the window's result


def _connect(f: dict) -> bool:
    """ray.init as configured; True if this call started Ray (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kw = {"include_dashboard": False, "log_to_driver": True}
    if f.get("address"):
        ray.init(address=f["address"], **kw)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kw)
    else:
        ray.init(address="local", **kw)
    return True


class _Farm:
    """The driver's side: replicas, the queue, the wait loop."""

    def __init__(self, cfg: DictConfig, job: Job, f: dict):
        import ray

        self.ray, self.cfg, self.job, self.f = ray, cfg, job, f
        self.gpus = int(f.get("gpus_per_replica", 1))
        self.world = max(self.gpus, 1)
        if self.world > 1 and self.world % int(cfg.parallel.cfg):
            raise ValueError(f"farm.gpus_per_replica={self.gpus} must be a multiple of parallel.cfg={cfg.parallel.cfg}")
        self.n = min(int(f["replicas"]), max(len(job.todo), 1))
        self.worker = ray.remote(ReplicaWorker)
        self.queue = WindowQueue(job.todo, max_attempts=int(f.get("max_attempts", 3)))
        self.tasks: dict = {}  # ObjectRef -> _Task
        self.idle: list[_Replica] = []
        self.attempts: list[Attempt] = []
        self.metrics = FarmMetrics(len(job.plan.windows), done=len(job.done))
        self.t0 = time.perf_counter()
        # Actors see the job as YAML; inputs are paths every node must reach (shared FS / URL).
        self.cfg_yaml = OmegaConf.to_yaml(cfg)
        self.replicas: list[_Replica] = []

    # -- replicas ---------------------------------------------------------------------------

    def _bundle(self) -> dict:
        b = {"CPU": float(self.f.get("cpus_per_actor", 1))}
        if self.gpus:
            b["GPU"] = 1.0
        return {k: v for k, v in b.items() if v > 0} or {"CPU": 0.001}

    def place(self) -> None:
        from ray.util.placement_group import placement_group

        for r in range(self.n):
            pg = placement_group([self._bundle()] * self.world, strategy="STRICT_PACK", name=f"itd-replica-{r}")
            self.replicas.append(_Replica(r, pg))
        timeout = float(self.f.get("placement_timeout_s", 600))
        ready, _ = self.ray.wait([rep.pg.ready() for rep in self.replicas], num_returns=self.n, timeout=timeout)
        if len(ready) < self.n:
            raise FarmError(f"only {len(ready)} of {self.n} replicas could be placed within {timeout:.0f} s: each "
                            f"needs {self.world} x {self._bundle()} on one node; the cluster has "
                            f"{self.ray.cluster_resources()}")
        for rep in self.replicas:
            self.build(rep)

    def build(self, rep: _Replica) -> None:
        """Start the replica's actors and their setup (asynchronous: a setup task)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        rep.builds += 1
        opts = {"num_cpus": self._bundle().get("CPU", 0), "num_gpus": 1 if self.gpus else 0, "max_restarts": 0,
                "max_concurrency": 1}
        rep.actors = [
            self.worker.options(**opts, name=f"itd-r{rep.index}-k{k}-b{rep.builds}",
                                scheduling_strategy=PlacementGroupSchedulingStrategy(rep.pg, placement_group_bundle_index=k))
            .remote(self.cfg_yaml, self.job.store.url, k, self.world)
            for k in range(self.world)
        ]
        init = rep.actors[0].rendezvous.remote() if self.world > 1 else None
        refs = [a.setup.remote(init) for a in rep.actors]
        self._track(_Task("setup", rep, set(refs)), refs)

    def kill(self, rep: _Replica) -> None:
        for a in rep.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # already dead
                pass
        rep.actors = []

    def _track(self, task: _Task, refs) -> None:
        for ref in refs:
            self.tasks[ref] = task

    def _untrack(self, task: _Task) -> None:
        for ref in [r for r, t in self.tasks.items() if t is task]:
            del self.tasks[ref]

    # -- the loop ---------------------------------------------------------------------------

    def dispatch(self) -> None:
        while self.idle and len(self.queue):
            rep, w = self.idle.pop(0), self.queue.take()
            a = Attempt(w.index, rep.index, time.perf_counter() - self.t0)
            self.attempts.append(a)
            self.metrics.started()
            refs = [actor.render.remote(asdict(w)) for actor in rep.actors]
            task = _Task("render", rep, set(refs), window=w, attempt=a, rank0=refs[0])
            self._track(task, refs)
            log.info("window #%d (frames [%d, %d), attempt %d) -> replica %d", w.index, w.start, w.end,
                     self.queue.attempts[w.index], rep.index)

    def run(self, bar=None) -> None:
        from ray.exceptions import RayError

        self.place()
        while self.tasks:
            ready, _ = self.ray.wait(list(self.tasks), num_returns=1)
            ref = ready[0]
            task = self.tasks.pop(ref)
            try:
                value = self.ray.get(ref)
            except RayError as e:
                self._untrack(task)
                self.failed(task, e)
                continue
            task.pending.discard(ref)
            if task.kind == "render" and ref == task.rank0:
                task.result = value
            elif task.kind == "setup":
                task.replica.pids.append(value)
            if task.pending:
                continue
            if task.kind == "setup":
                log.info("replica %d ready (%d rank(s), pids %s)", task.replica.index, self.world, task.replica.pids)
            else:
                self.finished(task)
                if bar is not None:
                    bar.update(1)
            self.idle.append(task.replica)
            self.dispatch()

    def finished(self, task: _Task) -> None:
        w, r, a = task.window, task.result, task.attempt
        try:
            self.job.store.record_window(w.index, r["sha256"], r["size"])
        except StoreError as e:
            self._close_attempt(a, "failed", str(e))
            raise FarmError(f"window {w.index}: {e}") from e
        self._close_attempt(a, "done")
        self.metrics.finished(r["frames"], r["seconds"], r["step_seconds"], replica=task.replica.index,
                              gpu_peak_bytes=r["gpu_peak_bytes"])
        log.info("window #%d done on replica %d in %.1f s", w.index, task.replica.index, r["seconds"])

    def failed(self, task: _Task, err: Exception) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        cause = _cause(err)
        lost = isinstance(err, RayActorError)
        rep = task.replica
        self.kill(rep)  # one failed rank leaves its peers stuck in collectives: rebuild them all
        self.metrics.restarts.inc()
        if task.kind == "setup":
            log.warning("replica %d failed to start (%s)", rep.index, cause)
            if rep.builds >= self.queue.max_attempts:
                raise FarmError(f"replica {rep.index} failed to start {rep.builds} time(s): {cause}")
            self.build(rep)
            return
        self._close_attempt(task.attempt, "lost" if lost else "failed", cause)
        if isinstance(err, RayTaskError) and isinstance(getattr(err, "cause", None), StoreError):
            self.metrics.failed()
            raise FarmError(f"window {task.window.index}: {cause}") from err
        log.warning("window #%d %s on replica %d (%s); rebuilding the replica", task.window.index,
                    "lost its actor" if lost else "failed", rep.index, cause)
        try:
            self.queue.failed(task.window, cause)
        except WindowFailed:
            self.metrics.failed()
            raise
        self.metrics.retried()
        self.build(rep)

    def _close_attempt(self, a: Attempt, outcome: str, cause: str = "") -> None:
        a.end, a.outcome, a.cause = time.perf_counter() - self.t0, outcome, cause

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for rep in self.replicas:
            self.kill(rep)
            try:
                remove_placement_group(rep.pg)
            except Exception:
                pass


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None and not isinstance(cause, type(err)):
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def run_job_ray(cfg: DictConfig) -> WrittenVideo:
    """Render the job ``cfg`` on a Ray cluster (``farm.*``), then stitch ``cfg.output``."""
    try:
        import ray
    except ImportError as e:
        raise FarmError("farm=ray needs Ray: pip install 'infinitetalk-dist[ray]'") from e
    f = farm_options(cfg)
    job = prepare_job(cfg)
    if job.todo:
        started = _connect(f)
        farm = _Farm(_with_resolved_inputs(cfg, job), job, f)
        if f.get("metrics_port") is not None:
            log.info("metrics: http://localhost:%d/metrics", farm.metrics.serve(int(f["metrics_port"])))
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(job.todo), unit="window", desc=f"farm ({farm.n} replicas)", dynamic_ncols=True)
        error = None
        try:
            farm.run(bar)
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            if bar is not None:
                bar.close()
            farm.shutdown()
            farm.metrics.write(job.store)
            job.report(farm.attempts, replicas=farm.n, wall_s=time.perf_counter() - farm.t0, backend="ray",
                       gpus_per_replica=farm.gpus, error=error)
            farm.metrics.close()
            if started:
                ray.shutdown()
    return job.stitch()


def _with_resolved_inputs(cfg: DictConfig, job: Job) -> DictConfig:
    """The config the actors get: the files the driver read (demo inputs included, which the
    driver wrote) named explicitly and absolutely, so every rank reads the same files."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, path in job.sources.files.items():
        cfg.input[key] = path if "://" in path else str(Path(path).resolve())
    cfg.output = str(job.output.resolve())
    return cfg
