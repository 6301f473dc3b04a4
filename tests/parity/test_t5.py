"""umT5 encoder against the reference golden cases."""

from __future__ import annotations

import re

import torch

from infinitetalk_dist.models.t5 import T5Config, UMT5Encoder
from tests.parity.golden import assert_close, case, config, each_case, record, rel_l2, tensors, weights

CONTEXT = re.compile(r"context_(\d+)")


def _model(c: dict, dtype: torch.dtype = torch.float32) -> UMT5Encoder:
    model = UMT5Encoder(T5Config.from_dict(config(c))).eval()
    model.load_state_dict(weights(c), strict=True)
    return model.to(dtype)


@each_case("t5")
@torch.no_grad()
def test_t5_encoder_parity(case_name):
    c = case(case_name)
    model = _model(c)
    inp = tensors(c, "inputs.safetensors")
    gold = tensors(c, "outputs.safetensors")

    assert_close(f"{case_name}/full_untrimmed", model(inp["ids"], inp["mask"]), gold["full_untrimmed"])
    contexts = model.encode(inp["ids"], inp["mask"])
    names = {int(m.group(1)): k for k in gold if (m := CONTEXT.fullmatch(k))}
    assert sorted(names) == list(range(len(contexts))), f"golden has {sorted(names)}, we made {len(contexts)}"
    for i, name in sorted(names.items()):
        assert_close(f"{case_name}/{name}", contexts[i], gold[name])


@each_case("t5")
@torch.no_grad()
def test_t5_encoder_bf16(case_name):
    c = case(case_name)
    model = _model(c, torch.bfloat16)
    inp = tensors(c, "inputs.safetensors")
    gold = tensors(c, "outputs.safetensors")
    contexts = model.encode(inp["ids"], inp["mask"])
    assert contexts[0].dtype == torch.bfloat16
    ours = torch.cat([u.float() for u in contexts])
    ref = torch.cat([gold[f"context_{i}"] for i in range(len(contexts))])
    err = rel_l2(ours, ref)
    record(f"{case_name}/contexts bf16: rel L2 = {err:.2e} (bound 3e-2)")
    assert err < 3e-2
