"""``farm=local``: the job's windows rendered in this process, by the farm's own worker.

The same :class:`~.replica.ReplicaWorker` and :class:`~.driver.JobRun` as on Ray (one replica
of one rank), so a local run has the same queue order, retries, metrics, progress and report,
and writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import logging

from .driver import JobRun
from .progress import reporter
from .replica import ReplicaWorker
from .store import StoreError

__all__ = ["run_local"]

log = logging.getLogger(__name__)


def run_local(job) -> dict:
    """Render every window of ``job`` (a :class:`~.job.Job`) not yet in its store; returns the
    run's :meth:`~.driver.JobRun.summary`."""
    import torch

    threads = torch.get_num_threads()  # a CPU job sets its own (FarmOptions.cpu_threads); put back after
    worker = ReplicaWorker(job.request, job.store.url, 0, 1, job.sources.reference,
                           cpu_threads=job.farm.cpu_threads(), window_ext=job.store.window_ext)
    try:
        return _render_all(job, worker)
    finally:
        torch.set_num_threads(threads)


def _render_all(job, worker: ReplicaWorker) -> dict:
    with JobRun(job, backend="local", replicas=1, gpu=job.request.device.startswith("cuda")) as run:
        worker.report = reporter(run, 0)  # steps straight to the driver: same process
        run.placed()
        run.replica_ready(0, [worker.setup(None)])
        while len(run.queue):
            w, attempt, tracks = run.take(0)
            try:
                result = worker.render(dataclasses.asdict(w), tracks)
            except StoreError:  # disk full, unwritable: retrying cannot help
                raise
            except Exception as e:
                log.warning("window #%d failed (%s: %s)", w.index, type(e).__name__, e)
                run.failed(w, attempt, f"{type(e).__name__}: {e}")
                continue
            run.finished(w, attempt, result)
    return run.summary()
