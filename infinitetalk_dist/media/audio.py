"""Audio files -> 16 kHz mono waveforms the model hears, checked once, with one error naming the file.

The reference does ``librosa.load(path, sr=16000)`` (mono = mean of the channels; for
.mp4/.mov/.avi/.mkv it first extracts a 16 kHz stereo wav with ffmpeg). Here any container/codec
PyAV can read (the audio track of a video too) is downmixed by averaging the channels (as
librosa), resampled with PyAV's ``AudioResampler`` (libswresample; the reference used soxr
through librosa, so samples differ at the resampler's precision, not in content), trimmed of
codec priming/padding by timestamps, and unusable input is one :class:`AudioError`.

pyloudnorm is imported inside :func:`measure_loudness` (only the silence check and loudness
normalisation need it).
"""

from __future__ import annotations

import math
import os
import warnings

import av
import numpy as np

from infinitetalk_dist.errors import AudioError
from infinitetalk_dist.timeline import FPS, SAMPLE_RATE

from .container import AV_ERRORS, DecodeProblem, decode

__all__ = ["AudioWarning", "LOUDNESS_BLOCK_S", "SILENCE_LUFS", "load_audio", "load_audio_checked",
           "measure_loudness"]

# The BS.1770 absolute gate: anything quieter is silence.
SILENCE_LUFS = -70.0
# pyloudnorm's gating block: shorter clips are measured as one block of their own length.
LOUDNESS_BLOCK_S = 0.4


class AudioWarning(UserWarning):
    """Audio was usable but not entirely as stored (truncated or corrupt parts were skipped)."""


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, *, strict: bool = False) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sr`` Hz (not loudness-normalised).

    Any container/codec FFmpeg (PyAV) reads: wav, flac, mp3, m4a/aac, ogg/opus, the audio track of
    mp4/mov/mkv/... (the "best" audio stream when there are several). Channels are averaged (as
    librosa's mono). Timestamps decide the span: samples before time 0 (priming that a demuxer
    exposes with negative timestamps) are dropped, and decoded samples past the stream's declared
    duration (encoder padding of the last packet, e.g. AAC) are cut; AAC/MP3/Opus priming that the
    container signals is already removed by the decoder.

    Damaged files: a file that decodes a prefix and then fails, or has corrupt packets, or decodes
    clearly less than its header declares, returns what decoded and warns (:class:`AudioWarning`
    giving how much) -- unless ``strict``, where that is an :class:`AudioError` too. A file from
    which nothing decodes is always an error.

    Raises :class:`AudioError` (message starts with the path) for: missing file, not a readable
    media file, no audio stream, no decodable samples, shorter than one video frame (1/25 s),
    silence (integrated loudness -inf, i.e. no 400 ms block above BS.1770's -70 LUFS gate; a DC
    offset is left out of that measure), a constant signal.
    """
    return load_audio_checked(path, sr, strict=strict)[0]


def load_audio_checked(path: str | os.PathLike, sr: int = SAMPLE_RATE, *,
                       strict: bool = False) -> tuple[np.ndarray, float]:
    """:func:`load_audio` plus the integrated loudness it measured (reused for normalisation)."""
    wave = _decode_file(path, sr, strict=strict)
    name = os.fspath(path)
    if wave.size == 0:
        raise AudioError(f"{name}: contains no audio samples (zero length)")
    min_samples = math.ceil(sr / FPS)
    if wave.size < min_samples:
        raise AudioError(
            f"{name}: audio is {wave.size / sr * 1000:.1f} ms long, shorter than one video frame "
            f"(1/{FPS} s = {1000 / FPS:.0f} ms)"
        )
    if not np.all(np.isfinite(wave)):
        raise AudioError(f"{name}: decoded audio contains NaN or infinite samples")
    peak = float(np.max(np.abs(wave)))
    if peak == 0.0:
        raise AudioError(f"{name}: audio is silent (digital silence, every sample is 0)")
    loudness = measure_loudness(wave, sr)
    _check_not_silent(name, wave, sr, loudness, peak)
    return wave, loudness


def _check_not_silent(name: str, wave: np.ndarray, sr: int, loudness: float, peak: float) -> None:
    """One line if ``wave`` holds nothing to hear. A DC offset fools the meter: its K-weighting
    high-pass rings at the step from 0 to the offset, so a constant 0.5 reads -32 LUFS. Where the
    offset is not small against the rest (>= 1 % of the swing around it), the gate is applied to
    the signal without it; the loudness returned for normalisation stays the reference's."""
    mean = float(np.mean(wave, dtype=np.float64))
    swing = max(float(wave.max()) - mean, mean - float(wave.min()))  # max |wave - mean|, no film-sized copy
    if swing == 0.0:
        raise AudioError(f"{name}: audio is silent (a constant {mean:+.3g} offset, DC only, nothing else)")
    has_dc = abs(mean) >= 0.01 * swing
    if has_dc:
        loudness = measure_loudness(wave - np.float32(mean), sr)
    if not np.isfinite(loudness) or loudness < SILENCE_LUFS:
        dc = f", after removing a DC offset of {mean:+.3g}" if has_dc else ""
        raise AudioError(
            f"{name}: audio is silent (integrated loudness {loudness:.1f} LUFS{dc}: no 400 ms block "
            f"above the {SILENCE_LUFS:.0f} LUFS absolute gate of ITU-R BS.1770; peak {peak:.2e})"
        )


