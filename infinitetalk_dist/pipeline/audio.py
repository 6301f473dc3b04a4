"""Speaker audio: each track loudness-normalised, the speakers arranged as the reference does.

The reference (``generate_infinitetalk.py``) does, per speaker: load at 16 kHz mono,
``loudness_norm`` to -23 LUFS, then ``audio_prepare_multi`` ('para' / 'add'), and writes the sum
of the speaker tracks as the output video's audio. Decoding and checking the files is
:func:`infinitetalk_dist.media.load_audio`; the wav2vec2 features are
:func:`infinitetalk_dist.models.wav2vec2_windows.audio_features`.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np
import torch

from infinitetalk_dist.media.audio import load_audio_checked, measure_loudness
from infinitetalk_dist.timeline import SAMPLE_RATE, num_video_frames

__all__ = ["TARGET_LUFS", "SpeakerAudio", "loudness_normalize", "prepare_audio", "prepare_speakers"]

# Loudness target of the reference.
TARGET_LUFS = -23.0


def loudness_normalize(wave: np.ndarray, sr: int = SAMPLE_RATE, lufs: float = TARGET_LUFS) -> np.ndarray:
    """Scale ``wave`` to ``lufs`` integrated loudness (ITU-R BS.1770-4, pyloudnorm's meter).

    As the reference ``loudness_norm``: a signal whose measured loudness has magnitude > 100 LUFS
    (silence gives -inf) is returned unchanged (the same object). The gain is applied in the
    input's float precision: numpy < 2 kept float32 for ``float32_array * float64_gain``, numpy 2
    (NEP 50) would promote to float64, so the gain is cast explicitly. Warns on possible clipping,
    as pyloudnorm does. Clips shorter than 400 ms (where the reference's meter raises) are
    measured as one block (:func:`~infinitetalk_dist.media.measure_loudness`).
    """
    wave = np.asarray(wave)
    return _apply_loudness(wave, measure_loudness(wave, sr), lufs)


def _apply_loudness(wave: np.ndarray, loudness: float, lufs: float) -> np.ndarray:
    if abs(loudness) > 100:
        return wave
    gain = np.power(10.0, (lufs - loudness) / 20.0)
    if np.issubdtype(wave.dtype, np.floating):
        gain = wave.dtype.type(gain)
    out = gain * wave
    if np.max(np.abs(out)) >= 1.0:
        warnings.warn("Possible clipped samples in output.", stacklevel=3)
    return out


class SpeakerAudio(NamedTuple):
    """Per-speaker tracks (all the same length, 16 kHz float32) and the mix the video carries."""

    tracks: list[np.ndarray]
    mix: np.ndarray

    @property
    def num_frames(self) -> int:
        return num_video_frames(self.mix.shape[0])


def prepare_speakers(wave1: np.ndarray | None, wave2: np.ndarray | None = None, mode: str = "para") -> SpeakerAudio:
    """The reference ``audio_prepare_multi`` on already-loaded (and normalised) waveforms.

    - one speaker (``wave2`` None): ``tracks = [wave1]``, ``mix = wave1``.
    - ``mode="para"`` (both talk over the same time): the tracks as given; the reference requires
      equal lengths (its ``sum`` raises otherwise), here the shorter one is padded with zeros at the
      end to the longer one's length.
    - ``mode="add"`` (speaker 2 after speaker 1): ``[wave1, zeros(len2)]`` and
      ``[zeros(len1), wave2]``, each ``len1 + len2`` long.
    - ``mix`` = the sum of the tracks (the reference writes it as the video's audio).

    A missing speaker of two (``None``; the reference's ``'None'`` path) is zeros of the other's
    length, as in the reference (so with 'add' it still takes its turn, silently).
    """
    if mode not in ("para", "add"):
        raise ValueError(f"audio mode must be 'para' or 'add', got {mode!r}")
    if wave1 is None and wave2 is None:
        raise ValueError("prepare_speakers needs at least one speaker waveform")
    if wave2 is None:
        w = _as_wave(wave1)
        return SpeakerAudio([w], w)
    w2 = _as_wave(wave2)
    w1 = np.zeros_like(w2) if wave1 is None else _as_wave(wave1)
    n1, n2 = w1.shape[0], w2.shape[0]
    if mode == "para":
        n = max(n1, n2)
        t1, t2 = _pad_to(w1, n), _pad_to(w2, n)
    else:
        t1 = np.concatenate([w1, np.zeros(n2, np.float32)])
        t2 = np.concatenate([np.zeros(n1, np.float32), w2])
    return SpeakerAudio([t1, t2], t1 + t2)


def _as_wave(w) -> np.ndarray:
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().numpy()
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 1:
        raise ValueError(f"expected a mono waveform (1-D), got shape {w.shape}")
    return w


def _pad_to(w: np.ndarray, n: int) -> np.ndarray:
    return w if w.shape[0] == n else np.concatenate([w, np.zeros(n - w.shape[0], np.float32)])


def prepare_audio(
    path1: str | os.PathLike | None,
    path2: str | os.PathLike | None = None,
    mode: str = "para",
    *,
    sr: int = SAMPLE_RATE,
    lufs: float = TARGET_LUFS,
    strict: bool = False,
) -> SpeakerAudio:
    """Files -> speaker tracks + mix, as the reference's ``audio_prepare_single/multi``.

    Each given file is loaded (:func:`~infinitetalk_dist.media.load_audio`, with its checks) and
    loudness-normalised to ``lufs`` on its own, then arranged by :func:`prepare_speakers`. ``path2=None`` is one speaker;
    for two speakers, one of the paths may be None (a silent speaker, as the reference's 'None').
    """
    if path1 is None and path2 is None:
        raise ValueError("prepare_audio needs at least one audio file")
    waves = []
    for p in (path1, path2):
        if p is None:
            waves.append(None)
            continue
        w, loud = load_audio_checked(p, sr, strict=strict)
        waves.append(_apply_loudness(w, loud, lufs))
    if path2 is None:
        return prepare_speakers(waves[0], None, mode)
    return prepare_speakers(waves[0], waves[1], mode)
