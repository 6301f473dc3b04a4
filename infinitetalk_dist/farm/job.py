"""A long job: its inputs, plan and store, what is left to render, and the backend that renders it.

    run_job(request, farm) -> prepare_job: inputs (decoded once, here), plan (shots + pauses +
                              forced cuts), JobStore at farm.store (created, or resumed: the same
                              job only) and the windows not yet stored
                           -> the backend (farm=local: this process; farm=ray: replicas on a
                              Ray cluster) renders them through the same worker and queue
                           -> stitch every window in order with the original audio

Re-running the same job resumes: windows already in the store (size and sha256 as recorded)
are not rendered again. The store refuses a different job (other plan, settings or inputs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.media import WrittenVideo
from infinitetalk_dist.media.atomic import atomic_write
from infinitetalk_dist.media.encode import check_output
from infinitetalk_dist.pipeline.conform.run import ConformPlan, plan_conform, write_conformed
from infinitetalk_dist.pipeline.generate import read_sources
from infinitetalk_dist.pipeline.request import GenerateRequest
from infinitetalk_dist.pipeline.sources import Sources, check_destination, check_not_an_input

from .lease import StoreLease
from infinitetalk_dist.timeline import FPS

from .options import FarmOptions
from .plan import Plan, make_plan
from .stitch import stitch, stitched_frames
from .store import JobStore, hash_file

__all__ = ["Job", "farm_timings", "job_inputs", "job_settings", "plan_sources", "prepare_job", "run_job"]

log = logging.getLogger(__name__)

# Request fields that say how a job runs, not what it renders: left out of the stored settings
# so a job can be resumed elsewhere (another device, attention backend, output name, parallelism).
_EXECUTION_KEYS = ("output", "progress", "timings", "device", "attention", "compile", "parallel",
                  "encoders", "offload")
_INPUT_FILES = ("image", "video", "audio", "audio2", "demo_dir")


def plan_sources(request: GenerateRequest, farm: FarmOptions, sources: Sources,
                 cut_times: list[float] | None = None) -> Plan:
    """The job's plan from its loaded inputs: frames from the audio (capped by
    ``sampler.max_frames``), pauses from the speech mix (silero-vad), shot cuts from the source
    video (V2V; ``cut_times``: already detected, seconds), replicas/target/overlap from
    ``farm``, window costs from the chunk sizes."""
    from .cuts import cut_frames, shot_cuts, speech_pauses

    frames = sources.frames
    if request.sampler.max_frames:
        frames = min(frames, int(request.sampler.max_frames))
    if frames < 1:
        raise InputError("the audio is shorter than one frame")
    pauses = speech_pauses(sources.audio.mix, min_pause_s=farm.min_pause_s)
    shots = []
    if cut_times is not None:
        shots = [s for s in cut_frames(cut_times) if s < frames]
    elif sources.reference.video_path is not None:
        shots = [s for s in shot_cuts(sources.reference.video_path, FPS, threshold=farm.shot_threshold)
                 if 0 < s < frames]
    s = request.sampler
    return make_plan(frames, shots=shots, pauses=pauses, replicas=farm.replicas, target_s=farm.target_s,
                     overlap_s=farm.overlap_s, min_s=farm.min_s, max_s=farm.max_s, seed=request.seed,
                     steps=s.steps, frame_num=s.frame_num, motion_frame=s.motion_frame, fps=FPS)


def job_settings(request: GenerateRequest) -> dict:
    """What decides the rendered frames: the request less execution details and input paths
    (the inputs are recorded by content, :func:`job_inputs`)."""
    doc = {f.name: getattr(request, f.name) for f in dataclasses.fields(GenerateRequest)
           if f.name not in _EXECUTION_KEYS}
    doc = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in doc.items()}
    for key in _INPUT_FILES:
        doc["input"].pop(key, None)
    return doc


def job_inputs(sources: Sources) -> dict[str, str]:
    """name -> sha256 of every input file the job read (the demo inputs when none were given)."""
    return {k: hash_file(v) for k, v in sources.files.items()}


@dataclass
class Job:
    """A job ready to run: its request, inputs, plan, opened store and the windows still to render."""

    request: GenerateRequest
    farm: FarmOptions
    output: Path
    sources: Sources
    plan: Plan
    store: JobStore
    done: set[int]
    todo: list  # windows not in the store
    conform: ConformPlan | None = None  # conform jobs: the shots' boxes (the reference is cropped)

    def stitch(self) -> WrittenVideo:
        windows = self.store.iter_windows(self.plan.windows)
        src = self.sources
        if self.conform is not None:  # the stitched crops composited into the source, streaming
            mix = self.request.conform.mix
            return write_conformed(self.output, self.conform, stitched_frames(windows, self.plan), self.request,
                                   audio=mix or src.mix_original, audio_sr=None if mix else src.mix_rate)
        return stitch(windows, self.plan, self.output, audio=src.mix_original, audio_sr=src.mix_rate)


def prepare_job(request: GenerateRequest, farm: FarmOptions) -> Job:
    """Inputs, plan, store (created or resumed: the same job only) and what is left to do.
    Conform jobs: the shots' boxes are found here, once; workers get the cropped reference and
    the boxes are part of the stored settings (a resumed job renders the same crops)."""
    output, sources = read_sources(request)
    store_url = farm.store_url(request.output)
    check_not_an_input(store_url, sources.files.values(), what="job store")
    conform = None
    settings = job_settings(request)
    settings["window_codec"] = farm.window_codec  # a resumed job keeps its windows' format
    ext = farm.window_ext(conform=request.conform.enabled)
    if request.conform.enabled:  # one shot detection: the boxes and the plan's shot cuts
        check_output(output, request.conform.codec)
        conform = plan_conform(request, sources, shot_threshold=farm.shot_threshold)
        sources = dataclasses.replace(sources, reference=conform.reference)
        settings["conform_boxes"] = [[start, None if b is None else b.to_json()]
                                     for (start, _), b in zip(conform.shots, conform.boxes)]
    plan = plan_sources(request, farm, sources, cut_times=conform.cuts if conform else None)
    store = JobStore.create_or_open(store_url, plan.to_json(), settings, job_inputs(sources),
                                    window_ext=ext)
    done = store.done()
    todo = [w for w in plan.windows if w.index not in done]
    log.info("%s\njob store %s: %d of %d windows done, %d to render", plan.summary(), store.url,
             len(done), len(plan.windows), len(todo))
    return Job(request, farm, output, sources, plan, store, done, todo, conform)


def run_job(request: GenerateRequest, farm: FarmOptions) -> WrittenVideo:
    """Render the job window by window into its store (``farm.backend``), then stitch the film.
    ``timings=true``: also ``<output>.timings.json`` (:func:`farm_timings`)."""
    from .local import run_local
    from .ray_farm import run_ray

    t0 = time.perf_counter()
    url = farm.store_url(request.output)
    check_destination(request.output)  # the output's and the lease's folder, before any is written
    check_not_an_input(url, request.input_files, what="job store")
    with StoreLease(JobStore(url), job=str(request.output)):  # one driver per store (farm/lease.py)
        job = prepare_job(request, farm)
        prepare_s = time.perf_counter() - t0
        run = {"local": run_local, "ray": run_ray}[farm.backend](job) if job.todo else None
        t = time.perf_counter()
        film = job.stitch()
    if request.timings:
        report = farm_timings(film, run, prepare_s=prepare_s, stitch_s=time.perf_counter() - t,
                              wall_s=time.perf_counter() - t0)
        with atomic_write(f"{job.output}.timings.json") as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
        log.info("timings: %s.timings.json (%.2f GPU-s per output s)", job.output, report["gpu_s_per_output_s"])
    return film


def farm_timings(film: WrittenVideo, run: dict | None, *, prepare_s: float, stitch_s: float, wall_s: float) -> dict:
    """A farm job's figures: inputs + plan, the run (:meth:`~.driver.JobRun.summary`; None when
    every window was already stored), the stitch, and GPU-seconds per output second (wall
    time x the replicas' GPUs / seconds of film)."""
    gpus = run["replicas"] * run["ranks"] if run else 0
    out_s = film.frames / FPS
    return {"output_s": round(out_s, 3), "frames": film.frames, "wall_s": round(wall_s, 3),
            "prepare_s": round(prepare_s, 3), "stitch_s": round(stitch_s, 3), "gpus": gpus,
            "gpu_s_per_output_s": round(wall_s * gpus / max(out_s, 1e-9), 2), "run": run}
