"""encoders=offload|gpu|cpu: where T5 and CLIP live between calls. Offloading changes no number
and gives the GPU memory back; a farm replica encodes each prompt once for all its windows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.farm import render as render_mod
from infinitetalk_dist.farm.job import prepare_job
from infinitetalk_dist.farm.options import FarmOptions
from infinitetalk_dist.farm.replica import ReplicaWorker
from infinitetalk_dist.models.build import random_models
from infinitetalk_dist.pipeline.encoders import placed
from infinitetalk_dist.pipeline.request import GenerateRequest, InputOptions, SamplerOptions
from infinitetalk_dist.samples import write_demo_inputs


def test_unknown_mode_is_one_clear_error():
    with pytest.raises(InputError, match="encoders must be one of gpu, offload, cpu"):
        GenerateRequest(encoders="disk")


@pytest.mark.parametrize("mode", ["gpu", "offload", "cpu"])
def test_on_the_cpu_every_mode_runs_in_place(mode):
    m = torch.nn.Linear(4, 4)
    weight = m.weight
    with placed(m, "cpu", mode) as run:
        assert run.type == "cpu" and m.weight is weight
    assert m.weight is weight


def test_a_replica_encodes_each_prompt_once_and_times_every_window(tmp_path, monkeypatch):
    image, audio = write_demo_inputs(tmp_path / "in", seconds=2.0)
    request = GenerateRequest(input=InputOptions(image=str(image), audio=str(audio)), output=str(tmp_path / "f.mp4"),
                              sampler=SamplerOptions(steps=1, frame_num=17, motion_frame=5), progress=False)
    job = prepare_job(request, FarmOptions(min_s=0.5, target_s=0.7, overlap_s=0.2))
    assert len(job.plan.windows) >= 2
    worker = ReplicaWorker(job.request, job.store.url, 0, 1, job.sources.reference)
    info = worker.setup(None)
    assert info["load_s"] > 0 and info["pid"] > 0
    calls = []
    encode = worker.runtime.models.t5.encode
    monkeypatch.setattr(worker.runtime.models.t5, "encode", lambda *a: calls.append(1) or encode(*a))
    for w in job.plan.windows[:2]:
        result = worker.render(dataclasses.asdict(w), render_mod.window_tracks(job.sources.audio.tracks, w.start, w.end))
        stages = result["timings"]["stages"]
        assert {"dit", "vae_decode", "clip", "encode", "upload"} <= set(stages) and stages["dit"] > 0
    assert len(calls) == 2  # the prompt and the negative prompt, for both windows


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_gives_the_same_numbers_and_the_memory_back():
    models = random_models("tiny", 0, torch.bfloat16, "cpu")
    t5, clip = models.t5, models.clip
    ids = torch.randint(2, 100, (1, 32))
    mask = torch.ones_like(ids)
    size = models.preset.clip.image_size
    image = torch.randn(1, 3, 1, size, size)

    def offloaded():
        with placed(t5, "cuda", "offload") as run:
            a = t5.encode(ids.to(run), mask.to(run))[0]
        with placed(clip, "cuda", "offload") as run:
            b = clip(image.to(run))
        return a, b

    first = offloaded()  # also allocates the libraries' workspaces (cuBLAS)
    base = torch.cuda.memory_allocated()
    again = offloaded()
    kept = torch.cuda.memory_allocated() - base
    assert kept <= sum(t.numel() * t.element_size() + 512 for t in again)  # only the outputs stay on the GPU
    assert next(t5.parameters()).device.type == "cpu" and next(clip.parameters()).device.type == "cpu"
    resident_t5, resident_clip = t5.cuda(), clip.cuda()
    for got in (first, again):
        assert torch.equal(got[0], resident_t5.encode(ids.cuda(), mask.cuda())[0])
        assert torch.equal(got[1], resident_clip(image.cuda()))
