"""One DiT replica over N CPU ranks (gloo): Ulysses sequence parallelism, FSDP2, CFG-parallel and
sharded loading must give the one-process forward.

Each distributed case runs in its own freshly spawned process group (60 s collective
timeout, hard kill after 120-180 s, every rank's traceback reported), on the tiny preset
with seeded random weights in float32.

Exactness: every real token sees the same values and the same keys as in one process, so
the parallel forward is the same arithmetic, and the tests assert ``torch.equal``. The
exceptions are measured, not assumed, and come from CPU kernels choosing their algorithm by
shape, so that the same row is rounded differently:

- GEMMs (oneDNN/MKL) of fewer than ~11 rows use another kernel than taller ones: a slice
  that small (a 2-token sequence on 2 or 4 ranks) is held to 1e-5 of the output's max;
  every realistic slice (here >= 18 tokens per rank) is bitwise equal;
- batching guidance branches into one forward changes the batch of the patch-embedding
  Conv3d and of the 1-row timestep GEMMs: a branch that shares a forward is held to 1e-5
  (as the parity suite's batch test); a branch run alone, on one rank or on its own cfg
  rank, is bitwise equal.
"""

from __future__ import annotations

import pytest
import torch

from infinitetalk_dist.models.presets import tiny_preset
from infinitetalk_dist.parallel import (
    ParallelState,
    batch_branches,
    check_heads,
    parallelize_dit,
    plan_branches,
    predict_branches,
)
from tests.parallel import workers
from tests.parallel.ranks import DistributedFailure, run_on_ranks
from tests.parity.golden import record
from tests.tiny_weights import write_dit, write_lora

TINY_TOL = 1e-5  # relative to max|output|, for slices of < 11 rows (see the module docstring)


def _check(label: str, c: dict, exact: bool) -> None:
    rel = c["max_abs"] / c["scale"]
    if exact:
        assert c["equal"], f"{label}: not bitwise equal (max|diff| = {c['max_abs']:.3e}, rel {rel:.2e})"
    else:
        assert rel <= TINY_TOL, f"{label}: max|diff|/max|ref| = {rel:.3e} > {TINY_TOL}"


# --------------------------------------------------------------------------- no process group


def test_check_heads():
    for sp in (1, 2, 4, 5, 8, 10, 20, 40):
        check_heads(40, sp)
    for sp in (3, 6, 7, 16):
        with pytest.raises(ValueError, match="divisible"):
            check_heads(40, sp)
    # parallelize_dit refuses before touching any process group
    bad = ParallelState(cfg_size=1, sp_size=3, rank=0, device=torch.device("cpu"))
    with torch.device("meta"):
        from infinitetalk_dist.models.dit import InfiniteTalkDiT

        model = InfiniteTalkDiT(tiny_preset().dit)
    with pytest.raises(ValueError, match=r"head count \(4\).*sp size \(3\)"):
        parallelize_dit(model, bad, fsdp=False)


def test_plan_branches():
    assert plan_branches([1, 1, 1], 1) == [[[0, 1, 2]]]  # one batched forward
    assert plan_branches([2, 2, 1], 1) == [[[0, 1], [2]]]  # two speakers: the silent branch apart
    assert plan_branches([2, 1], 1) == [[[0], [1]]]
    assert plan_branches([1, 1, 1], 3) == [[[0]], [[1]], [[2]]]
    assert plan_branches([2, 2, 1], 2) == [[[0, 1]], [[2]]]  # one forward per cfg rank
    assert plan_branches([1, 1], 3) == [[[0]], [[1]], []]


@torch.no_grad()
@pytest.mark.parametrize("speakers,count", [(1, 2), (1, 3), (2, 2), (2, 3)])
def test_predict_branches_one_process(speakers, count):
    """cfg size 1: batched branches equal one call per branch."""
    model = workers.tiny_model()
    state = ParallelState.single()
    assert parallelize_dit(model, state) is model
    branches = workers.guidance_branches((3, 6, 10), speakers, count)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["x"].shape[0]), with_kwargs=True)
    got = predict_branches(model, branches, state)
    handle.remove()
    assert calls == ([count] if speakers == 1 else [count - 1, 1])
    alone = {c[0] for c in plan_branches([b["audio"].shape[1] for b in branches], 1)[0] if len(c) == 1}
    for i, (g, b) in enumerate(zip(got, branches)):
        want = model(**b)
        _check(f"branch {i}", dict(equal=torch.equal(g, want), max_abs=float((g - want).abs().max()),
                                   scale=float(want.abs().max())), exact=i in alone)


