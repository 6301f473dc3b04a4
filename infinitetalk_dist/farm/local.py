"""The farm in one process: plan, render every window not yet done, stitch (DESIGN.md 7).

    run_job(cfg)  ->  plan (shots + pauses + forced cuts)  ->  JobStore at cfg.farm.store
                  ->  render the missing windows, longest first, each stored as it finishes
                  ->  stitch all windows in order with the original audio into cfg.output

Re-running the same job resumes: windows already in the store (size and sha256 as recorded)
are not rendered again. The store refuses a different job (other plan, settings or inputs).

Farm options (read with defaults, so they work with or without a ``farm:`` block in the config):
``farm.store`` (null: ``<output>.job`` next to the output), ``farm.replicas`` (1),
``farm.target_s`` (null: from the replicas), ``farm.overlap_s`` (1.0), ``farm.min_s`` (10.0),
``farm.max_s`` (120.0), ``farm.min_pause_s`` (0.3), ``farm.shot_threshold`` (27.0).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from infinitetalk_dist.models.build import Models
from infinitetalk_dist.parallel import ParallelState
from infinitetalk_dist.pipeline.generate import FPS, InputError, Sources, replica_runtime, resolve_sources
from infinitetalk_dist.pipeline.media import WrittenVideo

from .plan import Plan, make_plan
from .store import JobStore, hash_file
from .stitch import stitch

__all__ = ["FARM_DEFAULTS", "Job", "farm_options", "job_inputs", "job_settings", "plan_sources", "prepare_job", "run_job",
           "store_url"]

log = logging.getLogger(__name__)

# The farm group's local defaults, for configs composed without the group (one source of truth).
FARM_DEFAULTS = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "farm" / "local.yaml"))

# Config paths that say how a job runs, not what it renders: left out of the stored settings so
# a job can be resumed elsewhere (another device, attention backend, output name, parallelism).
_EXECUTION_KEYS = ("output", "progress", "device", "attention", "compile", "parallel", "smoke", "farm", "k8s")
_INPUT_FILES = ("image", "video", "audio", "audio2", "demo_dir")


def farm_options(cfg: DictConfig) -> dict:
    """``cfg.farm`` merged over :data:`FARM_DEFAULTS` (missing keys take the defaults)."""
    given = OmegaConf.select(cfg, "farm", default=None)
    given = OmegaConf.to_container(given, resolve=True) if given is not None else {}
    return {**FARM_DEFAULTS, **given}


def store_url(cfg: DictConfig) -> str:
    """The job store: ``farm.store`` or ``<output>.job`` next to the output."""
    return str(farm_options(cfg)["store"] or f"{cfg.output}.job")


def _output(cfg: DictConfig) -> Path:
    output = Path(cfg.output)
    if output.suffix.lower() != ".mp4":
        raise InputError(f"output must be an .mp4 file, got {output}")
    return output


def plan_sources(cfg: DictConfig, sources: Sources) -> Plan:
    """The job's plan from its already loaded inputs: frames from the audio (capped by
    ``sampler.max_frames``), pauses from the speech mix (silero-vad), shot cuts from the source
    video (V2V), replicas/target/overlap from ``farm``."""
    from .cuts import shot_cuts, speech_pauses

    f = farm_options(cfg)
    frames = sources.frames
    if cfg.sampler.max_frames:
        frames = min(frames, int(cfg.sampler.max_frames))
    if frames < 1:
        raise InputError("the audio is shorter than one frame")
    pauses = speech_pauses(sources.audio.mix, min_pause_s=float(f["min_pause_s"]))
    shots = []
    if sources.video is not None:
        shots = [s for s in shot_cuts(sources.video.path, FPS, threshold=float(f["shot_threshold"])) if 0 < s < frames]
    return make_plan(frames, shots=shots, pauses=pauses, replicas=int(f["replicas"]), target_s=f["target_s"],
                     overlap_s=float(f["overlap_s"]), min_s=float(f["min_s"]), max_s=float(f["max_s"]),
                     seed=int(cfg.seed), steps=int(cfg.sampler.steps), fps=FPS)


def job_settings(cfg: DictConfig) -> dict:
    """What decides the rendered frames: the config less execution details and input paths
    (the inputs are recorded by content, :func:`job_inputs`)."""
    doc = OmegaConf.to_container(cfg, resolve=True)
    for key in _EXECUTION_KEYS:
        doc.pop(key, None)
    for key in _INPUT_FILES:
        doc.get("input", {}).pop(key, None)
    return doc


def job_inputs(sources: Sources) -> dict[str, str]:
    """name -> sha256 of every input file the job read (the demo inputs when none were given)."""
    return {k: hash_file(v) for k, v in sources.files.items()}


@dataclass
class Job:
    """A job ready to run: its inputs, plan, opened store and the windows still to render."""

    cfg: DictConfig
    output: Path
    sources: Sources
    plan: Plan
    store: JobStore
    done: set[int]
    todo: list  # windows not in the store, longest first

    def stitch(self) -> WrittenVideo:
        audio = self.sources.mix_original
        return stitch(self.store.iter_windows(self.plan.windows), self.plan, self.output, audio=audio,
                      audio_sr=48000 if not isinstance(audio, str) else None)

    def report(self, attempts, *, replicas: int, wall_s: float, backend: str, gpus_per_replica: int = 0,
               error: str | None = None) -> None:
        """Write the job report into the store (a failure to write it only warns)."""
        from .report import write_report

        try:
            path = write_report(self.store, self.plan, attempts, replicas=replicas, wall_s=wall_s,
                                wave_16k=self.sources.audio.mix, backend=backend,
                                gpus_per_replica=gpus_per_replica, already_done=len(self.done), error=error)
            log.info("job report: %s", path)
        except Exception as e:  # the report must never hide the job's own outcome
            log.warning("could not write the job report (%s: %s)", type(e).__name__, e)


def prepare_job(cfg: DictConfig) -> Job:
    """Inputs, plan, store (created or resumed: the same job only) and what is left to do."""
    output = _output(cfg)
    sources = resolve_sources(cfg, output)
    plan = plan_sources(cfg, sources)
    store = JobStore.create_or_open(store_url(cfg), plan.to_json(), job_settings(cfg), job_inputs(sources))
    done = store.done()
    todo = sorted((w for w in plan.windows if w.index not in done), key=lambda w: (-w.cost, -w.frames, w.index))
    log.info("%s\njob store %s: %d of %d windows done, %d to render", plan.summary(), store.url,
             len(done), len(plan.windows), len(todo))
    return Job(cfg, output, sources, plan, store, done, todo)


def run_job(cfg: DictConfig, *, models: Models | None = None) -> WrittenVideo:
    """Render the job ``cfg`` window by window into its store, then stitch ``cfg.output``.
    ``farm.backend: ray`` hands the windows to replicas on a Ray cluster (farm/ray_farm.py)."""
    if farm_options(cfg).get("backend") == "ray":
        from .ray_farm import run_job_ray

        return run_job_ray(cfg)
    from .render import render_window
    from .schedule import Attempt

    job = prepare_job(cfg)
    todo, attempts, t_job = job.todo, [], time.perf_counter()
    if todo:
        if models is None:
            models = replica_runtime(cfg, ParallelState.single(cfg.device)).models
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="window", desc="farm", dynamic_ncols=True)
        scratch = tempfile.mkdtemp(prefix="itd-windows-")
        try:
            for k, w in enumerate(todo, 1):
                label = f"window {k}/{len(todo)} (#{w.index}, frames [{w.start}, {w.end}))"
                if bar is not None:
                    bar.set_description(f"window {k}/{len(todo)}")
                t0 = time.perf_counter()
                attempts.append(Attempt(w.index, 0, t0 - t_job))
                local = os.path.join(scratch, f"{w.index:05d}.mp4")
                render_window(cfg, models, job.sources, w, local)
                job.store.put_window(w.index, local)
                os.unlink(local)
                attempts[-1].end, attempts[-1].outcome = time.perf_counter() - t_job, "done"
                log.info("%s rendered in %.1f s", label, time.perf_counter() - t0)
                if bar is not None:
                    bar.update(1)
        except BaseException as e:
            if attempts and attempts[-1].end is None:
                attempts[-1].end, attempts[-1].outcome = time.perf_counter() - t_job, "failed"
                attempts[-1].cause = f"{type(e).__name__}: {e}"
            job.report(attempts, replicas=1, wall_s=time.perf_counter() - t_job, backend="local",
                       error=f"{type(e).__name__}: {e}")
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if bar is not None:
                bar.close()
    job.report(attempts, replicas=1, wall_s=time.perf_counter() - t_job, backend="local")
    return job.stitch()
