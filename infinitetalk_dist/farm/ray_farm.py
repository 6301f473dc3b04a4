"""``farm=ray``: R replicas of G actors render the job's windows, longest first.

    run_ray(job) -> R placement groups (STRICT_PACK: a replica's G GPUs on one node)
                 -> G ReplicaWorker actors per group, one torch.distributed group each
                 -> windows to whichever replica is free (the shared JobRun queue); rank 0
                    uploads the window file, the driver records it in the manifest

Faults: an actor that dies (killed, OOM, node lost) or a window that raises makes the whole
replica be rebuilt (new actors in the same placement group; Ray re-places the group if its
node is gone) and the window go back to the queue, to the next free replica; a lost node's
replica that cannot be placed again leaves the job to the others (it fails only when no
replica has been up for ``farm.placement_timeout_s``); a window failing ``farm.max_attempts``
times fails the job with its cause. Store errors fail the job at once (retrying cannot help).
Finished windows are in the store whatever happens; re-running the command resumes.

Connecting: ``farm.address``, else the cluster ``ray job submit`` / ``RAY_ADDRESS`` names,
else a new local Ray instance that ends with the job. A caller that already called
``ray.init`` (tests, notebooks) is used as is.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

from infinitetalk_dist.errors import InfiniteTalkError, InputError

from .driver import JobRun
from .progress import ProgressBoard
from .replica import ReplicaWorker
from .store import StoreError

PROGRESS_POLL_S = 2.0  # the driver reads the replicas' step reports this often while it waits

__all__ = ["FarmError", "run_ray"]

log = logging.getLogger(__name__)


class FarmError(InfiniteTalkError, RuntimeError):
    """The farm could not finish the job (replicas could not be placed or failed to start, the
    store failed). Finished windows stay in the store; re-run to resume."""


@dataclass
class _Replica:
    index: int
    pg: object
    actors: list = field(default_factory=list)
    setup: list = field(default_factory=list)  # what each rank's setup returned
    builds: int = 0


@dataclass
class _Task:
    kind: str  # setup | render
    replica: _Replica
    pending: set
    result: object = None
    window: object = None
    attempt: object = None
    rank0: object = None  # render: the ref whose value is the window's result


def _connect(address: str | None) -> bool:
    """ray.init as configured; True if this call started Ray (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kw = {"include_dashboard": False, "log_to_driver": True}
    if address:
        ray.init(address=address, **kw)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kw)
    else:
        ray.init(address="local", **kw)
    return True


