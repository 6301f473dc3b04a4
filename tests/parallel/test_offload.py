"""DiT block offload (parallel/offload.py): streaming blocks through two slots changes no
number — the golden DiT cases on the CPU, and on a GPU with compiled blocks — and through the
user's command the film is byte-identical; the streamed blocks' weights live off the device."""

from __future__ import annotations

import copy

import pytest
import torch

from infinitetalk_dist.parallel.offload import offload_blocks
from tests.parity.golden import case, each_case
from tests.parity.test_dit import _inputs, _model


@each_case("dit")
@pytest.mark.parametrize("resident", [0, 1, 99])
@torch.no_grad()
def test_offload_changes_no_number(case_name, resident):
    c = case(case_name)
    model, kw = _model(c), _inputs(c)
    want = model(**kw)
    streamed = copy.deepcopy(model)
    off = offload_blocks(streamed, resident, "cpu")
    n = len(model.blocks)
    assert (off is None) == (resident >= n)
    for _ in range(2):  # the slots' state carries over between forwards
        assert torch.equal(streamed(**kw), want)
    if off is not None:
        assert len(off.blocks) == n - resident
        # outside a call, every streamed tensor points at its host copy again
        assert all(t.data_ptr() == h.data_ptr() for b, hs in zip(off.blocks, off.host)
                   for t, h in zip([*b.parameters(), *b.buffers()], hs))


def test_generate_with_offload_writes_the_same_film(tmp_path):
    from infinitetalk_dist.launch.cli import main

    fast = ["sampler.steps=1", "sampler.frame_num=17", "sampler.motion_frame=5", "--no-progress"]
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    assert main(["generate", "-o", str(a), *fast]) == 0
    assert main(["generate", "-o", str(b), *fast, "offload.dit_resident_blocks=1"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert main(["generate", "-o", str(tmp_path / "c.mp4"), *fast, "offload.dit_resident_blocks=-1"]) == 1
    assert not (tmp_path / "c.mp4").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@each_case("dit")
@torch.no_grad()
def test_offload_on_the_gpu_with_compiled_blocks(case_name):
    from infinitetalk_dist.parallel import compile_blocks

    c = case(case_name)
    model = _model(c).to(torch.bfloat16).cuda()
    kw = {k: (v.cuda().to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else
              v.cuda() if torch.is_tensor(v) else v) for k, v in _inputs(c).items()}
    want = model(**kw)
    compile_blocks(model)
    compiled = model(**kw)
    off = offload_blocks(model, 0, "cuda")
    assert all(not t.is_cuda and t.is_pinned() for h in off.host for t in h)
    for _ in range(2):
        got = model(**kw)
        assert torch.equal(got, compiled)
    assert float((compiled.float() - want.float()).norm() / want.float().norm()) < 2e-2
