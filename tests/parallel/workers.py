"""Rank functions for the distributed tests (module level: the spawned ranks import them)."""

from __future__ import annotations

import torch

from infinitetalk_dist.models.dit import InfiniteTalkDiT
from infinitetalk_dist.models.presets import tiny_preset
from infinitetalk_dist.models.random_init import randomize_, seeded
from infinitetalk_dist.parallel import (
    ParallelState,
    local_param_bytes,
    parallelize_dit,
    predict_branches,
    random_sharded_dit,
)

SEED = 0


def tiny_config():
    return tiny_preset().dit


def tiny_model(seed: int = SEED, dtype=torch.float32) -> InfiniteTalkDiT:
    with torch.device("meta"):
        model = InfiniteTalkDiT(tiny_config())
    return randomize_(model, seeded(seed), dtype)


def make_inputs(grid: tuple[int, int, int], speakers: int = 1, batch: int = 1, seed: int = 1,
                dtype=torch.float32) -> dict:
    """DiT inputs for a latent grid (T, h, w); tokens = T * h/2 * w/2."""
    cfg = tiny_config()
    g = torch.Generator().manual_seed(seed)
    t_lat, h, w = grid
    frames = 1 + cfg.vae_scale * (t_lat - 1)
    masks = torch.zeros(3, h, w)
    masks[0, :, : w // 2] = 1
    masks[1, :, w // 2 :] = 1
    masks[2, : h // 3] = 1
    return dict(
        x=torch.randn(batch, 16, t_lat, h, w, generator=g, dtype=dtype),
        t=torch.tensor([700.0]),
        context=torch.randn(batch, 5 + seed % 3, cfg.text_dim, generator=g, dtype=dtype),
        clip_fea=torch.randn(batch, 9, cfg.clip_dim, generator=g, dtype=dtype),
        y=torch.randn(batch, cfg.in_dim - 16, t_lat, h, w, generator=g, dtype=dtype),
        audio=torch.randn(batch, speakers, frames, cfg.audio_window, cfg.audio_blocks, cfg.audio_channels,
                          generator=g, dtype=dtype),
        ref_target_masks=masks,
    )


def guidance_branches(grid, speakers: int, count: int) -> list[dict]:
    """cond / drop_text / uncond (count 3) or cond / drop_audio (count 2), as the sampler builds them."""
    cond = make_inputs(grid, speakers, seed=1)
    null_text = make_inputs(grid, 1, seed=2)["context"]
    silent = torch.zeros_like(cond["audio"][:, -1:])
    if count == 2:
        return [cond, {**cond, "audio": silent}]
    return [cond, {**cond, "context": null_text}, {**cond, "context": null_text, "audio": silent}]


def _compare(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    return dict(equal=bool(torch.equal(ours, ref)), max_abs=float((ours - ref).abs().max()),
                scale=float(ref.abs().max()), shape=tuple(ours.shape))


@torch.no_grad()
def sequence_parallel(sp: int, cases: list[tuple], bf16_case: tuple | None = None) -> dict:
    """sp-way Ulysses (cfg 1), FSDP off and on, against the one-process forward (fp32).

    Returns per case the comparison of each variant with the one-process output and of the
    FSDP variant with the non-FSDP one; plus the Ulysses core alone and parameter bytes.
    """
    from infinitetalk_dist.kernels import attention
    from infinitetalk_dist.parallel.ulysses import UlyssesAttention
    from infinitetalk_dist.models.dit import AttentionCore

    state = ParallelState.create(cfg=1, sp=sp)
    ref = tiny_model()
    plain = parallelize_dit(tiny_model(), state, fsdp=False)
    sharded = parallelize_dit(tiny_model(), state, fsdp=True)
    out = dict(rank=state.rank, local_bytes=local_param_bytes(sharded),
               total_bytes=sum(p.numel() * p.element_size() for p in ref.parameters()), cases=[], core=[])

    # The Ulysses core alone: all-to-all + attention + all-to-all vs attention on the whole sequence.
    g = torch.Generator().manual_seed(5)
    core = UlyssesAttention(AttentionCore(), sp, state.sp_group)
    for dtype in (torch.float32, torch.bfloat16):
        for k_lens in (None, 37):
            q, k, v = (torch.randn(2, 40, 8, 16, generator=g).to(dtype) for _ in range(3))
            whole = attention(q, k, v, k_lens=k_lens)
            n = 40 // sp
            mine = slice(state.sp_rank * n, (state.sp_rank + 1) * n)
            got = core(q[:, mine], k[:, mine], v[:, mine], k_lens)
            out["core"].append(dict(dtype=str(dtype), k_lens=k_lens, **_compare(got, whole[:, mine])))

    for grid, speakers, batch in cases:
        kw = make_inputs(grid, speakers, batch)
        want = ref(**kw)
        a, b = plain(**kw), sharded(**kw)
        out["cases"].append(dict(grid=grid, speakers=speakers, batch=batch, plain=_compare(a, want),
                                 fsdp=_compare(b, want), fsdp_vs_plain=_compare(b, a)))
    kw = make_inputs(*cases[0])
    out["repeat"] = _compare(sharded(**kw), ref(**kw))  # no state carried between calls
    if bf16_case is not None:
        grid, speakers = bf16_case
        kw = make_inputs(grid, speakers, dtype=torch.bfloat16)
        ref16 = tiny_model(dtype=torch.bfloat16)
        par16 = parallelize_dit(tiny_model(dtype=torch.bfloat16), state, fsdp=True)
        got, want = par16(**kw), ref16(**kw)
        out["bf16"] = dict(grid=grid, speakers=speakers, **_compare(got, want),
                           rel_l2=float((got - want).norm() / want.norm()),
                           vs_fp32_rel_l2=float((want - ref(**make_inputs(grid, speakers))).norm() / want.norm()))
    return out


@torch.no_grad()
def cfg_parallel(cfg_size: int, sp: int, settings: list[tuple]) -> dict:
    """predict_branches on a cfg x sp mesh, FSDP off and on, vs one-process calls per branch."""
    state = ParallelState.create(cfg=cfg_size, sp=sp)
    ref = tiny_model()
    models = {"plain": parallelize_dit(tiny_model(), state, fsdp=False),
              "fsdp": parallelize_dit(tiny_model(), state, fsdp=True)}
    out = dict(rank=state.rank, cfg_rank=state.cfg_rank, sp_rank=state.sp_rank, results=[])
    for grid, speakers, count in settings:
        branches = guidance_branches(grid, speakers, count)
        want = [ref(**b) for b in branches]
        for name, model in models.items():
            got = predict_branches(model, branches, state)
            out["results"].append(dict(grid=grid, speakers=speakers, branches=count, variant=name,
                                       cmp=[_compare(g_, w) for g_, w in zip(got, want)]))
    return out


@torch.no_grad()
def sharded_loading(root: str, lora: str | None) -> dict:
    """load_dit over the replica (FSDP, sp = world) vs load_dit in one process (state None);
    random_sharded_dit vs randomize_."""
    from pathlib import Path

    from infinitetalk_dist.models.weights import INFINITETALK_FILES, WAN_DIR
    from infinitetalk_dist.parallel import load as load_module
    from infinitetalk_dist.parallel import load_dit

    state = ParallelState.create(cfg=1)
    root = Path(root)
    loras = [(lora, 0.7)] if lora else []
    args = (root / WAN_DIR, root / INFINITETALK_FILES["single"])
    whole = load_dit(*args, None, dtype=torch.float32, loras=loras)  # one process: every row
    # Count what is read from the checkpoint files: without a LoRA, only this rank's rows.
    read_bytes = []
    real_reader = load_module._safetensors_reader

    def counting_reader(handle, name):
        read = real_reader(handle, name)

        def counted(rows):
            t = read(rows)
            read_bytes.append(t.numel() * t.element_size())
            return t
        return counted

    load_module._safetensors_reader = counting_reader
    try:
        sharded = load_dit(*args, state, dtype=torch.float32, device="cpu", loras=loras)
    finally:
        load_module._safetensors_reader = real_reader
    out = dict(rank=state.rank, local_bytes=local_param_bytes(sharded), read_bytes=sum(read_bytes),
               total_bytes=sum(p.numel() * p.element_size() for p in whole.parameters()))
    ref_params = dict(whole.named_parameters())
    out["params_equal"] = all(torch.equal(p.full_tensor(), ref_params[k]) for k, p in sharded.named_parameters())
    out["n_params"] = len(ref_params)
    kw = make_inputs((3, 6, 10), 2)
    out["forward"] = _compare(sharded(**kw), whole(**kw))

    rnd = random_sharded_dit(tiny_config(), state, seeded(3), dtype=torch.float32, device="cpu")
    want = dict(tiny_model(seed=3).named_parameters())
    out["random_equal"] = all(torch.equal(p.full_tensor(), want[k]) for k, p in rnd.named_parameters())
    return out


def vae_spread(shapes: list[tuple[int, int, int]]) -> list[dict]:
    """Per (frames, height, width): the whole-frame encode/decode of the tiny VAE and the
    band-spread one on this rank; max |difference| of each, and the hooks' inertness."""
    import torch.distributed as dist

    from infinitetalk_dist.models.vae import WanVAE, tiny_vae
    from infinitetalk_dist.parallel.vae_spread import SpreadVAE

    with torch.device("meta"):
        vae = WanVAE(tiny_vae())
    vae = randomize_(vae, seeded(SEED)).eval()
    g = torch.Generator().manual_seed(3)
    videos = [torch.rand(1, 3, t, h, w, generator=g) * 2 - 1 for t, h, w in shapes]
    with torch.no_grad():
        whole = [(vae.encode(v), vae.decode(vae.encode(v))) for v in videos]
        spread = SpreadVAE(vae, dist.group.WORLD)
        out = []
        for v, (z, x) in zip(videos, whole):
            zs = spread.encode(v)
            xs = spread.decode(z)
            out.append(dict(shape=tuple(v.shape), z_shape=tuple(zs.shape), x_shape=tuple(xs.shape),
                            z_err=float((zs - z).abs().max()), x_err=float((xs - x).abs().max()),
                            z_scale=float(z.abs().max()), x_scale=float(x.abs().max()),
                            inert=float((vae.encode(v) - z).abs().max())))
    return out
