"""Guidance branches of one sampling step: batched in one forward, or side by side on ``cfg`` ranks.

The 2 or 3 classifier-free-guidance branches (cond / drop_text / uncond, or cond /
drop_audio) are independent DiT calls on the same latent. :func:`predict_branches` runs them
as few forwards as possible and returns every branch's prediction on every rank, so the
caller combines them once per step:

- cfg size 1: branches with the same speaker count are batched into one forward (the null-
  audio branches have one silent speaker; a two-speaker cond branch cannot share their
  batch, so two speakers take 2 forwards, one speaker 1);
- cfg size > 1: the branches (sorted by speaker count) are split into ``cfg`` contiguous
  runs; cfg rank r runs run r (batched where it can), then the predictions are all-gathered
  over the cfg group (ranks holding the same sequence slice).

Under FSDP every rank of the replica must run the same number of forwards (each forward
all-gathers weights over all ranks): a rank with fewer calls than another runs dummy calls
(its first branch again, result dropped). With the default 3 branches on cfg 3, or 2 on
cfg 2, every rank runs exactly one forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .state import ParallelState
from .ulysses import all_gather_single

__all__ = ["batch_branches", "plan_branches", "predict_branches"]

_PER_ROW = ("x", "clip_fea", "y", "audio")


def _speakers(branch: Mapping) -> int:
    return int(branch["audio"].shape[1])


def plan_branches(speakers: Sequence[int], cfg: int) -> list[list[list[int]]]:
    """Per cfg rank, its forwards, each a list of branch indices batched together.

    Branches are ordered by speaker count (stable) and cut into ``cfg`` contiguous runs as even
    as possible; within a run, branches of equal speaker count share one forward.
    """
    order = sorted(range(len(speakers)), key=lambda i: -speakers[i])
    base, extra = divmod(len(order), cfg)
    plan, at = [], 0
    for r in range(cfg):
        run = order[at : at + base + (r < extra)]
        at += len(run)
        calls: dict[int, list[int]] = {}
        for i in run:
            calls.setdefault(speakers[i], []).append(i)
        plan.append(list(calls.values()))
    return plan


def _same(tensors: Sequence[torch.Tensor]) -> bool:
    first = tensors[0]
    return all(t is first or (t.shape == first.shape and torch.equal(t, first)) for t in tensors[1:])


def batch_branches(branches: Sequence[Mapping]) -> dict:
    """One forward's keyword arguments for several branches (same speaker count), batch-concatenated.

    Text contexts of different lengths are zero-padded to the longest (the DiT pads them
    with zeros to ``text_len`` anyway); timesteps become one per row; speaker masks are
    shared when equal, else stacked per row.
    """
    if len(branches) == 1:
        return dict(branches[0])
    if len({_speakers(b) for b in branches}) != 1:
        raise ValueError("only branches with the same speaker count can share a forward")
    extra = set().union(*branches) - set(_PER_ROW) - {"t", "context", "ref_target_masks"}
    out = {k: torch.cat([b[k] for b in branches]) for k in _PER_ROW}
    rows = [b["x"].shape[0] for b in branches]
    out["t"] = torch.cat([b["t"].reshape(-1).expand(n) for b, n in zip(branches, rows)])
    longest = max(b["context"].shape[1] for b in branches)
    out["context"] = torch.cat([F.pad(b["context"], (0, 0, 0, longest - b["context"].shape[1])) for b in branches])
    masks = [b.get("ref_target_masks") for b in branches]
    if _speakers(branches[0]) < 2 or all(m is None for m in masks):
        out["ref_target_masks"] = masks[0]
    elif any(m is None for m in masks):
        raise ValueError("two-speaker branches need ref_target_masks")
    elif _same(masks):
        out["ref_target_masks"] = masks[0]
    else:
        out["ref_target_masks"] = torch.cat([m.expand(n, *m.shape[-3:]) for m, n in zip(masks, rows)])
    for k in extra:  # e.g. seq_len: must agree
        values = [b.get(k) for b in branches]
        if any(v != values[0] for v in values[1:]):
            raise ValueError(f"branches disagree on {k!r}: {values}")
        out[k] = values[0]
    return out


@torch.no_grad()
def predict_branches(model, branch_inputs: Sequence[Mapping], state: ParallelState) -> list[torch.Tensor]:
    """Every guidance branch's DiT prediction, on every rank.

    ``branch_inputs``: one dict of DiT forward arguments per branch (x, t, context, clip_fea,
    y, audio, ref_target_masks; optional seq_len), identical on every rank. Returns the
    predictions in the same order, each [B, out_dim, T, H, W] float32 as the model returns.
    """
    from .fsdp import is_sharded

    n = len(branch_inputs)
    if n == 0:
        return []
    if state.cfg_size > 1 and len({tuple(b["x"].shape) for b in branch_inputs}) != 1:
        raise ValueError("cfg-parallel branches must share the latent shape (batch included)")
    plan = plan_branches([_speakers(b) for b in branch_inputs], state.cfg_size)
    mine = plan[state.cfg_rank]
    preds: dict[int, torch.Tensor] = {}
    for call in mine:
        out = model(**batch_branches([branch_inputs[i] for i in call]))
        rows = [branch_inputs[i]["x"].shape[0] for i in call]
        preds.update(zip(call, out.split(rows)))
    if state.cfg_size == 1:
        return [preds[i] for i in range(n)]

    if state.world_size > 1 and is_sharded(model):  # FSDP: every rank runs as many forwards
        spare = branch_inputs[mine[0][0]] if mine else branch_inputs[0]
        for _ in range(max(len(p) for p in plan) - len(mine)):
            model(**spare)

    # All-gather over the cfg group (the ranks holding the same sequence slice): each rank
    # sends its predictions in plan order, zero-padded to the longest run.
    runs = [[i for call in p for i in call] for p in plan]
    width = max(len(r) for r in runs)
    x = branch_inputs[0]["x"]  # the DiT predicts a velocity shaped like its latent, in float32
    send = torch.zeros(width, *x.shape, dtype=torch.float32, device=x.device)
    for j, i in enumerate(runs[state.cfg_rank]):
        send[j] = preds[i]
    recv = send.new_empty(state.cfg_size * width, *x.shape)
    all_gather_single(recv.flatten(0, 1), send.flatten(0, 1), group=state.cfg_group)
    recv = recv.view(state.cfg_size, width, *x.shape)
    return [recv[r, runs[r].index(i)] for i in range(n) for r in range(state.cfg_size) if i in runs[r]]
