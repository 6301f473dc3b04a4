"""Model presets: matching configs for the DiT and its encoders.

``tiny`` is the built-in demo/test preset: every width is small, and the DiT's input widths
are derived from the tiny encoders so the pieces always fit together. ``14b`` is the real
model (random builds for benchmarks; loading reads the downloaded folder's configs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .clip import CLIPVisionConfig, clip_tiny, clip_vit_h14
from .dit import DiTConfig, dit_14b, dit_tiny
from .t5 import T5Config, umt5_tiny_encoder, umt5_xxl_encoder
from .vae import VAEConfig, tiny_vae, wan21_vae

# Tiny wav2vec2 (transformers Wav2Vec2Config fields). 16 channels per positional-conv group:
# torch's CPU bf16 grouped conv1d is wrong at <= 8 channels per group (oneDNN).
TINY_WAV2VEC2 = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
    conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    feat_extract_norm="group", do_stable_layer_norm=False,
)


# chinese-wav2vec2-base is the wav2vec2-base architecture: transformers' Wav2Vec2Config
# defaults (hidden 768, 12 layers, 512-channel conv encoder). Real runs read the folder's config.
BASE_WAV2VEC2: dict = {}


@dataclass(frozen=True)
class ModelPreset:
    name: str
    dit: DiTConfig
    vae: VAEConfig
    clip: CLIPVisionConfig
    t5: T5Config
    wav2vec2: dict  # Wav2Vec2Config fields for random builds


def tiny_preset() -> ModelPreset:
    t5, clip, w2v = umt5_tiny_encoder(), clip_tiny(), TINY_WAV2VEC2
    dit = replace(dit_tiny(), text_dim=t5.dim, clip_dim=clip.vision_dim,
                  audio_blocks=w2v["num_hidden_layers"], audio_channels=w2v["hidden_size"])
    # One residual block per level: the VAE dominates a tiny CPU run (conv3d at 8 channels
    # takes torch's slow non-oneDNN path).
    return ModelPreset("tiny", dit, replace(tiny_vae(), num_res_blocks=1), clip, t5, dict(w2v))


def full_preset() -> ModelPreset:
    return ModelPreset("14b", dit_14b(), wan21_vae(), clip_vit_h14(), umt5_xxl_encoder(), dict(BASE_WAV2VEC2))


PRESETS = {"tiny": tiny_preset, "14b": full_preset}