class _Farm:
    """The driver's side on Ray: replicas, their actors, the wait loop."""

    def __init__(self, job, run: JobRun, ranks: int, bundle: dict):
        import ray

        self.ray, self.job, self.run = ray, job, run
        self.world, self.bundle = ranks, bundle
        self.n = run.replicas
        self.worker = ray.remote(ReplicaWorker)
        self.board = ray.remote(ProgressBoard).options(num_cpus=0).remote()  # the replicas' step reports
        self.tasks: dict = {}  # ObjectRef -> _Task
        self.idle: list[_Replica] = []
        self.replicas: list[_Replica] = []
        # Actors get the job once: the request and the reference (the picture, or the source
        # video's path with its frame index built here); the weights, the source video and the
        # store are paths every node must reach (shared storage or URLs).
        self.request = job.request
        self.reference = job.sources.reference.for_workers()

    # -- replicas ---------------------------------------------------------------------------

    def place(self) -> None:
        from ray.util.placement_group import placement_group

        for r in range(self.n):
            pg = placement_group([self.bundle] * self.world, strategy="STRICT_PACK", name=f"itd-replica-{r}")
            self.replicas.append(_Replica(r, pg))
        timeout = float(self.job.farm.placement_timeout_s)
        ready, _ = self.ray.wait([rep.pg.ready() for rep in self.replicas], num_returns=self.n, timeout=timeout)
        if len(ready) < self.n:
            raise FarmError(f"only {len(ready)} of {self.n} replicas could be placed within {timeout:.0f} s: each "
                            f"needs {self.world} x {self.bundle} on one node; the cluster has "
                            f"{self.ray.cluster_resources()}")
        self.run.placed()
        for rep in self.replicas:
            self.build(rep)

    def build(self, rep: _Replica) -> None:
        """Start the replica's actors and their setup (asynchronous: a setup task)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        rep.builds += 1
        rep.setup = []
        opts = {"num_cpus": self.bundle.get("CPU", 0), "num_gpus": self.bundle.get("GPU", 0), "max_restarts": 0,
                "max_concurrency": 1}
        rep.actors = [
            self.worker.options(**opts, name=f"itd-r{rep.index}-k{k}-b{rep.builds}",
                                scheduling_strategy=PlacementGroupSchedulingStrategy(rep.pg, placement_group_bundle_index=k))
            .remote(self.request, self.job.store.url, k, self.world, self.reference, visible_gpu=True,
                    cpu_threads=self.job.farm.cpu_threads(), window_ext=self.job.store.window_ext,
                    board=self.board, replica=rep.index)
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
        while self.idle and len(self.run.queue):
            rep = self.idle.pop(0)
            w, a, tracks = self.run.take(rep.index)
            tracks_ref = self.ray.put(tracks)  # one copy in the object store for the replica's ranks
            refs = [actor.render.remote(dataclasses.asdict(w), tracks_ref) for actor in rep.actors]
            self._track(_Task("render", rep, set(refs), window=w, attempt=a, rank0=refs[0]), refs)

    def loop(self) -> None:
        from ray.exceptions import RayError

        self.place()
        stalled = None  # since when no replica has been up while windows wait
        while self._unfinished():
            ready, _ = self.ray.wait(list(self.tasks), num_returns=1, timeout=PROGRESS_POLL_S)
            self._progress()
            stalled = self._check_stalled(stalled)
            if not ready:
                continue
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
                task.replica.setup.append(value)
            if task.pending:
                continue
            if task.kind == "setup":
                self.run.replica_ready(task.replica.index, task.replica.setup)
            else:
                try:
                    self.run.finished(task.window, task.attempt, task.result)
                except StoreError as e:
                    raise FarmError(f"window {task.window.index}: {e}") from e
            self.idle.append(task.replica)
            self.dispatch()
        self._progress()  # the last windows' step reports (they travel apart from the results)

    def _rendering(self) -> bool:
        return any(t.kind == "render" for t in self.tasks.values())

    def _unfinished(self) -> bool:
        """Windows wait or render. A replica still being rebuilt (its node lost, its placement
        group waiting for resources that may never come back) does not keep a finished job open."""
        return bool(len(self.run.queue)) or self._rendering()

    def _check_stalled(self, since: float | None) -> float | None:
        """Windows wait, no replica is up and none has its resources (every placement group lost
        its node and waits): fail after ``farm.placement_timeout_s`` with what the cluster has,
        not wait forever. A replica that is placed and still loading is not stalled."""
        if self.idle or self._rendering() or any(map(_placed, self.replicas)):
            return None
        now = time.monotonic()
        timeout = float(self.job.farm.placement_timeout_s)
        if since is not None and now - since > timeout:
            raise FarmError(f"no replica could be rebuilt within {timeout:.0f} s ({len(self.run.queue)} window(s) "
                            f"left; each replica needs {self.world} x {self.bundle} on one node; the cluster has "
                            f"{self.ray.available_resources()} free)")
        return since if since is not None else now

    def _progress(self) -> None:
        """The step reports the replicas sent since the last look (a lost board only costs them)."""
        from ray.exceptions import RayError

        try:
            latest = self.ray.get(self.board.read.remote(), timeout=PROGRESS_POLL_S)
        except RayError as e:
            log.debug("progress board: %s", e)
            return
        for replica, info in sorted(latest.items()):
            self.run.report(replica, info)

    def failed(self, task: _Task, err: Exception) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        cause = _cause(err)
        rep = task.replica
        self.kill(rep)  # one failed rank leaves its peers stuck in collectives: rebuild them all
        self.run.metrics.restarts.inc()
        if task.kind == "setup":
            log.warning("replica %d failed to start (%s)", rep.index, cause)
            if rep.builds >= self.run.queue.max_attempts:
                raise FarmError(f"replica {rep.index} failed to start {rep.builds} time(s): {cause}")
            self.build(rep)
            return
        if isinstance(err, RayTaskError) and isinstance(getattr(err, "cause", None), StoreError):
            self.run.fatal(task.attempt, cause)
            raise FarmError(f"window {task.window.index}: {cause}") from err
        lost = isinstance(err, RayActorError)
        log.warning("window #%d %s on replica %d (%s); rebuilding the replica", task.window.index,
                    "lost its actor" if lost else "failed", rep.index, cause)
        self.run.failed(task.window, task.attempt, cause, lost=lost)
        self.build(rep)
        self.dispatch()  # a replica left idle by an empty queue takes the window back at once

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for rep in self.replicas:
            self.kill(rep)
            try:
                remove_placement_group(rep.pg)
            except Exception:
                pass
        self.ray.kill(self.board)


def _layout(job, have: dict) -> tuple[int, dict]:
    """(ranks per replica, one rank's Ray bundle) on a cluster with resources ``have``. A rank
    asks for a GPU only when the job runs on CUDA (``device=cpu`` replicas are CPU bundles
    whatever ``farm.gpus_per_replica`` says). Ray runs an actor with as many CPU threads as it
    reserved CPUs (OMP_NUM_THREADS), so a GPU rank reserves its share of the CPUs by default:
    with 1 it loads the 14B weights ~4x slower (345 s instead of 82 s on an H200 node)."""
    f, request = job.farm, job.request
    ranks = max(f.gpus_per_replica, 1)
    if ranks > 1 and ranks % request.parallel.cfg:
        raise InputError(f"farm.gpus_per_replica={ranks} must be a multiple of parallel.cfg={request.parallel.cfg}")
    gpu = bool(f.gpus_per_replica) and request.device.startswith("cuda")
    cpus = f.cpus_per_actor
    if cpus is None:
        cpus = max(1.0, float(int(have.get("CPU", 1.0) // have["GPU"]))) if gpu and have.get("GPU") else 1.0
    return ranks, {"CPU": float(cpus), **({"GPU": 1.0} if gpu else {})}


def _fitting(replicas: int, ranks: int, bundle: dict) -> int:
    """Replicas a cluster this command started can hold at once. It has no autoscaler, so what
    it has now is all it will ever have: none fits -> fail at once; fewer -> run fewer."""
    import ray

    have = ray.cluster_resources()
    fit = min(int(have.get(k, 0.0) // (v * ranks)) for k, v in bundle.items())
    if fit < 1:
        raise FarmError(f"a replica needs {ranks} x {bundle} on one node; this machine's Ray instance has "
                        f"{have} (nothing can add more: set device, farm.gpus_per_replica or farm.cpus_per_actor)")
    if fit < replicas:
        log.warning("this machine holds %d of the %d replicas asked for (%s each); running %d", fit, replicas,
                    f"{ranks} x {bundle}", fit)
    return min(fit, replicas)


def _placed(rep: _Replica) -> bool:
    from ray.util.placement_group import placement_group_table

    return placement_group_table(rep.pg).get("state") == "CREATED"


def _cause(err: Exception) -> str:
    cause = getattr(err, "cause", None)
    if cause is not None and not isinstance(cause, type(err)):
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"


def run_ray(job) -> dict:
    """Render every window of ``job`` (a :class:`~.job.Job`) not yet stored on a Ray cluster;
    returns the run's :meth:`~.driver.JobRun.summary`."""
    try:
        import ray
    except ImportError as e:
        raise FarmError("farm=ray needs Ray: pip install 'infinitetalk-dist[ray]'") from e
    started = _connect(job.farm.address)
    try:
        ranks, bundle = _layout(job, ray.cluster_resources())
        replicas = min(job.farm.replicas, max(len(job.todo), 1))
        if started:
            replicas = _fitting(replicas, ranks, bundle)
        with JobRun(job, backend="ray", replicas=replicas, ranks=ranks, gpu="GPU" in bundle) as run:
            farm = _Farm(job, run, ranks, bundle)
            try:
                farm.loop()
            finally:
                farm.shutdown()
        return run.summary()
    finally:
        if started:
            ray.shutdown()
