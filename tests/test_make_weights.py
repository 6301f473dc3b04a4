"""benchmarks/make_weights.py writes the official layout: every file loads through the user's
loaders (here at the tiny preset's shapes; the GPU run writes and uses the 14B folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from make_weights import make_weights  # noqa: E402

from infinitetalk_dist.models import weights as W  # noqa: E402
from infinitetalk_dist.models.dit import InfiniteTalkDiT  # noqa: E402
from infinitetalk_dist.models.presets import tiny_preset  # noqa: E402
from infinitetalk_dist.models.random_init import randomize_, seeded  # noqa: E402
from infinitetalk_dist.parallel import load_dit  # noqa: E402
from infinitetalk_dist.pipeline.text import HFTokenizer  # noqa: E402


def test_tiny_folder_loads_through_the_user_loaders(tmp_path):
    times = make_weights(tmp_path, preset="tiny", device="cpu", lora_rank=2)
    assert set(times) == {"dit", "t5", "clip", "vae", "wav2vec2", "tokenizer", "lora"}
    p, lay = tiny_preset(), W.WeightsLayout(tmp_path)
    lay.check()
    shards = W.dit_shards(lay.wan)
    assert shards and all(s.name.endswith("-of-00007.safetensors") for s in shards)
    assert W.WeightsLayout(tmp_path, "multi").infinitetalk.stat().st_ino == lay.infinitetalk.stat().st_ino

    dit = load_dit(lay.wan, lay.infinitetalk, dtype=torch.float32)
    with torch.device("meta"):
        want = randomize_(InfiniteTalkDiT(p.dit), seeded(0)).state_dict()  # the same generator, first
    got = dit.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16).float()) for k in want)  # written in bf16
    lora = load_dit(lay.wan, lay.infinitetalk, dtype=torch.float32,
                    loras=[(tmp_path / "lightx2v_lora_rank2.safetensors", 1.0)])
    assert not torch.equal(lora.blocks[0].ffn[0].weight, dit.blocks[0].ffn[0].weight)

    vae = W.load_vae(lay.vae, config=p.vae)
    assert vae.encode(torch.zeros(1, 3, 1, 32, 32)).shape[1] == p.vae.z_dim
    t5 = W.load_t5(lay.t5, config=p.t5, dtype=torch.float32)
    ids, mask = HFTokenizer(lay.t5_tokenizer, p.t5.text_len)(["A person is talking."])
    assert ids.shape == (1, p.t5.text_len) and int(mask.sum()) > 1 and 1 in ids[0].tolist()  # </s> appended
    assert t5.encode(ids, mask)[0].shape[-1] == p.t5.dim
    clip = W.load_clip(lay.clip, config=p.clip)
    assert clip(torch.zeros(1, 3, 1, 224, 224)).shape[-1] == p.clip.vision_dim
    w2v = W.load_wav2vec2(lay.wav2vec2)
    assert w2v.num_layers == p.wav2vec2["num_hidden_layers"]
