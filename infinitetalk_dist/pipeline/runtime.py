"""How a process takes part in rendering: its models, the DiT's branch prediction, writing.

One function builds a replica's side for one process or many: :func:`replica_runtime` (used by
``generate``, the torchrun entry and every farm worker). The DiT always comes from the one
loader ``parallel.load_dit`` (each rank reads its own rows; one process reads them all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.kernels import device_backend
from infinitetalk_dist.models.build import Models, load_models, random_models
from infinitetalk_dist.models.weights import WeightsLayout
from infinitetalk_dist.parallel import (INDUCTOR_OPTIONS, ParallelState, compile_blocks, fp8_linears, load_dit,
                                        parallelize_dit, predict_branches)
from infinitetalk_dist.parallel.load_quant import load_quantized_dit
from infinitetalk_dist.parallel.offload import offload_blocks
from infinitetalk_dist.parallel.vae_spread import SpreadVAE

from .encoders import host_resident, pin_
from .request import GenerateRequest, torch_dtype
from .text import ByteTokenizer, HFTokenizer, PromptEncoder

__all__ = ["Runtime", "build_models", "replica_runtime", "speed_up", "tokenizer"]


@dataclass
class Runtime:
    """This process's part of a replica.

    ``predict``: all guidance branches of a step at once (one batched forward, or CFG-parallel
    ranks); ``writer``: whether this process writes the output (rank 0); ``prompts``: the
    replica's prompt embeddings, each prompt encoded once for every window it renders."""

    models: Models
    predict: object
    writer: bool = True
    prompts: PromptEncoder | None = None


def build_models(request: GenerateRequest, state: ParallelState | None = None) -> Models:
    """The request's models for this rank of ``state`` (default: one process): the DiT
    sharded / sequence-parallel as ``state`` says, the other models whole. The VAE runs in
    ``vae_dtype`` (float32 by default; bfloat16 halves its time on a GPU)."""
    device, dtype = torch.device(request.device), torch_dtype(request.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={request.device}, but this process sees no CUDA GPU "
                         f"(torch {torch.__version__}{'' if torch.version.cuda else ', a CPU-only build'}): use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device={request.device}, but this process sees {torch.cuda.device_count()} GPU(s)")
    state = state or ParallelState.single(device)
    # Streamed blocks are loaded into host memory first: the DiT need not fit on the card once.
    dit_device = torch.device("cpu") if request.offload.dit_resident_blocks is not None else device
    fsdp = request.parallel.fsdp
    backend = device_backend(request.attention, device)
    host = host_resident(request.encoders, device)  # T5 and CLIP kept in host memory (pipeline/encoders.py)
    if request.model.weights:
        lay = WeightsLayout(Path(request.model.weights), request.weights_variant)
        quant = request.model.quant
        quant_file = Path(request.model.quant_file) if request.model.quant_file else (
            lay.quant_file(quant) if quant else None)
        lay.check(quant_file)
        if quant_file:  # the official optimum-quanto file: 8-bit weights kept
            dit = load_quantized_dit(lay.wan, quant_file, state, dtype=dtype, device=dit_device,
                                     attn_backend=backend, fsdp=fsdp)
        else:
            loras = [(lo.path, float(lo.strength)) for lo in request.model.loras]
            dit = load_dit(lay.wan, lay.infinitetalk, state, dtype=dtype, device=dit_device, loras=loras,
                           attn_backend=backend, fsdp=fsdp)
        models = load_models(lay.root, variant=lay.variant, dtype=dtype, device=device, skip=("dit",),
                             host=("t5", "clip", "wav2vec2") if host else (), preset=request.model.preset)
        models.dit = dit
    else:  # the tiny preset: the same seeded weights on every rank, then parallelised
        _check_random_fits(request.model.preset, dtype, device)
        models = random_models(request.model.preset, request.seed, dtype, device)
        models.dit.set_attn_backend(backend)
        parallelize_dit(models.dit, state, fsdp=fsdp)
        if host:
            models.t5.cpu(), models.clip.cpu(), models.wav2vec2.cpu()
    if host and request.encoders == "offload":
        pin_(models.t5), pin_(models.clip), pin_(models.wav2vec2)
    vae_dtype = torch_dtype(request.vae_dtype)
    if vae_dtype != torch.float32:
        models.vae.to(vae_dtype)
    return models


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: the GPU's, or the host's available physical memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_random_fits(preset: str, dtype: torch.dtype, device: torch.device) -> None:
    """Random weights of ``preset`` (no weights folder) are made only where they fit: the 14B
    preset needs ~60-100 GB, which on a laptop ends in the OOM killer with no message."""
    from infinitetalk_dist.models.build import preset_bytes

    need, free = preset_bytes(preset, dtype), free_bytes(device)
    if need > 0.9 * free:
        raise InputError(f"--preset {preset} without --weights makes random weights: {need / 2**30:.0f} GiB on "
                         f"{device}, {free / 2**30:.0f} GiB free; give --weights DIR (the official folder: "
                         "infinitetalk-dist weights download DIR) or use --preset tiny")


