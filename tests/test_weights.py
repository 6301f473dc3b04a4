"""Loading the official file layouts through the user entry points (``models.weights``, and
``parallel.load_dit`` in one process for the DiT), and bad checkpoints."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from infinitetalk_dist.errors import InfiniteTalkError
from infinitetalk_dist.models import weights as W
from infinitetalk_dist.models.checkpoint import CheckpointError
from infinitetalk_dist.models.presets import tiny_preset
from infinitetalk_dist.parallel import load_dit
from tests import tiny_weights as tw

PRESET = tiny_preset()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    sds = {
        "dit": tw.write_dit(root, PRESET.dit),
        "vae": tw.write_vae(root, PRESET.vae),
        "t5": tw.write_t5(root, PRESET.t5),
        "clip": tw.write_clip(root, PRESET.clip),
        "wav2vec2": tw.write_wav2vec2(root, PRESET.wav2vec2),
    }
    return root, sds


def _same(model_sd, ref_sd, dtype=None):
    assert set(model_sd) == set(ref_sd)
    for k, v in ref_sd.items():
        want = v.to(dtype) if dtype is not None and v.is_floating_point() else v
        assert model_sd[k].dtype == want.dtype, k
        assert torch.equal(model_sd[k], want), k


def test_layout_check(folder):
    root, _ = folder
    W.WeightsLayout(root).check()
    with pytest.raises(CheckpointError, match="multi") as e:
        W.WeightsLayout(root, variant="multi").check()
    assert isinstance(e.value, InfiniteTalkError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_dit_merges_shards_and_infinitetalk(folder, dtype):
    root, sds = folder
    lay = W.WeightsLayout(root)
    model = load_dit(lay.wan, lay.infinitetalk, dtype=dtype)
    _same(model.state_dict(), sds["dit"], dtype)
    assert not any(p.is_meta for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_load_encoders_and_vae(folder):
    root, sds = folder
    lay = W.WeightsLayout(root)
    _same(W.load_vae(lay.vae, config=PRESET.vae).state_dict(), sds["vae"])
    _same(W.load_t5(lay.t5, config=PRESET.t5, dtype=torch.float32).state_dict(), sds["t5"])
    _same(W.load_clip(lay.clip, config=PRESET.clip).state_dict(), sds["clip"])
    enc = W.load_wav2vec2(lay.wav2vec2)
    # hub weight_g/weight_v land in the parametrization; pre-training heads are dropped.
    _same(enc.model.state_dict(), sds["wav2vec2"])


@pytest.mark.parametrize("style", ["lightx2v", "diffusers"])
def test_lora_merge(folder, tmp_path, style):
    root, sds = folder
    lay = W.WeightsLayout(root)
    lora = tw.write_lora(tmp_path / "lora.safetensors", sds["dit"], style)
    strength = 0.7
    model = load_dit(lay.wan, lay.infinitetalk, dtype=torch.float32, loras=[(tmp_path / "lora.safetensors", strength)])
    got = model.state_dict()
    changed = 0
    for key, base in sds["dit"].items():
        target = key.rsplit(".", 1)[0]
        prefix = "diffusion_model." if style == "lightx2v" else ""
        down_key = f"{prefix}{target}.lora_down.weight" if style == "lightx2v" else f"{target}.lora_A.weight"
        want = base.clone()
        if key.endswith(".weight") and down_key in lora:
            up = lora[down_key.replace("lora_down", "lora_up").replace("lora_A", "lora_B")]
            scale = float(lora[f"{prefix}{target}.alpha"]) / up.shape[1] if style == "lightx2v" else 1.0
            want += strength * scale * (up @ lora[down_key])
        if key.endswith(".weight") and f"{prefix}{target}.diff" in lora:
            want += strength * lora[f"{prefix}{target}.diff"]
        if key.endswith(".bias") and f"{prefix}{target}.diff_b" in lora:
            want += strength * lora[f"{prefix}{target}.diff_b"]
        changed += not torch.equal(want, base)
        torch.testing.assert_close(got[key], want, rtol=1e-6, atol=1e-6, msg=key)
    assert changed > 0


# ----------------------------------------------------------------------------- bad input


def _shard(lay, i=0):
    return W.dit_shards(lay.wan)[i]


def _rewrite(path, fn):
    from safetensors.torch import load_file

    sd = load_file(str(path))
    save_file(fn(dict(sd)), str(path))


@pytest.fixture
def copy(folder, tmp_path):
    import shutil

    root, sds = folder
    dst = tmp_path / "w"
    shutil.copytree(root, dst)
    return W.WeightsLayout(dst), sds


def _first_key(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sorted(f.keys())[0]


def test_missing_key_names_files_and_key(copy):
    lay, _ = copy
    key = _first_key(_shard(lay))
    _rewrite(_shard(lay), lambda sd: {k: v for k, v in sd.items() if k != key})
    with pytest.raises(CheckpointError, match=r"missing from .*" + key.replace(".", r"\.")):
        load_dit(lay.wan, lay.infinitetalk)


def test_unexpected_key(copy):
    lay, _ = copy
    _rewrite(lay.infinitetalk, lambda sd: {**sd, "blocks.0.not_a_param.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"infinitetalk\.safetensors: 1 unexpected key.*not_a_param"):
        load_dit(lay.wan, lay.infinitetalk)


def test_wrong_shape(copy):
    lay, _ = copy
    key = _first_key(_shard(lay, 1))
    _rewrite(_shard(lay, 1), lambda sd: {**sd, key: torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=r"wrong shape.*" + key.replace(".", r"\.")):
        load_dit(lay.wan, lay.infinitetalk)


def test_truncated_safetensors(copy):
    lay, _ = copy
    data = _shard(lay).read_bytes()
    _shard(lay).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"00001-of-00007\.safetensors.*truncated or corrupt"):
        load_dit(lay.wan, lay.infinitetalk)


def test_not_safetensors(copy):
    lay, _ = copy
    lay.infinitetalk.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="infinitetalk.safetensors: not a readable safetensors"):
        load_dit(lay.wan, lay.infinitetalk)


def test_bad_config_json(copy):
    lay, _ = copy
    (lay.wan / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        load_dit(lay.wan, lay.infinitetalk)
    (lay.wan / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        load_dit(lay.wan, lay.infinitetalk)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_untrusted_pth_refused(copy, capsys):
    lay, _ = copy
    with open(lay.vae, "wb") as f:
        pickle.dump({"encoder.conv1.weight": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused|not a readable PyTorch"):
        W.load_vae(lay.vae, config=PRESET.vae)
    assert "pwned" not in capsys.readouterr().out


def test_truncated_pth(copy):
    lay, _ = copy
    data = lay.t5.read_bytes()
    lay.t5.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"models_t5_umt5-xxl-enc-bf16\.pth: not a readable PyTorch"):
        W.load_t5(lay.t5, config=PRESET.t5)


def test_lora_unknown_targets_listed(folder, tmp_path):
    root, _ = folder
    lay = W.WeightsLayout(root)
    bad = {"diffusion_model.blocks.99.self_attn.q.lora_down.weight": torch.zeros(2, 4),
           "diffusion_model.blocks.99.self_attn.q.lora_up.weight": torch.zeros(4, 2)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"not in the DiT: blocks\.99\.self_attn\.q"):
        load_dit(lay.wan, lay.infinitetalk, loras=[(tmp_path / "bad.safetensors", 1.0)])


def test_wav2vec2_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        W.load_wav2vec2(tmp_path)


def test_a_shard_index_pointing_outside_its_folder_is_refused(tmp_path):
    import json

    from infinitetalk_dist.models.checkpoint import CheckpointError
    from infinitetalk_dist.models.weights import SHARD_INDEX, dit_shards

    wan = tmp_path / "Wan2.1-I2V-14B-480P"
    wan.mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    for name in ("../secret.safetensors", "/etc/passwd"):
        (wan / SHARD_INDEX).write_text(json.dumps({"weight_map": {"a.weight": name}}))
        with pytest.raises(CheckpointError, match="outside"):
            dit_shards(wan)
    (wan / SHARD_INDEX).write_text(json.dumps({"weight_map": {"a.weight": "diffusion_pytorch_model-00001-of-00001.safetensors"}}))
    assert dit_shards(wan) == [wan / "diffusion_pytorch_model-00001-of-00001.safetensors"]
