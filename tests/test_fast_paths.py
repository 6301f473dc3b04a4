"""The DiT's fast paths on CPU: fp8 row-scaled linears (the quantisation, emulated exactly as
the GPU path quantises) and torch.compile of the blocks (same numbers as eager)."""

import pytest
import torch

from infinitetalk_dist.kernels.fp8 import FP8_MAX, Fp8Linear, quantize_rows
from infinitetalk_dist.models.build import random_models
from infinitetalk_dist.parallel import INDUCTOR_OPTIONS, compile_blocks, fp8_linears
from tests.parity.golden import record, rel_l2


def test_quantize_rows_scales_each_row_to_the_fp8_range():
    x = torch.randn(5, 64) * torch.tensor([1e-3, 1, 10, 300, 1e4])[:, None]
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (5, 1)
    assert torch.allclose(q.float().abs().amax(1), torch.full((5,), FP8_MAX))
    err = rel_l2(q.float() * s, x)
    assert err < 0.04  # e4m3: 3 mantissa bits, ~2-3% rel L2 whatever the row's magnitude


def test_fp8_linear_close_to_the_bf16_linear():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 128).requires_grad_(False)
    lin.weight.copy_(torch.randn(128, 256, generator=g) / 16)
    x = torch.randn(3, 7, 256, generator=g)
    y = Fp8Linear.from_linear(lin)(x)
    err = rel_l2(y, lin(x))
    record(f"fp8 linear (CPU emulation) vs float32: rel L2 = {err:.2e}")
    assert y.shape == (3, 7, 128) and y.dtype == x.dtype and err < 0.06
    with pytest.raises(ValueError, match="multiples of 16"):
        Fp8Linear.from_linear(torch.nn.Linear(20, 16))


def test_fp8_linears_swaps_only_block_linears():
    dit = random_models("tiny", 0, torch.float32, "cpu", skip=("vae", "clip", "t5", "wav2vec2")).dit
    kinds = {n: type(m).__name__ for n, m in fp8_linears(dit).named_modules()}
    assert kinds["blocks.0.self_attn.q"] == "Fp8Linear" and kinds["blocks.1.ffn.2"] == "Fp8Linear"
    assert kinds["head.head"] != "Fp8Linear" and kinds["text_embedding.0"] == "Linear"


def test_compiled_blocks_equal_eager():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from dit_parallel import make_branches

    dit = random_models("tiny", 0, torch.float32, "cpu", skip=("vae", "clip", "t5", "wav2vec2")).dit
    x = make_branches(dit.config, 64, 64, 9, 1, torch.device("cpu"), torch.float32)["cond"]
    x.pop("ref_target_masks")
    with torch.no_grad():
        eager = dit(**x)
        names = [n for n, _ in dit.named_parameters()]
        compiled = compile_blocks(dit)(**x)
    assert [n for n, _ in dit.named_parameters()] == names  # state-dict keys unchanged
    err = rel_l2(compiled, eager)
    record(f"compiled DiT blocks vs eager (CPU fp32): rel L2 = {err:.2e}")
    assert err < 1e-5


def test_speed_up_compiles_dit_and_vae(monkeypatch):
    """compile=true: every DiT block and the VAE's encoder/decoder are compiled in place (compiled
    blocks give the eager numbers: test above; the compiled bf16 VAE's error is measured on the GPU
    by benchmarks/vae_chunk.py), all in Inductor's deterministic mode (the same bytes in every
    process: benchmarks/compile_determinism.py). ``auto`` compiles only the DiT, on CUDA, one rank
    per replica."""
    from infinitetalk_dist.pipeline.request import GenerateRequest
    from infinitetalk_dist.pipeline.runtime import compile_targets, speed_up

    assert compile_targets("auto", "cuda", 1, True) == (True, False)  # the VAE's cold compile does not pay
    assert compile_targets("auto", "cuda", 2, True) == (False, False)
    assert compile_targets("auto", "cpu", 1, True) == (False, False)
    assert compile_targets(True, "cpu", 1, True) == (True, True)
    assert compile_targets(True, "cuda", 4, True) == (True, False)  # the spread VAE's halo hooks stay eager
    assert compile_targets(True, "cuda", 4, False) == (True, True)
    assert compile_targets(False, "cuda", 1, False) == (False, False)
    models = random_models("tiny", 0, torch.float32, "cpu", skip=("clip", "t5", "wav2vec2"))
    speed_up(GenerateRequest(device="cpu", compile="auto"), models)
    assert models.vae.decoder._compiled_call_impl is None and models.dit.blocks[0]._compiled_call_impl is None
    options, compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **kw: options.append(kw.get("options")) or compile(*a, **kw))
    speed_up(GenerateRequest(device="cpu", compile=True), models)
    assert options == [INDUCTOR_OPTIONS] * (len(models.dit.blocks) + 2) and INDUCTOR_OPTIONS["deterministic"]
    assert all(b._compiled_call_impl is not None for b in models.dit.blocks)
    assert models.vae.encoder._compiled_call_impl is not None and models.vae.decoder._compiled_call_impl is not None
    with pytest.raises(ValueError, match="compile must be"):  # the request's schema refuses it
        GenerateRequest(device="cpu", compile="sometimes")
