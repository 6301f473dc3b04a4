"""One window: the InfiniteTalk chunk loop (reference ``generate_infinitetalk``), in our words.

A window is rendered as a chain of chunks of ``frame_num`` frames. The first chunk starts
from the reference frame; every later chunk overlaps the previous one by ``motion_frame``
frames, whose VAE latents are held clean in its first latent frames ("motion frames"), and
is re-anchored on the reference frame at its start (the input image for I2V, the source
video's frame for V2V). Each chunk is a flow-matching sampling run with classifier-free
guidance over text and audio.

The models come in through :class:`Components` (plain callables), so the same loop runs the
real networks (:func:`components_from_models`) or record/replay mocks in the parity tests.
All randomness comes from one explicit ``torch.Generator``; its draws happen in the
reference's order, so a seed gives the reference's noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from infinitetalk_dist import timeline

from .color import match_and_blend_colors
from .conditioning import audio_windows
from .sampler import GuidanceState, combine_guidance, euler_step, guidance_branches, timesteps
from .vae_tiles import vae_calls

__all__ = [
    "Components",
    "StepProgress",
    "WindowInputs",
    "WindowSettings",
    "chunk_starts",
    "components_from_models",
    "generate_window",
]


@dataclass
class Components:
    """The networks as callables, all with a batch dimension.

    dit(x [B,16,T,h,w], t [1], context [B,L,C], clip_fea [B,n,D], y [B,20,T,h,w],
        audio [B,speakers,F,window,layers,hidden], ref_target_masks [3,h,w]) -> velocity [B,16,T,h,w]
    vae_encode(video [1,3,F,H,W] in [-1,1]) -> latent [1,16,T,h,w]
    vae_decode(latent [1,16,T,h,w]) -> video [1,3,F,H,W] in [-1,1]
    clip(image [1,3,1,H,W] in [-1,1]) -> features [1,n,D]
    """

    dit: Callable[..., torch.Tensor]
    vae_encode: Callable[[torch.Tensor], torch.Tensor]
    vae_decode: Callable[[torch.Tensor], torch.Tensor]
    clip: Callable[[torch.Tensor], torch.Tensor]
    # Optional: all guidance branches of a step at once (a list of dit keyword dicts in the
    # reference's order -> their velocities), e.g. one batched forward or CFG-parallel ranks.
    # Without it the loop calls ``dit`` once per branch.
    predict: Callable[[list[dict]], list[torch.Tensor]] | None = None


def components_from_models(dit, vae, clip, predict=None, vae_tiling: str = "off") -> Components:
    """:class:`Components` over our real ``InfiniteTalkDiT``, ``WanVAE`` and ``CLIPVisionEncoder``
    (``predict``: an optional all-branches-at-once DiT call, see :class:`Components`;
    ``vae_tiling``: :func:`~.vae_tiles.vae_calls`)."""


    def run_dit(x, t, context, clip_fea, y, audio, ref_target_masks):
        return dit(x, t, context, clip_fea, y, audio, ref_target_masks=ref_target_masks)

    encode, decode = vae_calls(vae, vae_tiling)
    return Components(dit=run_dit, vae_encode=encode, vae_decode=decode, clip=clip, predict=predict)


@dataclass
class WindowInputs:
    """What one window is conditioned on.

    reference_frame: frame index -> reference image ``[3, H, W]`` in [-1, 1], already at the
        output size (I2V: always the input image; V2V: the source video's frame).
    audio: per speaker (1 or 2) the whole window's audio embedding ``[N, layers, hidden]``,
        one row per video frame.
    context / context_null: T5 embeddings ``[L, text_dim]`` of the prompt / negative prompt.
    ref_target_masks: ``[3, h, w]`` speaker masks on the latent grid (conditioning.speaker_masks).
    """

    reference_frame: Callable[[int], torch.Tensor]
    audio: Sequence[torch.Tensor]
    context: torch.Tensor
    context_null: torch.Tensor
    ref_target_masks: torch.Tensor


@dataclass
class WindowSettings:
    frame_num: int = 81  # frames per chunk, 4n+1
    motion_frame: int = 9  # frames shared with the previous chunk
    steps: int = 40
    shift: float = 7.0
    text_scale: float = 5.0
    audio_scale: float = 4.0
    use_apg: bool = False
    apg_momentum: float = -0.75
    apg_norm_threshold: float = 55.0
    max_frames_num: int = 1000  # <= frame_num: one chunk ("clip mode"); else streaming
    color_correction_strength: float = 0.0
    seed: int = 0  # used when no generator is passed
    num_timesteps: int = 1000
    audio_radius: int = 2  # each frame's audio window: the frame and 2 neighbours either side
    # An unchanged reference frame (every chunk of an I2V window) reuses the previous chunk's
    # CLIP features and 81-frame conditioning encode (exact: they depend on the frame alone).
    # False: encode every chunk, as the reference code does (the replay parity tests).
    reuse_reference_encode: bool = True


@dataclass
class StepProgress:
    chunk: int  # 0-based
    chunks: int
    step: int  # steps done in this chunk, 1-based
    steps: int


def chunk_starts(first_speaker_len: int, s: WindowSettings) -> list[int]:
    """First video frame of each chunk, as the reference's loop decides them
    (:func:`infinitetalk_dist.timeline.chunk_starts` over ``min(max_frames_num, audio length)``).

    Only the FIRST speaker's audio length counts (reference quirk: a longer second speaker is
    cut, a shorter one is clamped). With ``max_frames_num <= frame_num`` there is a single chunk.
    """
    if s.max_frames_num <= s.frame_num:
        return [0]
    return timeline.chunk_starts(min(s.max_frames_num, first_speaker_len), s.frame_num, s.motion_frame)


def _pad_audio_tail(audio: list[torch.Tensor], end: int) -> bool:
    """Extend each speaker's audio that ends before frame ``end`` by its mirrored tail.

    The reference appends the last ``end - len + 3`` rows in reverse order. Returns whether
    any speaker was padded (which makes the final video trimmed to the audio length).
    """
    padded = False
    for i, emb in enumerate(audio):
        if end >= emb.shape[0]:
            miss = end - emb.shape[0] + 3
            audio[i] = torch.cat([emb, emb[-miss:].flip(0)])
            padded = True
    return padded


def _check(inputs: WindowInputs, s: WindowSettings) -> None:
    if s.frame_num % 4 != 1:
        raise ValueError(f"frame_num must be 4n+1, got {s.frame_num}")
    if not 0 < s.motion_frame < s.frame_num:
        raise ValueError(f"motion_frame must be in (0, frame_num), got {s.motion_frame}")
    if len(inputs.audio) not in (1, 2):
        raise ValueError(f"1 or 2 speakers are supported, got {len(inputs.audio)}")
    streaming = s.max_frames_num > s.frame_num
    for i, emb in enumerate(inputs.audio):
        # Streaming needs audio past the first chunk (the reference asserts it); a single chunk
        # ("clip mode") takes any length, its audio windows clamped to the last frame.
        if emb.shape[0] < 1 or (streaming and emb.shape[0] <= s.frame_num):
            raise ValueError(f"speaker {i + 1}: audio has {emb.shape[0]} frames; streaming needs more than "
                             f"{s.frame_num} (use max_frames_num <= frame_num for a single chunk)")


@dataclass
class _Chunk:
    """Everything one chunk's DiT calls are conditioned on."""

    y: torch.Tensor  # [1, 20, T, h, w]: known-frame mask + VAE latent of [reference frame, zero frames]
    clip_fea: torch.Tensor  # CLIP features of the reference frame
    audio: torch.Tensor  # [1, speakers, frame_num, window, layers, hidden]
    motion_latent: torch.Tensor  # [1, 16, n, h, w]: held clean in the first n latent frames


