"""Which window goes where: longest first to whichever replica is free, bounded retries.

Pure bookkeeping (no Ray, no tensors), shared by both farm backends (through ``driver.JobRun``)
and the scale simulation. Longest-processing-time-first list scheduling is the classic greedy
for identical machines: its makespan is within 4/3 of the optimum, and with many windows much shorter than
``total / replicas`` it lands close to the lower bound ``max(longest, total / replicas)``
(see ``benchmarks/farm_schedule.py``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from infinitetalk_dist.errors import InfiniteTalkError

__all__ = ["Attempt", "WindowQueue", "WindowFailed", "lower_bound", "simulate"]


class WindowFailed(InfiniteTalkError, RuntimeError):
    """A window failed ``max_attempts`` times: the job stops with its last cause."""

    def __init__(self, index: int, attempts: int, cause: str):
        super().__init__(f"window {index} failed {attempts} time(s); last cause: {cause}")
        self.index, self.attempts, self.cause = index, attempts, cause


@dataclass
class Attempt:
    """One try of one window on one replica (the job report's Gantt bars)."""

    window: int
    replica: int
    start: float
    end: float | None = None
    outcome: str = "running"  # running | done | failed | lost (actor died)
    cause: str = ""


@dataclass
class WindowQueue:
    """Pending windows, longest (by ``cost``) first; ties by more frames, then lower index.

    ``take()`` pops the next window; ``failed(w, cause)`` puts it back unless it has failed
    ``max_attempts`` times, then raises :class:`WindowFailed`.
    """

    windows: Iterable[Any]
    max_attempts: int = 3
    _heap: list = field(init=False, default_factory=list)
    attempts: dict[int, int] = field(init=False, default_factory=dict)

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for w in self.windows:
            self.push(w)

    def push(self, w: Any) -> None:
        heapq.heappush(self._heap, (-float(w.cost), -int(w.frames), int(w.index), w))

    def take(self) -> Any:
        w = heapq.heappop(self._heap)[3]
        self.attempts[w.index] = self.attempts.get(w.index, 0) + 1
        return w

    def failed(self, w: Any, cause: str) -> None:
        n = self.attempts.get(w.index, 0)
        if n >= self.max_attempts:
            raise WindowFailed(w.index, n, cause)
        self.push(w)

    def __len__(self) -> int:
        return len(self._heap)


def lower_bound(costs: Sequence[float], replicas: int) -> float:
    """No schedule finishes before ``max(longest window, total / replicas)``."""
    return max(max(costs, default=0.0), sum(costs) / replicas)


def simulate(costs: Sequence[float], replicas: int) -> tuple[float, list[list[int]]]:
    """Longest-first onto the earliest free replica: ``(makespan, windows of each replica)``."""

    @dataclass
    class _W:
        index: int
        cost: float
        frames: int = 0

    queue = WindowQueue([_W(i, c) for i, c in enumerate(costs)])
    free = [(0.0, r) for r in range(replicas)]  # (time it becomes free, replica)
    heapq.heapify(free)
    assigned: list[list[int]] = [[] for _ in range(replicas)]
    makespan = 0.0
    while len(queue):
        w = queue.take()
        t, r = heapq.heappop(free)
        assigned[r].append(w.index)
        heapq.heappush(free, (t + w.cost, r))
        makespan = max(makespan, t + w.cost)
    return makespan, assigned