def compile_targets(mode: Any, device_type: str, world: int, vae_spread: bool) -> tuple[bool, bool]:
    """What ``compile`` (``mode``) compiles: (the DiT blocks, the VAE's encoder and decoder).
    ``auto`` is the DiT blocks on CUDA with one rank per replica; the VAE only with ``true``:
    through the CLI on an H200 its cold compile took 70-175 s and the compiled fp32 VAE was slower
    than the eager one (RESULTS.md, end to end). The spread VAE's halo hooks stay eager."""
    dit = mode is True or (mode == "auto" and device_type == "cuda" and world == 1)
    return dit, mode is True and (world == 1 or not vae_spread)


def speed_up(request: GenerateRequest, models: Models, world: int = 1) -> Models:
    """The fast paths of the request, applied in place (benchmarks/RESULTS.md has their times
    and errors): ``fp8`` row-scaled fp8 linears in the DiT blocks (one rank per replica only),
    then ``compile`` (:func:`compile_targets`)."""
    if request.fp8:
        if world > 1:
            raise InputError("fp8=true needs one rank per replica (FSDP shards bf16 weights)")
        fp8_linears(models.dit)
    dit, vae = compile_targets(request.compile, torch.device(request.device).type, world, request.parallel.vae_spread)
    if dit:
        compile_blocks(models.dit)
    if vae:
        models.vae.encoder.compile(options=INDUCTOR_OPTIONS)
        models.vae.decoder.compile(options=INDUCTOR_OPTIONS)
    if request.offload.dit_resident_blocks is not None:  # after compile: the streaming stays outside it
        try:
            offload_blocks(models.dit, request.offload.dit_resident_blocks, request.device)
        except ValueError as e:
            raise InputError(str(e)) from None
    return models


def tokenizer(request: GenerateRequest, models: Models):
    """The umt5 tokenizer of the weights folder, or the tiny preset's byte tokenizer."""
    t5 = models.preset.t5
    if request.model.weights:
        return HFTokenizer(WeightsLayout(Path(request.model.weights)).t5_tokenizer, t5.text_len)
    return ByteTokenizer(t5.vocab_size, t5.text_len)


def replica_runtime(request: GenerateRequest, state: ParallelState) -> Runtime:
    """This rank's part of a replica of ``state.world_size`` processes (an initialised process
    group, or :meth:`ParallelState.single`): models, fast paths, the branch prediction (one
    batched forward per step; CFG-parallel over ``state``'s cfg ranks) and ``writer`` on rank 0."""
    if request.sampler.teacache and state.cfg_size > 1:
        raise InputError("TeaCache keeps one residual per guidance branch on every rank: use parallel.cfg=1")
    models = speed_up(request, build_models(request, state), state.world_size)
    if state.world_size > 1 and request.parallel.vae_spread:
        models.vae = SpreadVAE(models.vae, state.replica_group)
    prompts = PromptEncoder(models.t5, tokenizer(request, models), device=request.device, mode=request.encoders)
    return Runtime(models, lambda branches: predict_branches(models.dit, branches, state), writer=state.rank == 0,
                   prompts=prompts)
