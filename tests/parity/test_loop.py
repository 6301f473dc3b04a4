"""Replay of the reference chunk loop (``generate_infinitetalk``) through pipeline/loop.py.

The golden ``sampler`` case recorded, for several loop scenarios, every DiT call of the
unchanged reference run with mock networks: what the DiT received and what the mock
returned. Here the same mock outputs are replayed in the same order into our loop, and what
our loop hands to the networks is compared with what the reference handed to them. The
scenarios, their settings and all shapes come from the case (``case.json`` "loops").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import torch

from infinitetalk_dist.pipeline.loop import Components, WindowInputs, WindowSettings, chunk_starts, generate_window
from infinitetalk_dist.pipeline.sampler import BRANCHES
from tests.parity.golden import GOLDEN, assert_close, case, case_kind, record, tensors


def _scenario_names() -> list[tuple[str, str]]:
    path = GOLDEN / "manifest.json"
    if not path.is_file():
        return [("<no golden data>", "")]
    out = []
    for c in json.loads(path.read_text())["cases"]:
        if case_kind(c) == "sampler":
            cj = json.loads((GOLDEN / c["case"] / "case.json").read_text())
            out += [(c["case"], name) for name in cj.get("loops", {})]
    return out or [("<no sampler case>", "")]


each_scenario = pytest.mark.parametrize("case_name,scenario", _scenario_names())


def _settings(meta: dict) -> WindowSettings:
    defaults = WindowSettings()
    return WindowSettings(
        frame_num=meta["frame_num"],
        motion_frame=meta["motion_frame"],
        steps=meta["sampling_steps"],
        shift=meta["shift"],
        text_scale=meta["text_guide_scale"],
        audio_scale=meta["audio_guide_scale"],
        use_apg=meta["use_apg"],
        apg_momentum=meta.get("apg_momentum", defaults.apg_momentum),
        apg_norm_threshold=meta.get("apg_norm_threshold", defaults.apg_norm_threshold),
        max_frames_num=meta["max_frames_num"],
        seed=meta["seed"],
        reuse_reference_encode=False,  # replay the reference's call sequence (one encode per chunk)
    )


# Text embeddings: the prompt is all ones, the negative prompt all zeros, so the mock DiT can
# tell which one it got.
TEXT_LEN, TEXT_DIM = 3, 4


@dataclass
class Replay:
    """Mock networks: replay the golden outputs in call order, record the inputs."""

    call_out: torch.Tensor
    encode_out: list[torch.Tensor]
    ref_target_masks: torch.Tensor
    image_hw: tuple[int, int]
    latents: list = field(default_factory=list)
    ts: list = field(default_factory=list)
    branches: list = field(default_factory=list)
    audio_rows: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    x0s: list = field(default_factory=list)
    encode_inputs: list = field(default_factory=list)
    frames_requested: list = field(default_factory=list)

    def dit(self, x, t, context, clip_fea, y, audio, ref_target_masks):
        assert x.ndim == 5 and x.shape[0] == 1 and t.shape == (1,)
        assert torch.equal(ref_target_masks, self.ref_target_masks)
        i = len(self.latents)
        self.latents.append(x[0].clone())
        self.ts.append(t[0].item())
        with_text = bool(context.bool().all())
        assert with_text or not context.bool().any()
        # Audio features are (row index + 1) everywhere: recover the rows; 0 (silence) -> -1.
        rows = audio[0, :, :, :, 0, 0].round().long() - 1
        assert torch.equal(audio, audio[..., :1, :1].expand_as(audio))
        silent = bool((rows == -1).all())
        self.branches.append(BRANCHES[{(True, False): "cond", (False, False): "drop_text",
                                       (False, True): "uncond", (True, True): "drop_audio"}[(with_text, silent)]])
        self.audio_rows.append(rows)
        self.ys.append(y[0].clone())
        return self.call_out[i][None].clone()

    def vae_encode(self, video):
        i = len(self.encode_inputs)
        self.encode_inputs.append(video.clone())
        out = self.encode_out[i]
        assert (video.shape[2] - 1) // 4 + 1 == out.shape[1], "encode input frames vs recorded latent"
        return out[None].clone()

    def vae_decode(self, latent):
        call = len(self.x0s)
        self.x0s.append(latent[0].clone())
        frames = (latent.shape[2] - 1) * 4 + 1
        code = call * 1000 + torch.arange(frames, dtype=torch.float32)
        h, w = self.image_hw
        return code.view(1, 1, frames, 1, 1).expand(1, 3, frames, h, w).clone()

    def clip(self, image):
        assert image.shape[:3] == (1, 3, 1)
        return torch.zeros(1, 5, 6)

    def reference_frame(self, index):
        self.frames_requested.append(index)
        return torch.zeros(3, *self.image_hw)


def _replay(case_name: str, scenario: str, progress=None):
    c = case(case_name)
    t = {k.split("/", 1)[1]: v for k, v in tensors(c, "sampler.safetensors").items() if k.startswith(scenario + "/")}
    meta = c["loops"][scenario]["meta"]

    sizes = [torch.Size(s).numel() for s in meta["vae_encode_shapes"]]
    pieces = t["vae_encode_out"].split(sizes)
    mock = Replay(t["call_out"], [p.view(s) for p, s in zip(pieces, meta["vae_encode_shapes"])],
                  t["ref_target_masks"], tuple(meta["image_hw"]))

    # Full audio embeddings = arange(N) + 1 (broadcast over layers x hidden), as the golden run.
    audio = [(torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1).expand(n, 2, 3).clone()
             for n in t["full_audio_len"].tolist()]
    inputs = WindowInputs(
        reference_frame=mock.reference_frame,
        audio=audio,
        context=torch.ones(TEXT_LEN, TEXT_DIM),
        context_null=torch.zeros(TEXT_LEN, TEXT_DIM),
        ref_target_masks=t["ref_target_masks"],
    )
    components = Components(dit=mock.dit, vae_encode=mock.vae_encode, vae_decode=mock.vae_decode, clip=mock.clip)
    settings = _settings(meta)
    video = generate_window(components, inputs, settings, generator=torch.Generator().manual_seed(meta["seed"]),
                            progress=progress)
    return meta, t, mock, video, settings


def _pad_rows(rows: torch.Tensor, speakers: int) -> torch.Tensor:
    # -2 marks "no such speaker in this call" (the silent branches pass one speaker).
    pad = torch.full((speakers - rows.shape[0], *rows.shape[1:]), -2, dtype=rows.dtype)
    return torch.cat([rows, pad])


@each_scenario
@torch.no_grad()
def test_loop_replay(case_name, scenario):
    if case_name.startswith("<"):
        case(case_name)  # skips (no data) or fails (no sampler case)
    meta, t, mock, video, settings = _replay(case_name, scenario)
    label = f"{case_name} {scenario}"

    assert len(mock.latents) == t["call_out"].shape[0], "number of DiT calls"
    assert len(mock.encode_inputs) == len(meta["vae_encode_shapes"]), "number of VAE encodes"
    assert torch.equal(torch.tensor(mock.branches), t["call_branch"]), "branch order"
    assert torch.equal(torch.tensor(mock.ts, dtype=torch.float32), t["call_t"]), "timesteps"
    record(f"{label} call_branch, call_t: exact ({len(mock.latents)} calls)")

    rows = torch.stack([_pad_rows(r, t["call_audio_index"].shape[1]) for r in mock.audio_rows])
    assert torch.equal(rows, t["call_audio_index"]), "audio rows"
    record(f"{label} call_audio_index: exact")

    # The noise (initial draws, plus the discarded motion-latent draws) decides call_latent.
    assert_close(f"{label} call_latent", torch.stack(mock.latents), t["call_latent"], tol=1e-5)
    assert_close(f"{label} chunk_x0", torch.stack(mock.x0s), t["chunk_x0"], tol=1e-5)

    # y is per chunk: the calls of chunk k all got chunk_y[k].
    calls_per_chunk = len(mock.ys) // len(mock.x0s)
    for k, y in enumerate(t["chunk_y"]):
        for y_call in mock.ys[k * calls_per_chunk : (k + 1) * calls_per_chunk]:
            assert torch.equal(y_call, y), f"chunk {k}: y"
    record(f"{label} chunk_y: exact")

    # One reference frame per chunk. The reference also reads the next chunk's frame after
    # the last chunk of clip mode without using it; we do not.
    requested = t["frames_requested"].tolist()
    assert mock.frames_requested == requested[: len(mock.x0s)]
    assert len(requested) - len(mock.x0s) in (0, 1)
    assert mock.frames_requested == chunk_starts(meta["audio_len"][0], settings)
    assert mock.frames_requested == meta["chunk_audio_start"]

    # Motion frames: chunk k > 0 encodes the last motion_frame decoded frames of chunk k-1.
    motion_inputs = mock.encode_inputs[3::2]
    for k, pixels in enumerate(motion_inputs, start=1):
        expected = (k - 1) * 1000 + torch.arange(settings.frame_num - settings.motion_frame, settings.frame_num)
        assert torch.equal(pixels[0, 0, :, 0, 0], expected.float())

    assert video.dtype == torch.float32 and video.ndim == 4
    assert video.shape[1] == meta["video_frames"]
    assert torch.equal(video[0, :, 0, 0], t["final_video_code"]), "final video frames"
    record(f"{label} final_video_code: exact ({video.shape[1]} frames)")


@each_scenario
@torch.no_grad()
def test_loop_progress(case_name, scenario):
    if case_name.startswith("<"):
        case(case_name)
    events = []
    meta, t, mock, _, settings = _replay(case_name, scenario, progress=events.append)
    chunks = len(mock.x0s)
    assert [(e.chunk, e.step) for e in events] == [(k, s + 1) for k in range(chunks) for s in range(settings.steps)]
    assert all(e.chunks == chunks and e.steps == settings.steps for e in events)


@torch.no_grad()
def test_loop_with_tiny_models_and_color_correction():
    """The real (tiny, random) networks through components_from_models, two speakers,
    colour correction on: shapes, determinism, and that the motion frames of the next chunk
    are the colour-corrected frames of the previous one (as in the reference)."""
    from infinitetalk_dist.models.clip import CLIPVisionEncoder
    from infinitetalk_dist.models.dit import InfiniteTalkDiT
    from infinitetalk_dist.models.presets import tiny_preset
    from infinitetalk_dist.models.random_init import randomize_, seeded
    from infinitetalk_dist.models.vae import WanVAE
    from infinitetalk_dist.pipeline.color import match_and_blend_colors
    from infinitetalk_dist.pipeline.conditioning import speaker_masks
    from infinitetalk_dist.pipeline.loop import components_from_models

    # Built directly (models.build would import the wav2vec2 stack, seconds of import time).
    preset = tiny_preset()
    with torch.device("meta"):
        dit, vae, clip = InfiniteTalkDiT(preset.dit), WanVAE(preset.vae), CLIPVisionEncoder(preset.clip)
    dit, vae, clip = (randomize_(m, seeded(k)).eval() for k, m in enumerate((dit, vae, clip)))
    cfg = preset.dit
    h = w = 16
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1
    g = torch.Generator().manual_seed(2)
    audio = [torch.randn(n, cfg.audio_blocks, cfg.audio_channels, generator=g) for n in (18, 16)]
    inputs = WindowInputs(
        reference_frame=lambda index: image,
        audio=audio,
        context=torch.randn(5, cfg.text_dim, generator=g),
        context_null=torch.randn(2, cfg.text_dim, generator=g),
        ref_target_masks=speaker_masks((h, w), (h, w), (h // 8, w // 8), 2, bboxes=[[0, 0, 16, 8], [0, 8, 16, 16]]),
    )
    settings = WindowSettings(frame_num=9, motion_frame=5, steps=1, color_correction_strength=0.5, seed=3,
                              reuse_reference_encode=False)

    real = components_from_models(dit, vae, clip)
    decoded, encoded = [], []

    def decode(z):
        decoded.append(real.vae_decode(z))
        return decoded[-1]

    def encode(v):
        encoded.append(v)
        return real.vae_encode(v)

    spy = Components(dit=real.dit, vae_encode=encode, vae_decode=decode, clip=real.clip)
    video = generate_window(spy, inputs, settings)
    starts = chunk_starts(18, settings)
    # Speaker 1 decides the chunks; the video is trimmed to speaker 2's length (reference quirk).
    assert len(starts) > 2 and video.shape == (3, min(9 + 4 * (len(starts) - 1), 16), h, w)
    assert video.abs().max() <= 1

    ref = image[None, :, None]
    corrected = [match_and_blend_colors(d, ref, 0.5) for d in decoded]
    assert torch.equal(video[:, :9], corrected[0][0])
    for k in range(1, len(starts)):
        assert torch.equal(encoded[2 * k + 1], corrected[k - 1][:, :, -settings.motion_frame :])

    # Reusing the unchanged reference frame's encode across chunks is exact, and saves the
    # [frame, zeros] encode (and CLIP) on every chunk after the first.
    encoded.clear()
    reused = generate_window(spy, inputs, WindowSettings(**{**settings.__dict__, "reuse_reference_encode": True}))
    assert torch.equal(reused, video)
    assert [v.shape[2] for v in encoded].count(settings.frame_num) == 1 and len(encoded) == len(starts) + 1

    # Determinism (one chunk is enough): same seed, same frames; another seed, other frames.
    clip_mode = WindowSettings(**{**settings.__dict__, "max_frames_num": settings.frame_num})
    first = generate_window(real, inputs, clip_mode)
    assert torch.equal(first, video[:, : settings.frame_num])  # = the streaming run's first chunk
    assert torch.equal(first, generate_window(real, inputs, clip_mode, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, generate_window(real, inputs, WindowSettings(**{**clip_mode.__dict__, "seed": 4})))