def test_batch_branches_masks_and_contexts():
    a, b = workers.guidance_branches((3, 6, 10), 2, 3)[:2]
    b = {**b, "ref_target_masks": a["ref_target_masks"].flip(-1)}
    kw = batch_branches([a, b])
    assert kw["ref_target_masks"].shape == (2, 3, 6, 10)
    assert kw["context"].shape[1] == max(a["context"].shape[1], b["context"].shape[1])
    assert kw["t"].shape == (2,)


# --------------------------------------------------------------------------- distributed

# (grid (T, h, w) latent, speakers, batch, exact). Tokens = T * h/2 * w/2; 15-25 per frame.
SP2_CASES = [
    ((3, 6, 10), 1, 1, True),  # 45 tokens: padded to 46; frame 1 is cut between the ranks
    ((3, 6, 10), 2, 1, True),  # two speakers: first frame (15) inside rank 0's slice -> broadcast
    ((3, 8, 8), 1, 2, True),  # 48 tokens, no padding, batch 2
    ((1, 2, 4), 2, 1, False),  # 2 tokens: one per rank (GEMMs of 1 row)
]
SP4_CASES = [
    ((3, 10, 10), 1, 1, True),  # 75 tokens -> 76: 19 per rank, frames of 25 cut everywhere
    ((3, 10, 10), 2, 1, True),  # first frame over ranks 0-1 -> keys all-gathered
    ((3, 8, 12), 2, 2, True),  # 72 tokens, no padding, batch 2
    ((1, 2, 2), 1, 1, True),  # 1 token: ranks 1-3 hold padding only
    ((1, 2, 4), 2, 1, False),  # 2 tokens, two speakers
]


def _sequence_parallel(sp: int, cases, bf16_case=None):
    results = run_on_ranks(workers.sequence_parallel, sp, sp, [c[:3] for c in cases], bf16_case,
                           timeout_s=180)
    for res in results:
        r = res["rank"]
        for c in res["core"]:
            assert c["equal"], f"rank {r}: Ulysses core {c} differs from whole-sequence attention"
        for (grid, speakers, batch, exact), got in zip(cases, res["cases"]):
            label = f"sp={sp} rank {r} grid {grid} speakers {speakers} batch {batch}"
            _check(f"{label} (no FSDP)", got["plain"], exact)
            _check(f"{label} (FSDP)", got["fsdp"], exact)
            assert got["fsdp_vs_plain"]["equal"], f"{label}: FSDP changes the result"
        assert res["repeat"]["equal"], f"rank {r}: a second call differs"
    for (grid, speakers, batch, exact), got in zip(cases, results[0]["cases"]):
        rel = got["plain"]["max_abs"] / got["plain"]["scale"]
        record(f"DiT sp={sp} vs one process, grid {grid} ({grid[0] * grid[1] * grid[2] // 4} tokens), "
               f"{speakers} speaker(s), batch {batch}: "
               f"{'bitwise equal' if got['plain']['equal'] else f'max|diff|/max = {rel:.1e} (bound {TINY_TOL:.0e})'}"
               f"; with FSDP: bitwise the same")
    # FSDP: each rank keeps ~1/N of the parameter bytes, and the shards add up to the model.
    total = results[0]["total_bytes"]
    local = [res["local_bytes"] for res in results]
    assert sum(local) == total
    assert max(local) <= 1.02 * total / sp
    record(f"FSDP over {sp} ranks: parameter bytes per rank {local} of {total} "
           f"(max {max(local) / (total / sp):.3f} x total/N)")
    return results


def test_sequence_parallel_sp2():
    _sequence_parallel(2, SP2_CASES)


def test_sequence_parallel_sp4():
    results = _sequence_parallel(4, SP4_CASES, bf16_case=((3, 10, 10), 2))
    # bf16 weights and activations (FSDP MixedPrecisionPolicy in bf16): the same argument as in
    # fp32 (slices of >= 11 rows), measured bitwise equal too.
    for res in results:
        assert res["bf16"]["equal"], res["bf16"]
    b = results[0]["bf16"]
    record(f"DiT sp=4 + FSDP in bf16 vs one-process bf16, grid {b['grid']}, 2 speakers: bitwise equal "
           f"(bf16 vs fp32 itself: rel L2 {b['vs_fp32_rel_l2']:.1e})")


