"""Window queue (longest first, bounded retries) and the scheduling simulation at scale."""

import random
from dataclasses import dataclass

import pytest

from infinitetalk_dist.farm.schedule import WindowFailed, WindowQueue, lower_bound, simulate
from infinitetalk_dist.timeline import FPS, num_chunks


@dataclass
class W:
    index: int
    cost: float
    frames: int


def test_longest_first_then_more_frames_then_index():
    q = WindowQueue([W(0, 2, 33), W(1, 3, 40), W(2, 3, 44), W(3, 3, 44)])
    assert [q.take().index for _ in range(4)] == [2, 3, 1, 0]


def test_retries_are_bounded_and_name_the_cause():
    w = W(5, 1, 10)
    q = WindowQueue([w], max_attempts=2)
    assert q.take() is w
    q.failed(w, "actor died")
    assert len(q) == 1 and q.take() is w
    with pytest.raises(WindowFailed, match="window 5 failed 2 time.*boom"):
        q.failed(w, "boom")


def test_200_windows_on_16_replicas_within_5_percent_of_the_bound():
    """The issue's scale criterion, on the farm's own scheduling rule (no timing involved)."""
    r = random.Random(0)
    costs = [num_chunks(round(min(120.0, max(2.0, r.lognormvariate(2.8, 0.8))) * FPS), 81, 9) for _ in range(200)]
    makespan, assigned = simulate(costs, 16)
    bound = lower_bound(costs, 16)
    print(f"makespan / lower bound = {makespan / bound:.4f}")
    assert sorted(i for a in assigned for i in a) == list(range(200))
    assert makespan <= 1.05 * bound
