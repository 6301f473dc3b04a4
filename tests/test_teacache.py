"""TeaCache: the reference's skip rule, a no-op when it never skips, fewer block runs when it does."""

from __future__ import annotations

import numpy as np
import torch

from infinitetalk_dist.models.build import random_models
from infinitetalk_dist.pipeline.teacache import COEFFICIENTS, RET_STEPS, TeaCache, teacache_on


def _reference_decisions(e0s, branches, threshold, coefficients):
    """The reference's rule written out (per branch: accumulate rescaled rel-L1 of e0, skip below thr)."""
    rescale, acc, prev, out = np.poly1d(coefficients), [0.0] * branches, [None] * branches, []
    for call, e0 in enumerate(e0s):
        b = call % branches
        if call < RET_STEPS * branches:
            calc, acc[b] = True, 0.0
        else:
            acc[b] += rescale(((e0 - prev[b]).abs().mean() / prev[b].abs().mean()).item())
            calc = acc[b] >= threshold
            if calc:
                acc[b] = 0.0
        prev[b] = e0
        out.append(calc)
    return out


def test_skip_rule_matches_reference():
    steps, branches = 12, 3
    g = torch.Generator().manual_seed(0)
    # e0 drifting slowly, as the time modulation does across steps
    base = torch.randn(1, 6, 8, generator=g)
    e0s = [base * (1 + 0.002 * (c // branches)) + 0.001 * torch.randn(1, 6, 8, generator=g)
           for c in range(steps * branches)]
    cache = TeaCache(steps, branches, threshold=0.2)
    for e0 in e0s:
        cache(torch.zeros(1), e0, lambda x: x + 1)
    want = _reference_decisions(e0s, branches, 0.2, COEFFICIENTS["480"])
    assert cache.computed == sum(want) and cache.skipped == len(want) - sum(want)
    assert cache.skipped > 0


@torch.no_grad()
def test_never_skipping_is_identity_and_skipping_runs_fewer_blocks():
    models = random_models("tiny", 0, torch.float32, "cpu")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 16, 3, 4, 4, generator=g), torch.randn(1, 20, 3, 4, 4, generator=g)
    kw = dict(context=torch.randn(1, 5, 32, generator=g), clip_fea=torch.randn(1, 17, 32, generator=g), y=y,
              audio=torch.randn(1, 1, 9, 5, 3, 32, generator=g))
    ts = torch.linspace(999, 100, 8)
    plain = [models.dit(x, t[None], **kw) for t in ts]
    with teacache_on(models.dit, steps=8, branches=1, threshold=-1e9, size="480") as cache:
        never = [models.dit(x, t[None], **kw) for t in ts]
    assert cache.skipped == 0 and all(torch.equal(a, b) for a, b in zip(plain, never))
    with teacache_on(models.dit, steps=8, branches=1, threshold=1e9, size="480") as cache:
        always = [models.dit(x, t[None], **kw) for t in ts]
    assert cache.skipped == 8 - RET_STEPS and all(torch.isfinite(o).all() for o in always)
    assert all(torch.equal(a, b) for a, b in zip(plain[:RET_STEPS], always[:RET_STEPS]))
    assert type(models.dit.block_cache).__name__ == "RunAllBlocks"  # restored
