"""Run a function on N freshly spawned gloo ranks (CPU) and collect every rank's result or traceback.

For tests and CPU smoke runs of distributed code: each call is its own process group (a
file store in a temporary folder, so no port can collide), with a short collective timeout,
one torch thread per rank, and a hard wall-clock limit after which the children are killed.
A failure raises one error carrying every failing rank's traceback (the first error seen
is often a peer's "connection reset"; the real one is usually on another rank).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

__all__ = ["DistributedFailure", "run_on_ranks"]


class DistributedFailure(RuntimeError):
    pass


def _worker(fn, world: int, rank: int, store: str, timeout_s: float, threads: int, results, args, kwargs):
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        try:
            out = fn(*args, **kwargs)
        finally:
            try:
                dist.destroy_process_group()
            except Exception:  # a failed peer can leave the group unusable; the result matters
                pass
        results.put((rank, True, out))
    except BaseException:  # report everything, including SystemExit/KeyboardInterrupt
        results.put((rank, False, traceback.format_exc()))


def run_on_ranks(fn: Callable[..., Any], world: int, *args, timeout_s: float = 120.0,
                 collective_timeout_s: float = 60.0, threads: int = 1, **kwargs) -> list[Any]:
    """``fn(*args, **kwargs)`` on ranks 0..world-1 of a new gloo group; returns the results by rank.

    ``fn`` must be importable by the children (a module-level function) and its result
    picklable. Raises :class:`DistributedFailure` with every failing rank's traceback, or when
    the ranks do not finish within ``timeout_s`` (the children are then killed).
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="itd-dist-") as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_worker, name=f"rank{r}", daemon=True,
                             args=(fn, world, r, store, collective_timeout_s, threads, results, args, kwargs))
                 for r in range(world)]
        for p in procs:
            p.start()
        got: dict[int, tuple[bool, Any]] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(got) < world:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    rank, ok, value = results.get(timeout=min(left, 1.0))
                    got[rank] = (ok, value)
                    if not ok:  # peers are likely stuck in a collective: give them a moment to fail too
                        deadline = min(deadline, time.monotonic() + 10.0)
                except queue.Empty:
                    # A child that died without reporting (segfault, OOM kill) never will.
                    dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in got]
                    if dead:
                        time.sleep(1.0)  # its report may still be in the pipe
                        while True:
                            try:
                                rank, ok, value = results.get_nowait()
                                got[rank] = (ok, value)
                            except queue.Empty:
                                break
                        for r in dead:
                            if r not in got:
                                got[r] = (False, f"rank {r} exited with code {procs[r].exitcode} without a result")
        finally:
            for p in procs:
                p.join(timeout=5 if len(got) == world else 0.1)
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)
    failures = {r: v for r, (ok, v) in sorted(got.items()) if not ok}
    missing = [r for r in range(world) if r not in got]
    if failures or missing:
        parts = [f"--- rank {r} ---\n{tb}" for r, tb in failures.items()]
        if missing:
            parts.append(f"ranks {missing} did not finish within {timeout_s:.0f} s (killed)")
        raise DistributedFailure(f"{fn.__name__} failed on {world} ranks:\n" + "\n".join(parts))
    return [got[r][1] for r in range(world)]