def measure_loudness(wave: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    """Integrated loudness (LUFS, ITU-R BS.1770-4 with pyloudnorm's meter); -inf for silence.

    Clips shorter than the 400 ms gating block (where pyloudnorm raises) are measured as a single
    block of their own length.
    """
    import pyloudnorm

    wave = np.asarray(wave)
    n = wave.shape[0]
    if n == 0:
        return float("-inf")
    block = LOUDNESS_BLOCK_S if n >= LOUDNESS_BLOCK_S * sr else n / sr
    return float(pyloudnorm.Meter(sr, block_size=block).integrated_loudness(wave))


def _decode_file(path, sr: int, *, strict: bool) -> np.ndarray:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise AudioError(f"{name}: no such file")
    if os.path.isdir(name):
        raise AudioError(f"{name}: is a directory, not an audio file")
    if os.path.getsize(name) == 0:
        raise AudioError(f"{name}: empty file (0 bytes), not an audio file")
    try:
        container = av.open(name, metadata_errors="ignore")
    except (*AV_ERRORS, UnicodeDecodeError) as e:
        raise AudioError(f"{name}: not a readable audio/video file ({_why(e)})") from None

    with container:
        streams = container.streams.audio
        if not streams:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise AudioError(f"{name}: has no audio stream (streams: {kinds})")
        try:
            stream = container.streams.best("audio") or streams[0]
        except Exception:  # pragma: no cover - very old PyAV
            stream = streams[0]
        return _decode_stream(container, stream, name, sr, strict)


def _why(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e)
    return f"{type(e).__name__}: {msg}"


def _decode_stream(container, stream, name: str, sr: int, strict: bool) -> np.ndarray:
    chunks: list[np.ndarray] = []
    resampler = None
    setup = None  # (format, layout, rate) the resampler was built for
    t_first: float | None = None  # timestamp (s) of the first decoded sample
    decoded_s = 0.0  # decoded duration at the input rate(s)
    max_frame_s = 0.0
    damage: list[DecodeProblem] = []
    stopped: str | None = None

    def push(frame):
        out = resampler.resample(frame)
        for f in out:
            # Packed float (one plane, channels interleaved): PyAV's to_ndarray of a planar frame
            # with 8+ channels reads past its plane pointers and crashes the process.
            channels = len(f.layout.channels)
            a = f.to_ndarray().reshape(-1, channels)  # [samples, channels]
            chunks.append(a[:, 0].copy() if channels == 1 else a.mean(axis=1, dtype=np.float32))

    try:
        for frame in decode(container, stream, damage):
            if frame.samples == 0:
                continue
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != setup:  # first frame, or the stream changed format mid-way
                if resampler is not None:
                    push(None)
                resampler = av.AudioResampler(format="flt", rate=sr)
                setup = key
            if t_first is None:
                t_first = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else 0.0
            dur = frame.samples / frame.sample_rate
            decoded_s += dur
            max_frame_s = max(max_frame_s, dur)
            push(frame)
    except AV_ERRORS as e:  # the resampler refusing a frame ends the decode like a read error
        stopped = _why(e)
    if resampler is not None:
        push(None)
    stopped = next((_why(d.error) for d in damage if d.stopped), stopped)
    skipped = [d for d in damage if not d.stopped]
    first_error = _why(skipped[0].error) if skipped else None

    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        detail = stopped or first_error
        raise AudioError(f"{name}: no audio could be decoded" + (f" ({detail})" if detail else " (zero length)"))

    # Span by timestamps: [max(t_first, 0), min(decoded end, declared end)).
    t_first = t_first or 0.0
    start = max(t_first, 0.0)
    end = t_first + decoded_s
    declared = _declared_end(stream, t_first)
    problems = []
    if declared is not None and declared < end and end - declared <= 2 * max_frame_s + 1e-6:
        end = declared  # encoder padding in the last packet(s)
    elif declared is not None and declared > end + max(0.1, 0.01 * declared):
        problems.append(f"decoded {end - start:.2f} s of the {declared - start:.2f} s its header declares")
    if stopped:
        problems.append(f"decoding stopped at {end - start:.2f} s: {stopped}")
    if skipped:
        problems.append(f"{len(skipped)} corrupt packet(s) skipped (first: {first_error})")
    lead = int(round((start - t_first) * sr))
    keep = int(round((end - start) * sr))
    wave = wave[lead:lead + keep]
    if problems:
        msg = f"{name}: audio is damaged or truncated: " + "; ".join(problems)
        if strict:
            raise AudioError(msg)
        warnings.warn(msg + f"; using the {wave.size / sr:.2f} s that decoded", AudioWarning, stacklevel=5)
    return np.ascontiguousarray(wave, dtype=np.float32)


def _declared_end(stream, t_first: float) -> float | None:
    """End time (s) the stream's header declares, if it declares a duration."""
    if stream.duration is None or stream.time_base is None:
        return None
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else t_first
    return start + float(stream.duration * stream.time_base)
