"""Generated demo inputs (no binaries in the repository): a synthetic face and speech-like audio.

    from infinitetalk_dist.samples import write_demo_inputs
    image_path, audio_path = write_demo_inputs("demo")    # demo/face.png, demo/speech.wav

Both are deterministic functions of ``seed`` (a ``numpy.random.Generator``; the global RNG is never
touched): the same seed gives the same bytes with the same numpy/PIL builds. They exist to run the
pipeline end to end without downloads; they are not meant to look or sound real (the models will
still produce a video from them).
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from infinitetalk_dist.media.atomic import atomic_write
from infinitetalk_dist.timeline import SAMPLE_RATE

__all__ = ["face_image", "speech_like", "write_demo_inputs"]

_SKIN = [(241, 194, 167), (224, 172, 138), (198, 134, 96), (161, 102, 70), (120, 78, 52), (250, 214, 190)]
_HAIR = [(40, 28, 20), (85, 55, 35), (20, 20, 22), (150, 110, 60), (200, 170, 110), (110, 40, 25)]
_IRIS = [(70, 50, 30), (60, 100, 150), (70, 110, 70), (110, 80, 50), (40, 40, 40)]


def _jitter(rng: np.random.Generator, color, amount: int = 10) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _shade(color, factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(c * factor), 0, 255)) for c in color)


def face_image(size: tuple[int, int] = (256, 256), seed: int = 0) -> np.ndarray:
    """A simple synthetic head-and-shoulders picture, ``uint8 [H, W, 3]`` with ``size = (H, W)``.

    Background gradient, shoulders, neck, hair, ears, a skin-tone face ellipse, eyebrows, eyes
    (white, iris, pupil, highlight), nose, closed lips and cheeks; colours and proportions vary
    with ``seed``. Drawn with PIL at 4x and downsampled (anti-aliased), centred, the face about
    half the height, as a portrait the pipeline expects.
    """
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"face_image: size must be at least 8x8, got {size}")
    rng = np.random.default_rng(seed)
    ss = max(1, min(4, 4096 // max(h, w)))
    H, W = h * ss, w * ss
    m = min(H, W)

    # background: vertical gradient between two soft colours, a little horizontal shading
    top = rng.integers(120, 230, 3)
    bottom = rng.integers(40, 150, 3)
    y = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    x = np.linspace(-1, 1, W, dtype=np.float32)[None, :, None]
    bg = top * (1 - y) + bottom * y
    bg = bg * (1 - 0.12 * x**2)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)

    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 8)
    hair = _jitter(rng, _HAIR[rng.integers(len(_HAIR))], 8)
    iris = _jitter(rng, _IRIS[rng.integers(len(_IRIS))], 8)
    cloth = tuple(int(v) for v in rng.integers(30, 200, 3))
    lips = _jitter(rng, (176, 84, 86), 12)

    cx, cy = W / 2, H * 0.45
    fw = m * rng.uniform(0.19, 0.23)  # face half-width
    fh = m * rng.uniform(0.26, 0.30)  # face half-height
    long_hair = bool(rng.integers(2))

    def ell(x0, y0, rx, ry, **kw):
        d.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], **kw)

    # shoulders (and the torso below them on tall pictures) and neck
    sy = min(cy + fh * 1.55, H * 0.9)  # top of the shoulders
    ell(cx, sy + m * 0.2, m * 0.55, m * 0.2, fill=cloth)
    if sy + m * 0.2 < H:
        d.rectangle([cx - m * 0.55, sy + m * 0.2, cx + m * 0.55, H], fill=cloth)
    d.rectangle([cx - fw * 0.45, cy + fh * 0.6, cx + fw * 0.45, sy + m * 0.02], fill=_shade(skin, 0.88))
    ell(cx, sy + m * 0.02, fw * 0.45, m * 0.03, fill=_shade(skin, 0.88))
    # hair behind the head
    if long_hair:
        d.rounded_rectangle([cx - fw * 1.25, cy - fh * 1.1, cx + fw * 1.25, cy + fh * 1.25],
                            radius=int(fw * 0.9), fill=hair)
    else:
        ell(cx, cy - fh * 0.18, fw * 1.15, fh * 1.0, fill=hair)
    # ears
    for s in (-1, 1):
        ell(cx + s * fw * 0.98, cy + fh * 0.02, fw * 0.16, fh * 0.17, fill=_shade(skin, 0.93))
    # face
    ell(cx, cy, fw, fh, fill=skin)
    # fringe: the top of the head covered by hair
    d.chord([cx - fw * 1.08, cy - fh * 1.12, cx + fw * 1.08, cy + fh * 0.05], 180, 360, fill=hair)
    ell(cx - fw * 0.05, cy - fh * 0.5, fw * 0.98, fh * 0.18, fill=hair)

    # cheeks (blended)
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    od = ImageDraw.Draw(overlay)
    for s in (-1, 1):
        od.ellipse([cx + s * fw * 0.55 - fw * 0.2, cy + fh * 0.2 - fh * 0.1,
                    cx + s * fw * 0.55 + fw * 0.2, cy + fh * 0.2 + fh * 0.1], fill=(220, 90, 90, 40))
    overlay = overlay.filter(ImageFilter.GaussianBlur(radius=max(1, fw * 0.08)))
    img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    d = ImageDraw.Draw(img)

    # eyes and eyebrows
    ey = cy - fh * 0.08
    ex = fw * rng.uniform(0.36, 0.44)
    erx, ery = fw * 0.2, fh * 0.085
    for s in (-1, 1):
        x0 = cx + s * ex
        ell(x0, ey, erx, ery, fill=(245, 245, 240), outline=_shade(skin, 0.6), width=max(1, int(m * 0.004)))
        ell(x0, ey, ery * 0.95, ery * 0.95, fill=iris)
        ell(x0, ey, ery * 0.45, ery * 0.45, fill=(15, 15, 15))
        ell(x0 + ery * 0.3, ey - ery * 0.3, ery * 0.18, ery * 0.18, fill=(255, 255, 255))
        by = ey - fh * 0.2
        d.line([(x0 - erx * 1.1, by + fh * 0.02), (x0, by - fh * 0.015), (x0 + erx * 1.1, by + fh * 0.02)],
               fill=_shade(hair, 0.9), width=max(1, int(fh * 0.045)), joint="curve")
    # nose
    nshade = _shade(skin, 0.78)
    d.line([(cx + fw * 0.02, ey + fh * 0.05), (cx + fw * 0.07, cy + fh * 0.25)], fill=nshade,
           width=max(1, int(m * 0.006)))
    for s in (-1, 1):
        ell(cx + s * fw * 0.09, cy + fh * 0.28, fw * 0.045, fh * 0.025, fill=_shade(skin, 0.6))
    # mouth: closed lips with a dark parting line
    my = cy + fh * 0.52
    mw = fw * rng.uniform(0.32, 0.42)
    ell(cx, my - fh * 0.03, mw, fh * 0.055, fill=_shade(lips, 0.92))
    ell(cx, my + fh * 0.035, mw * 0.9, fh * 0.065, fill=lips)
    d.line([(cx - mw, my), (cx, my + fh * 0.012), (cx + mw, my)], fill=_shade(lips, 0.45),
           width=max(1, int(m * 0.005)), joint="curve")

    if ss > 1:
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).copy()


# vowel formants (F1, F2, F3) in Hz, roughly a, e, i, o, u
_VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [300, 2200, 2960], [570, 840, 2410],
                    [440, 1020, 2240]], dtype=np.float64)
_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
_FORMANT_GAINS = np.array([1.0, 0.6, 0.3])


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1:
        return x
    k = np.hanning(n + 2)[1:-1]
    k /= k.sum()
    pad = np.pad(x, (n, n), mode="edge")
    return np.convolve(pad, k, mode="same")[n:-n]


def speech_like(seconds: float = 3.0, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like waveform, float32 mono, about -20 dBFS RMS.

    A glottal-like harmonic source (harmonics 1/k^0.8 up to 0.45 sr) whose pitch has a phrase
    contour, declination and ~5.5 Hz vibrato; syllables of 120-300 ms with gaps and occasional
    pauses, each a vowel whose formants (F1-F3 resonances, smoothed between syllables) weight the
    harmonics; breath noise and short fricative bursts at some syllable onsets. Not intelligible,
    but with speech's rhythm and spectrum, enough to drive the pipeline.
    """
    n = int(round(seconds * sr))
    if n <= 0:
        return np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr

    # syllable plan
    env = np.zeros(n)
    formants = np.zeros((n, 3))
    fric = np.zeros(n)
    pos = 0.08
    cur = _VOWELS[rng.integers(len(_VOWELS))]
    formants[:] = cur
    while pos < seconds - 0.1:
        dur = rng.uniform(0.12, 0.3)
        a, b = int(pos * sr), min(n, int((pos + dur) * sr))
        cur = _VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.92, 1.08)
        formants[a:] = cur
        seg = b - a
        if seg > 0:
            attack, release = min(seg // 3, int(0.025 * sr)), min(seg // 2, int(0.05 * sr))
            e = np.ones(seg)
            e[:attack] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, attack, endpoint=False))
            e[seg - release:] = 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, release))
            env[a:b] = np.maximum(env[a:b], e * rng.uniform(0.6, 1.0))
        if rng.random() < 0.35:  # a consonant burst before the vowel
            fl = int(rng.uniform(0.03, 0.07) * sr)
            fa = max(0, a - fl // 2)
            fric[fa:fa + fl] = np.hanning(len(fric[fa:fa + fl]))
        gap = rng.uniform(0.03, 0.1) if rng.random() > 0.15 else rng.uniform(0.25, 0.4)
        pos += dur + gap
    formants = np.stack([_smooth(formants[:, j], int(0.03 * sr)) for j in range(3)], axis=1)

    # pitch: base, phrase contour, declination, vibrato
    f0_base = rng.uniform(105, 210)
    f0 = f0_base * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 0.45) * t + rng.uniform(0, 2 * np.pi)))
    f0 *= 1 - 0.06 * t / max(seconds, 1e-6)
    f0 *= 1 + 0.012 * np.sin(2 * np.pi * 5.5 * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / sr

    voiced = np.zeros(n)
    kmax = int(0.45 * sr / f0.min())
    phases = rng.uniform(0, 2 * np.pi, kmax)
    for k in range(1, kmax + 1):
        fk = k * f0
        weight = np.zeros(n)
        for j in range(3):
            weight += _FORMANT_GAINS[j] / (1 + ((fk - formants[:, j]) / (_BANDWIDTHS[j] / 2)) ** 2)
        weight = (weight + 0.02) * k**-0.8 * (fk < 0.45 * sr)
        voiced += weight * np.sin(k * phase + phases[k - 1])
    voiced *= env

    noise = rng.standard_normal(n)
    hp = np.diff(noise, prepend=0.0)  # crude high-pass for breath / fricatives
    sig = voiced + 0.02 * hp * env + 0.15 * hp * fric + 0.001 * noise

    fade = min(n // 2, int(0.01 * sr))
    if fade:
        ramp = np.linspace(0, 1, fade)
        sig[:fade] *= ramp
        sig[n - fade:] *= ramp[::-1]
    rms = np.sqrt(np.mean(sig**2))
    if rms > 0:
        sig *= 10 ** (-20 / 20) / rms
    peak = np.max(np.abs(sig))
    if peak > 0.99:
        sig *= 0.99 / peak
    return sig.astype(np.float32)


def write_demo_inputs(folder: str | os.PathLike, *, seed: int = 0, seconds: float = 3.0,
                      size: tuple[int, int] = (512, 512), sr: int = SAMPLE_RATE) -> tuple[Path, Path]:
    """Write ``face.png`` and ``speech.wav`` (16-bit PCM mono at ``sr``) into ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_path, audio_path = folder / "face.png", folder / "speech.wav"
    # Written atomically: processes of one replica may write the same (identical) inputs at once.
    with atomic_write(image_path) as tmp:
        Image.fromarray(face_image(size, seed)).save(tmp, format="PNG")
    pcm = np.round(np.clip(speech_like(seconds, sr, seed), -1, 1) * 32767).astype("<i2")
    with atomic_write(audio_path) as tmp, wave.open(tmp, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(sr)
        wf.writeframes(pcm.tobytes())
    return image_path, audio_path