def _prepare_chunk(components: Components, image: torch.Tensor, motion_pixels: torch.Tensor | None,
                   audio: Sequence[torch.Tensor], start: int, s: WindowSettings, device: torch.device,
                   reuse: dict) -> _Chunk:
    """Conditioning of the chunk starting at frame ``start``. The two VAE encodes run in the
    reference's order: [reference frame, zero frames] first, then the motion frames.

    ``reuse`` carries the previous chunk's reference frame with its CLIP features and
    conditioning latent: both are functions of that frame alone, so an identical frame (every
    chunk of an I2V window) reuses them instead of encoding 81 frames again — exact."""
    chunk_audio = audio_windows(audio, start, s.frame_num, s.audio_radius)[None].to(device)
    if s.reuse_reference_encode and "image" in reuse and torch.equal(reuse["image"], image):
        clip_fea, y = reuse["clip_fea"], reuse["y"]
    else:
        clip_fea = components.clip(image)
        # The reference frame followed by zero (mid-grey) frames; only latent frame 0 is marked known.
        pixels = torch.cat([image, image.new_zeros(1, 3, s.frame_num - 1, *image.shape[-2:])], dim=2)
        latent = components.vae_encode(pixels).float()
        known = torch.zeros(1, 4, *latent.shape[2:], dtype=latent.dtype, device=latent.device)
        known[:, :, 0] = 1
        y = torch.cat([known, latent], dim=1)
        reuse.update(image=image, clip_fea=clip_fea, y=y)

    # First chunk: the reference frame itself; later: the previous chunk's last frames.
    motion_latent = components.vae_encode(image if motion_pixels is None else motion_pixels).float()
    return _Chunk(y, clip_fea, chunk_audio, motion_latent)