def _cfg_parallel(cfg_size: int, sp: int, settings):
    results = run_on_ranks(workers.cfg_parallel, cfg_size * sp, cfg_size, sp, settings, timeout_s=180)
    worst = 0.0
    for res in results:
        for item in res["results"]:
            speakers = [item["speakers"]] * (item["branches"] - 1) + [1]  # as workers.guidance_branches
            alone = {c[0] for rank_calls in plan_branches(speakers, cfg_size) for c in rank_calls if len(c) == 1}
            for i, c in enumerate(item["cmp"]):
                _check(f"rank {res['rank']} {item['variant']} grid {item['grid']} {item['speakers']} speaker(s), "
                       f"branch {i}/{item['branches']}", c, exact=i in alone)
                if i not in alone:
                    worst = max(worst, c["max_abs"] / c["scale"])
    batched = f"branches sharing a forward: max|diff|/max {worst:.1e} (bound {TINY_TOL:.0e})" if worst else \
        "no branch shares a forward"
    record(f"CFG-parallel cfg={cfg_size} x sp={sp}, FSDP off/on, (grid, speakers, branches) {settings}: every "
           f"rank gets every branch; branches run alone bitwise equal to their one-process forward; {batched}")


def test_cfg2():
    _cfg_parallel(2, 1, [((3, 6, 10), 1, 2), ((3, 6, 10), 1, 3), ((3, 6, 10), 2, 3)])


def test_cfg3():
    # 2 branches on 3 cfg ranks: the idle rank must still run a forward for FSDP's collectives.
    _cfg_parallel(3, 1, [((3, 6, 10), 2, 3), ((3, 6, 10), 1, 2)])


def test_cfg2_sp2():
    _cfg_parallel(2, 2, [((3, 6, 10), 1, 3), ((3, 6, 10), 2, 3), ((3, 6, 10), 2, 2)])


def test_sharded_loading(tmp_path):
    """Official layout (7 shards + index + infinitetalk.safetensors, a LoRA) into FSDP shards."""
    sd = write_dit(tmp_path, tiny_preset().dit)
    lora = tmp_path / "lora.safetensors"
    write_lora(lora, sd, "lightx2v")
    for lora_path in (None, str(lora)):
        results = run_on_ranks(workers.sharded_loading, 2, str(tmp_path), lora_path, timeout_s=120)
        for res in results:
            assert res["params_equal"], f"rank {res['rank']}: sharded parameters differ from the one-process load_dit's"
            assert res["forward"]["equal"], f"rank {res['rank']}: forward differs ({res['forward']})"
            assert res["random_equal"], f"rank {res['rank']}: random_sharded_dit differs from randomize_"
        local = [res["local_bytes"] for res in results]
        assert sum(local) == results[0]["total_bytes"]
        read = [res["read_bytes"] for res in results]
        if lora_path is None:  # each rank read exactly its own rows from the safetensors files
            assert read == local, (read, local)
        record(f"load_dit over 2 ranks{' + LoRA' if lora_path else ''}: {results[0]['n_params']} tensors "
               f"equal to load_dit in one process, forward bitwise equal; bytes kept per rank {local} of "
               f"{results[0]['total_bytes']}; bytes read from safetensors slices per rank {read}"
               f"{' (LoRA: whole tensors read, merged, then sliced)' if lora_path else ''}")


def _fails():
    raise RuntimeError("boom on purpose")


def _rank1_fails():
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 fails on purpose")
    dist.barrier()  # rank 0 waits for a peer that never comes


def test_run_on_ranks_reports_every_rank():
    with pytest.raises(DistributedFailure, match="boom on purpose") as e:
        run_on_ranks(_fails, 2, timeout_s=60)
    assert "--- rank 0 ---" in str(e.value) and "--- rank 1 ---" in str(e.value)
    with pytest.raises(DistributedFailure, match="rank 1 fails on purpose"):
        run_on_ranks(_rank1_fails, 2, timeout_s=60, collective_timeout_s=5)
