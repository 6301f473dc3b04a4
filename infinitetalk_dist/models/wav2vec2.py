"""wav2vec2 audio encoder (chinese-wav2vec2-base) producing InfiniteTalk's per-frame audio features.

Built on transformers' ``Wav2Vec2Model`` (the official checkpoint is a transformers folder). The
reference subclass changes one thing: the 50 Hz conv features are linearly resampled to the video
frame count *before* ``feature_projection``, and the embedding is every transformer layer's output
stacked. We reproduce that by calling the model's parts ourselves and collecting layer outputs with
forward hooks, which behaves the same on transformers 4.57 and 5.x (5.x no longer returns
``hidden_states`` from ``model.encoder`` itself, only from the top-level model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2Model

from infinitetalk_dist.timeline import FPS, SAMPLE_RATE, num_video_frames

__all__ = ["AudioEncoder", "embed_waveform", "normalize_waveform"]


def normalize_waveform(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    """Wav2Vec2FeatureExtractor's ``do_normalize``: zero mean, unit variance (eps 1e-7), float32.

    The golden (numpy 1.x) added the eps to the float32 variance in float64 and cast the divisor
    back to float32; numpy 2 would add in float32. We spell out the numpy-1 arithmetic so the result
    does not depend on the numpy version (the difference is at most one float32 ulp anyway).
    """
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    mean = x.mean()
    denom = np.float32(np.sqrt(np.float64(x.var()) + 1e-7))
    return (x - mean) / denom


class AudioEncoder(nn.Module):
    """Holds a transformers ``Wav2Vec2Model`` (as ``.model``; state-dict keys get a ``model.`` prefix).

    ``forward(input_values [B, N] (already normalised), seq_len) -> [B, seq_len, layers, hidden]``
    with B squeezed when B == 1, i.e. ``[seq_len, layers, hidden]`` for the pipeline's single clip.
    Inference only (no SpecAugment masking, no layer drop, no attention mask).
    """

    def __init__(self, model: Wav2Vec2Model):
        super().__init__()
        self.model = model.eval()

    @classmethod
    def from_config(cls, config: Wav2Vec2Config | dict[str, Any], attn_implementation: str = "eager") -> "AudioEncoder":
        """Randomly initialised encoder of this architecture (load weights into ``.model`` afterwards).

        ``attn_implementation``: "eager" (the reference) or "sdpa".
        """
        if isinstance(config, dict):
            config = Wav2Vec2Config(**config)
        else:
            config = Wav2Vec2Config(**config.to_dict())  # never mutate the caller's config
        config._attn_implementation = attn_implementation
        return cls(Wav2Vec2Model(config))

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def conv_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Feature-encoder output ``[B, C, T50]`` (one column per 20 ms)."""
        return self.model.feature_extractor(input_values.to(self.dtype))

    @staticmethod
    def resample(features: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Conv features ``[B, C, T50]`` -> ``[B, seq_len, C]`` (feature_projection's input layout).

        Linear interpolation with align_corners=True along time, computed in float32.
        """
        out = F.interpolate(features.float(), size=seq_len, mode="linear", align_corners=True)
        return out.transpose(1, 2).to(features.dtype)

    def encode_features(self, features: torch.Tensor) -> torch.Tensor:
        """Resampled features ``[B, T, C]`` -> every transformer layer's output ``[B, T, layers, hidden]``."""
        hidden, _ = self.model.feature_projection(features)
        layers = self.model.encoder.layers
        outputs: list[torch.Tensor | None] = [None] * len(layers)

        def keep(i: int):
            def hook(_module, _args, out):
                # 4.x layers return a tuple (hidden, attn?); 5.x return the tensor.
                outputs[i] = out[0] if isinstance(out, tuple) else out

            return hook

        handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
        try:
            last = self.model.encoder(hidden)[0]
        finally:
            for h in handles:
                h.remove()
        if any(o is None for o in outputs):
            raise RuntimeError("an encoder layer did not run (layer drop in training mode?)")
        # transformers' hidden_states[-1] is the encoder output: identical to the last layer's output,
        # except with do_stable_layer_norm, where the final LayerNorm is applied to it.
        outputs[-1] = last
        return torch.stack(outputs, dim=2)

    def forward(self, input_values: torch.Tensor, seq_len: int) -> torch.Tensor:
        if input_values.ndim == 1:
            input_values = input_values[None]
        feats = self.resample(self.conv_features(input_values), seq_len)
        emb = self.encode_features(feats)
        return emb[0] if emb.shape[0] == 1 else emb


@torch.no_grad()
def embed_waveform(
    wave: np.ndarray | torch.Tensor,
    encoder: AudioEncoder,
    *,
    sr: int = SAMPLE_RATE,
    fps: float = FPS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The reference ``get_embedding``: 16 kHz mono waveform -> ``[frames, layers, hidden]``.

    frames = ``int(len(wave) / sr * fps)``. Returned on ``device`` (default: the encoder's), in the
    encoder's dtype.
    """
    if sr != SAMPLE_RATE:
        raise ValueError(f"wav2vec2 expects {SAMPLE_RATE} Hz audio, got {sr}")
    values = normalize_waveform(wave)
    device = device or next(encoder.parameters()).device
    x = torch.from_numpy(values).to(device)[None]
    return encoder(x, num_video_frames(values.shape[0], sr, fps))
