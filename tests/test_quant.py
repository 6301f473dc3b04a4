"""The official quantised DiT files (optimum-quanto's format) load into our DiT without
optimum-quanto and compute what optimum-quanto computes. The files are made here by
optimum-quanto itself (``quantize``, ``freeze``, ``quantization_map``) on each golden DiT case,
written the way the official ``quant_models/`` are: one safetensors file holding the whole DiT
and the JSON map beside it."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from infinitetalk_dist.kernels.quant import WeightQuantLinear
from infinitetalk_dist.models.checkpoint import CheckpointError
from infinitetalk_dist.parallel.load_quant import load_quantized_dit, quant_map_path
from tests.parity.golden import case, config, each_case, record, rel_l2
from tests.parity.test_dit import _inputs, _model

quanto = pytest.importorskip("optimum.quanto")
KINDS = {"int8": quanto.qint8, "fp8": quanto.qfloat8}


def write_quantized(model, kind: str, folder):
    """optimum-quanto's model and the official file pair for it."""
    q = copy.deepcopy(model)
    quanto.quantize(q, weights=KINDS[kind])
    quanto.freeze(q)
    path = folder / f"infinitetalk_single_{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in q.state_dict().items()}, str(path))
    quant_map_path(path).write_text(json.dumps(quanto.quantization_map(q)))
    return q, path


def _wan_dir(c, folder):
    (folder / "config.json").write_text(json.dumps(config(c)))
    return folder


@each_case("dit")
@pytest.mark.parametrize("kind", ["int8", "fp8"])
@torch.no_grad()
def test_quantized_file_loads_and_matches_quanto(case_name, kind, tmp_path):
    c = case(case_name)
    model, kw = _model(c), _inputs(c)
    theirs, path = write_quantized(model, kind, tmp_path)
    ours = load_quantized_dit(_wan_dir(c, tmp_path), path, dtype=torch.float32)
    qmap = json.loads(quant_map_path(path).read_text())
    swapped = [n for n, m in ours.named_modules() if isinstance(m, WeightQuantLinear)]
    assert sorted(swapped) == sorted(qmap) and len(swapped) > 0
    want = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[kind]
    assert all(ours.get_submodule(n).weight_data.dtype == want for n in swapped)
    got, ref, exact = ours(**kw), theirs(**kw), model(**kw)
    diff = rel_l2(got, ref)
    record(f"{case_name} {kind} (quanto format): ours vs optimum-quanto rel L2 {diff:.1e}; "
           f"vs the unquantised DiT {rel_l2(got, exact):.2e}")
    assert diff < 1e-6  # the same arithmetic in float32
    assert rel_l2(got, exact) < {"int8": 2e-2, "fp8": 8e-2}[kind]


@each_case("dit")
def test_quantized_file_errors(case_name, tmp_path):
    c = case(case_name)
    model = _model(c)
    wan = _wan_dir(c, tmp_path)
    _, path = write_quantized(model, "int8", tmp_path)
    sd = load_file(str(path))
    qmap = json.loads(quant_map_path(path).read_text())

    def variant(name, tensors=None, mapping=None):
        p = tmp_path / f"{name}.safetensors"
        save_file(tensors if tensors is not None else sd, str(p))
        if mapping is not False:
            quant_map_path(p).write_text(json.dumps(mapping if mapping is not None else qmap))
        return p

    first = sorted(qmap)[0]
    cases = [
        (variant("nomap", mapping=False), "quantisation map of nomap.safetensors is missing"),
        (variant("missing", {k: v for k, v in sd.items() if k != f"{first}.weight._scale"}),
         f"missing from .*{first}.weight_scale"),
        (variant("extra", {**sd, "blocks.0.bogus": torch.zeros(2)}), "unexpected key"),
        (variant("int4", mapping={**qmap, first: {"weights": "qint4", "activations": "none"}}), "qint4"),
        (variant("acts", mapping={**qmap, first: {"weights": "qint8", "activations": "qint8"}}), "activations"),
        (variant("unknown", mapping={**qmap, "blocks.99.ffn.0": {"weights": "qint8"}}), "does not have"),
        (variant("fp8map", mapping={**qmap, first: {"weights": "qfloat8"}}), "weight data is torch.int8"),
    ]
    for p, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load_quantized_dit(wan, p, dtype=torch.float32)


