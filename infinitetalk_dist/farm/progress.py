"""Sampling-step progress of the windows being rendered, from the replicas to the driver.

A 60 s window at 40 steps runs for hours on one GPU: the driver's progress bar and metrics
must move inside it, not only when it ends. Rank 0 of each replica reports after every step
to a :class:`ProgressBoard` — called directly by the local backend (same process), or a small
Ray actor the Ray backend creates, which the replicas tell without waiting (``report.remote``)
and the driver reads between its waits. The render actors stay single-threaded.
"""

from __future__ import annotations

__all__ = ["ProgressBoard", "reporter"]


class ProgressBoard:
    """The latest step report of each replica: ``{replica: {"window", "chunk", "chunks", "step",
    "steps", "done"}}`` (``done``: sampling steps finished in this window so far)."""

    def __init__(self):
        self.latest: dict[int, dict] = {}

    def report(self, replica: int, info: dict) -> None:
        self.latest[replica] = info

    def read(self) -> dict[int, dict]:
        out, self.latest = self.latest, {}
        return out


def reporter(board, replica: int):
    """``info -> None`` for a worker: ``board.report`` on a local board, a fire-and-forget
    ``report.remote`` on a Ray actor handle, nothing without a board."""
    if board is None:
        return lambda info: None
    remote = getattr(board.report, "remote", None)
    if remote is not None:
        return lambda info: remote(replica, info)
    return lambda info: board.report(replica, info)
