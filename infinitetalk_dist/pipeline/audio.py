"""Audio preparation for the wav2vec2 encoder (for now: loudness normalisation)."""

from __future__ import annotations

import warnings

import numpy as np
import pyloudnorm

__all__ = ["loudness_normalize"]


def loudness_normalize(wave: np.ndarray, sr: int = 16000, lufs: float = -23.0) -> np.ndarray:
    """Scale ``wave`` to ``lufs`` integrated loudness (ITU-R BS.1770-4, pyloudnorm's meter).

    As the reference ``loudness_norm``: a signal whose measured loudness has magnitude > 100 LUFS
    (silence gives -inf) is returned unchanged (the same object). The gain is applied in the
    input's float precision: numpy < 2 kept float32 for ``float32_array * float64_gain``, numpy 2
    (NEP 50) would promote to float64, so the gain is cast explicitly. Warns on possible clipping,
    as pyloudnorm does.
    """
    wave = np.asarray(wave)
    loudness = pyloudnorm.Meter(sr).integrated_loudness(wave)
    if abs(loudness) > 100:
        return wave
    gain = np.power(10.0, (lufs - loudness) / 20.0)
    if np.issubdtype(wave.dtype, np.floating):
        gain = wave.dtype.type(gain)
    out = gain * wave
    if np.max(np.abs(out)) >= 1.0:
        warnings.warn("Possible clipped samples in output.", stacklevel=2)
    return out