def test_generate_with_the_official_quantised_file(tmp_path, capsys):
    """`generate --weights DIR --quant int8` reads InfiniteTalk/quant_models/ of the folder (no
    bf16 DiT shards needed); a missing file, or a LoRA with it, is one error line."""
    import sys
    from pathlib import Path

    from infinitetalk_dist.launch.cli import main
    from infinitetalk_dist.models.weights import WeightsLayout
    from infinitetalk_dist.parallel import load_dit
    from infinitetalk_dist.samples import write_demo_inputs

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from make_weights import make_weights

    root = tmp_path / "weights"
    make_weights(root, preset="tiny", device="cpu", lora_rank=2)
    lay = WeightsLayout(root)
    dit = load_dit(lay.wan, lay.infinitetalk, dtype=torch.float32)
    lay.quant_file("int8").parent.mkdir(parents=True)
    _, path = write_quantized(dit, "int8", lay.quant_file("int8").parent)
    assert path == lay.quant_file("int8")
    for shard in lay.wan.glob("diffusion_pytorch_model*"):
        shard.unlink()  # the quantised file is the whole DiT
    image, audio = write_demo_inputs(tmp_path / "in", seconds=1.0)
    base = ["generate", "--weights", str(root), "--preset", "tiny", "--size", "tiny", "--image", str(image),
            "--audio", str(audio), "sampler.steps=1", "sampler.frame_num=17", "sampler.motion_frame=5", "--no-progress"]
    out = tmp_path / "q.mp4"
    assert main([*base, "--quant", "int8", "-o", str(out)]) == 0 and out.stat().st_size > 0
    assert main([*base, "--quant", "fp8", "-o", str(tmp_path / "f.mp4")]) == 1
    assert "infinitetalk_single_fp8.safetensors" in capsys.readouterr().err
    assert main([*base, "--quant", "int8", "--lora", str(root / "lightx2v_lora_rank2.safetensors"),
                 "-o", str(tmp_path / "l.mp4")]) == 1
    assert "a LoRA cannot be merged into the quantised DiT" in capsys.readouterr().err
    assert not (tmp_path / "f.mp4").exists() and not (tmp_path / "l.mp4").exists()


def test_make_weights_writes_what_quanto_writes(tmp_path):
    """benchmarks/make_weights.py --quant: quanto's own quantisation of a weight (same data and
    scales), and a folder with only the quantised DiT loads through --quant."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from make_weights import make_weights, quantize_rows

    w = torch.randn(48, 40, dtype=torch.bfloat16) * torch.linspace(0.1, 3, 48, dtype=torch.bfloat16)[:, None]
    for kind in KINDS:
        lin = torch.nn.Linear(40, 48, bias=False).to(torch.bfloat16)
        lin.weight.data.copy_(w)
        m = torch.nn.Sequential(lin)
        quanto.quantize(m, weights=KINDS[kind])
        quanto.freeze(m)
        sd = m.state_dict()
        data, scale = quantize_rows(w, kind)
        assert torch.equal(scale, sd["0.weight._scale"]) and torch.equal(data.float(), sd["0.weight._data"].float())
    make_weights(tmp_path, preset="tiny", device="cpu", quant=("int8", "fp8"), bf16_dit=False)
    from infinitetalk_dist.models.weights import WeightsLayout

    lay = WeightsLayout(tmp_path)
    assert not list(lay.wan.glob("diffusion_pytorch_model*"))
    for kind in KINDS:
        dit = load_quantized_dit(lay.wan, lay.quant_file(kind), dtype=torch.bfloat16)
        assert sum(isinstance(m, WeightQuantLinear) for m in dit.modules()) > 10