@torch.no_grad()
def generate_window(
    components: Components,
    inputs: WindowInputs,
    settings: WindowSettings,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[StepProgress], None] | None = None,
) -> torch.Tensor:
    """Render one window; returns the video ``[3, frames, H, W]`` float32 in [-1, 1] on the CPU.

    ``generator`` (on ``device``) supplies all noise; without one, a generator seeded with
    ``settings.seed`` is made. ``progress`` is called after every sampling step.
    """
    s = settings
    _check(inputs, s)
    device = torch.device(device)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(s.seed)

    audio = list(inputs.audio)  # our copy: the last chunk may pad it
    streaming = s.max_frames_num > s.frame_num
    starts = chunk_starts(audio[0].shape[0], s)
    sampler = _ChunkSampler(components, inputs, s, generator, device)

    audio_padded = False
    color_reference = None
    motion_pixels = None  # the previous chunk's last motion_frame decoded frames
    kept: list[torch.Tensor] = []
    reuse: dict = {}  # the last reference frame's CLIP features and conditioning latent
    for index, start in enumerate(starts):
        first, last = index == 0, index == len(starts) - 1
        if streaming and last:
            # The last chunk runs past the end of the audio: mirror-pad its tail. (Streaming
            # always has two chunks or more; one-chunk clip mode never reads past the audio.)
            audio_padded = _pad_audio_tail(audio, start + s.frame_num)

        image = inputs.reference_frame(start).to(device=device, dtype=torch.float32)[None, :, None]
        if first and s.color_correction_strength > 0:
            color_reference = image.clone()  # colours are matched to the first reference frame

        chunk = _prepare_chunk(components, image, motion_pixels, audio, start, s, device, reuse)
        x0 = sampler.sample(chunk, first, _step_reporter(progress, index, len(starts), s.steps))

        video = components.vae_decode(x0).float()
        if color_reference is not None:
            video = match_and_blend_colors(video, color_reference, s.color_correction_strength)
        # Later chunks re-generate their motion frames: keep only the new ones.
        kept.append((video if first else video[:, :, s.motion_frame :]).cpu())
        motion_pixels = video[:, :, -s.motion_frame :]

    out = torch.cat(kept, dim=2)[:, :, : int(s.max_frames_num)]
    if streaming and audio_padded:
        # Reference quirk: trimmed to the LAST speaker's (un-padded) audio length.
        out = out[:, :, : inputs.audio[-1].shape[0]]
    return out[0].float()


def _step_reporter(progress, chunk: int, chunks: int, steps: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda step: progress(StepProgress(chunk, chunks, step, steps))


class _ChunkSampler:
    """Flow-matching sampling of one chunk with text/audio guidance."""

    def __init__(self, components: Components, inputs: WindowInputs, s: WindowSettings,
                 generator: torch.Generator, device: torch.device):
        self.dit, self.predict = components.dit, components.predict
        self.s = s
        self.generator = generator
        self.device = device
        self.context = inputs.context.to(device)[None]
        self.context_null = inputs.context_null.to(device)[None]
        self.masks = inputs.ref_target_masks.to(device)
        self.schedule = timesteps(s.steps, s.shift, s.num_timesteps).to(device)
        self.branches = guidance_branches(s.text_scale)

    def _branch_inputs(self, chunk: _Chunk) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        # "No audio" is ONE silent speaker, also in two-speaker mode (as the reference).
        silent = torch.zeros_like(chunk.audio[:, -1:])
        return {
            "cond": (self.context, chunk.audio),
            "drop_text": (self.context_null, chunk.audio),
            "uncond": (self.context_null, silent),
            "drop_audio": (self.context, silent),
        }

    def _predict(self, latent, t, chunk: _Chunk, args) -> dict[str, torch.Tensor]:
        """Every guidance branch's velocity, in the reference's branch order."""
        calls = [dict(x=latent, t=t, context=args[b][0], clip_fea=chunk.clip_fea, y=chunk.y, audio=args[b][1],
                      ref_target_masks=self.masks) for b in self.branches]
        outs = self.predict(calls) if self.predict is not None else [self.dit(**c) for c in calls]
        return dict(zip(self.branches, outs))

    def _burn_noise(self, like: torch.Tensor) -> None:
        # The reference injects noised motion latents before the first step and after each
        # step of every chunk but the first, then immediately overwrites them with the clean
        # ones: no effect on the result, but the draw advances the RNG that later chunks'
        # noise comes from. Drawn (same shape, same generator) and dropped.
        torch.randn(like.shape[1:], generator=self.generator, device=self.device, dtype=torch.float32)

    def sample(self, chunk: _Chunk, first: bool, report: Callable[[int], None] | None) -> torch.Tensor:
        """Sample the chunk's latent [1, 16, T, h, w] from fresh noise; motion latents stay clean."""
        s, ts, motion = self.s, self.schedule, chunk.motion_latent
        n_motion = motion.shape[2]
        latent = torch.randn(1, chunk.y.shape[1] - 4, *chunk.y.shape[2:], generator=self.generator,
                             device=self.device, dtype=torch.float32)
        if not first:
            self._burn_noise(motion)
        args = self._branch_inputs(chunk)
        apg = GuidanceState(s.apg_momentum, s.apg_norm_threshold) if s.use_apg else None  # fresh per chunk

        for i in range(s.steps):
            t, t_next = ts[i : i + 1], ts[i + 1 : i + 2]
            latent[:, :, :n_motion] = motion
            preds = self._predict(latent, t, chunk, args)
            velocity = combine_guidance(preds, s.text_scale, s.audio_scale, apg)
            latent = euler_step(latent, velocity, t, t_next, s.num_timesteps)
            if not first:
                self._burn_noise(motion)
            latent[:, :, :n_motion] = motion
            if report is not None:
                report(i + 1)
        return latent
