"""Audio front end: decoding any container/codec, bad inputs, loudness, speakers, windowed wav2vec2.

Media files are written in the test with PyAV from a deterministic synthetic signal.
"""

from __future__ import annotations

import fractions
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
pytest.importorskip("pyloudnorm")

from infinitetalk_dist.models.presets import TINY_WAV2VEC2  # noqa: E402
from infinitetalk_dist.models.random_init import randomize_, seeded  # noqa: E402
from infinitetalk_dist.media import AudioError, AudioWarning, load_audio, measure_loudness  # noqa: E402
from infinitetalk_dist.models.wav2vec2 import AudioEncoder, embed_waveform  # noqa: E402
from infinitetalk_dist.models.wav2vec2_windows import audio_features, windowed_features  # noqa: E402
from infinitetalk_dist.pipeline.audio import loudness_normalize, prepare_audio, prepare_speakers  # noqa: E402
from infinitetalk_dist.timeline import num_video_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SR = 16000


# ---------------------------------------------------------------------------------------------
# Synthetic media
# ---------------------------------------------------------------------------------------------


def source(t: np.ndarray) -> np.ndarray:
    """Stereo test signal [2, n] at times ``t``: voiced-like partials under a syllable envelope.

    Everything is below 2.4 kHz, so resampling to 16 kHz keeps it whole."""
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 3.7 * t)
    base = env * (0.2 * np.sin(2 * np.pi * 210 * t) + 0.1 * np.sin(2 * np.pi * 470 * t + 1)
                  + 0.05 * np.sin(2 * np.pi * 1130 * t + 2) + 0.03 * np.sin(2 * np.pi * 2310 * t))
    right = 0.7 * base + 0.04 * np.sin(2 * np.pi * 660 * t)
    return np.stack([base, right]).astype(np.float32)


def expected_mono(n: int) -> np.ndarray:
    return source(np.arange(n) / SR).mean(axis=0)


def write_media(path: Path, codec: str | None, rate: int, seconds: float, *, channels: int = 2,
                video: bool = False, signal: np.ndarray | None = None) -> Path:
    """Write ``seconds`` of :func:`source` (or ``signal`` [channels, n]) with PyAV.

    ``codec=None`` writes no audio stream (needs ``video``)."""
    layout = "stereo" if channels == 2 else "mono"
    x = source(np.arange(int(round(seconds * rate))) / rate)[:channels] if signal is None else signal
    with av.open(str(path), "w") as c:
        vs = None
        if video:
            vs = c.add_stream("libx264", rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        if codec is not None:
            st = c.add_stream(codec, rate=rate, layout=layout)
            fmt = st.codec_context.format.name
            fs = st.codec_context.frame_size or 1024
        n_video = int(round(seconds * 25)) if video else 0
        vi = 0
        n = x.shape[1] if codec is not None else 0
        for i in range(0, n, fs) if codec is not None else []:
            seg = x[:, i:i + fs]
            arr = seg if fmt.endswith("p") else seg.T.reshape(1, -1)
            if fmt.startswith("s16"):
                arr = np.round(arr * 32767).astype(np.int16)
            elif fmt.startswith("s32"):
                arr = np.round(arr * 2147483647.0).astype(np.int32)
            else:
                arr = arr.astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, i, fractions.Fraction(1, rate)
            for p in st.encode(frame):
                c.mux(p)
            while vs is not None and vi < min(n_video, (i + fs) / rate * 25):
                vi = _video_frame(c, vs, vi)
        while vs is not None and vi < n_video:
            vi = _video_frame(c, vs, vi)
        if codec is not None:
            for p in st.encode(None):
                c.mux(p)
        if vs is not None:
            for p in vs.encode(None):
                c.mux(p)
    return path


def _video_frame(c, vs, i: int) -> int:
    img = np.full((48, 64, 3), (i * 7) % 255, np.uint8)
    f = av.VideoFrame.from_ndarray(img, format="rgb24")
    f.pts = i
    for p in vs.encode(f):
        c.mux(p)
    return i + 1


FORMATS = {
    # name: (file name, codec, rate, video, min correlation)
    "wav_s16_44k_stereo": ("a.wav", "pcm_s16le", 44100, False, 0.9999),
    "flac_48k": ("a.flac", "flac", 48000, False, 0.9999),
    "mp3_44k": ("a.mp3", "libmp3lame", 44100, False, 0.995),
    "aac_m4a_44k": ("a.m4a", "aac", 44100, False, 0.995),
    "opus_ogg_48k": ("a.ogg", "libopus", 48000, False, 0.995),
    "mp4_h264_aac": ("v.mp4", "aac", 48000, True, 0.995),
    "mkv_h264_opus": ("v.mkv", "libopus", 48000, True, 0.995),
}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_load_formats(tmp_path, kind):
    name, codec, rate, video, min_corr = FORMATS[kind]
    seconds = 1.5
    path = write_media(tmp_path / name, codec, rate, seconds, video=video)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioWarning)
        x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    # Priming/padding trimmed by timestamps: the length is the source's, to a sample or two.
    assert abs(x.shape[0] - seconds * SR) <= 2, x.shape[0]
    ref = expected_mono(x.shape[0])
    # No time shift: the best lag within +-200 samples is 0.
    core = slice(400, x.shape[0] - 400)
    lags = range(-200, 201)
    best = max(lags, key=lambda lag: float(np.dot(x[400 + lag:x.shape[0] - 400 + lag], ref[core])))
    assert best == 0, f"{kind}: decoded audio is shifted by {best} samples"
    corr = np.corrcoef(x[core], ref[core])[0, 1]
    assert corr >= min_corr, f"{kind}: correlation {corr:.5f}"
    if kind.startswith(("wav", "flac")):  # lossless: only 16-bit quantisation and the resampler
        np.testing.assert_allclose(x[core], ref[core], atol=2e-3)


def test_load_mono_48k_float(tmp_path):
    path = write_media(tmp_path / "m.wav", "pcm_f32le", 48000, 1.0, channels=1)
    x = load_audio(path)
    assert x.shape[0] == SR
    ref = source(np.arange(SR) / SR)[0]
    np.testing.assert_allclose(x[400:-400], ref[400:-400], atol=2e-3)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one AudioError naming the file and saying why
# ---------------------------------------------------------------------------------------------


def _raises(path, *words):
    with pytest.raises(AudioError) as e:
        load_audio(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.wav", "no such file")


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.wav"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _raises(p, "not a readable audio/video file")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp3"
    p.write_bytes(b"")
    _raises(p, "empty file")


def test_truncated_file_nothing_decodes(tmp_path):
    # An mp4/m4a is written with its index (moov) at the end: cut, nothing can be read.
    full = write_media(tmp_path / "full.m4a", "aac", 44100, 1.5)
    p = tmp_path / "cut.m4a"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _raises(p, "not a readable audio/video file")


def test_truncated_file_decodes_prefix_with_warning(tmp_path):
    full = write_media(tmp_path / "full.flac", "flac", 48000, 3.0)
    p = tmp_path / "cut.flac"
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.warns(AudioWarning, match="truncated") as rec:
        x = load_audio(p)
    assert str(p) in str(rec[0].message)
    assert 0.5 * SR < x.shape[0] < 2.5 * SR
    ref = expected_mono(x.shape[0])
    assert np.corrcoef(x[400:-400], ref[400:-400])[0, 1] > 0.999  # the prefix is right
    with pytest.raises(AudioError, match="truncated"):
        load_audio(p, strict=True)


def test_video_without_audio(tmp_path):
    p = write_media(tmp_path / "silent_film.mp4", None, 48000, 1.0, video=True)
    _raises(p, "no audio stream", "video")


def test_zero_samples(tmp_path):
    import wave

    p = tmp_path / "zero.wav"
    with wave.open(str(p), "wb") as w:  # a valid header, 0 frames
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"")
    _raises(p, "no audio")


def test_shorter_than_one_frame(tmp_path):
    p = write_media(tmp_path / "blip.wav", "pcm_s16le", 16000, 0.01)
    _raises(p, "shorter than one video frame", "10.0 ms")


def test_digital_silence(tmp_path):
    p = write_media(tmp_path / "quiet.flac", "flac", 16000, 1.0, signal=np.zeros((2, 16000), np.float32))
    _raises(p, "silent", "digital silence")


def test_below_absolute_gate(tmp_path):
    t = np.arange(16000) / 16000
    x = np.stack([1e-4 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)  # about -83 LUFS
    p = write_media(tmp_path / "hum.wav", "pcm_f32le", 16000, 1.0, signal=x)
    _raises(p, "silent", "-70 LUFS")


def test_dc_offset_alone_is_silence(tmp_path):
    """A DC offset makes pyloudnorm's high-pass ring at the start (a constant 0.5 read -32 LUFS
    and passed); the gate now looks at the signal without its offset."""
    t = np.arange(16000) / 16000
    dc = np.full((2, 16000), 0.5, np.float32)
    _raises(write_media(tmp_path / "dc.wav", "pcm_f32le", 16000, 1.0, signal=dc), "silent", "DC only")
    hum = dc + np.float32(1e-4) * np.sin(2 * np.pi * 440 * t).astype(np.float32)  # about -83 LUFS on the offset
    _raises(write_media(tmp_path / "dchum.wav", "pcm_f32le", 16000, 1.0, signal=hum), "silent", "DC offset of +0.5")
    tone = np.float32(0.1) * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    a = load_audio(write_media(tmp_path / "tone.wav", "pcm_f32le", 16000, 1.0, signal=np.stack([tone] * 2)))
    b = load_audio(write_media(tmp_path / "dctone.wav", "pcm_f32le", 16000, 1.0, signal=np.stack([tone + 0.3] * 2)))
    np.testing.assert_allclose(b - a, 0.3, atol=1e-6)  # speech on an offset still loads, untouched


def test_directory(tmp_path):
    _raises(tmp_path, "directory")


# ---------------------------------------------------------------------------------------------
# Loudness, speakers
# ---------------------------------------------------------------------------------------------


def test_loudness_short_clip():
    # pyloudnorm needs 400 ms; shorter clips are measured as one block.
    t = np.arange(int(0.2 * SR)) / SR
    x = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = loudness_normalize(x)
    assert y.dtype == np.float32
    assert abs(measure_loudness(y) - (-23.0)) < 0.05


def test_prepare_speakers_single():
    w = np.ones(100, np.float32)
    out = prepare_speakers(w)
    assert len(out.tracks) == 1 and np.array_equal(out.tracks[0], w) and np.array_equal(out.mix, w)


def test_prepare_speakers_para_pads_shorter():
    a, b = np.full(1000, 0.5, np.float32), np.full(600, 0.25, np.float32)
    out = prepare_speakers(a, b, "para")
    assert [t.shape[0] for t in out.tracks] == [1000, 1000]
    assert np.array_equal(out.tracks[0], a)
    assert np.array_equal(out.tracks[1][:600], b) and not out.tracks[1][600:].any()
    np.testing.assert_array_equal(out.mix, out.tracks[0] + out.tracks[1])
    assert out.mix.dtype == np.float32


def test_prepare_speakers_add_takes_turns():
    a, b = np.full(1000, 0.5, np.float32), np.full(600, 0.25, np.float32)
    out = prepare_speakers(a, b, "add")
    t1, t2 = out.tracks
    assert t1.shape[0] == t2.shape[0] == out.mix.shape[0] == 1600
    assert np.array_equal(t1[:1000], a) and not t1[1000:].any()
    assert not t2[:1000].any() and np.array_equal(t2[1000:], b)
    assert np.array_equal(out.mix, np.concatenate([a, b]))
    assert out.num_frames == num_video_frames(1600)


def test_prepare_speakers_missing_speaker_is_silence():
    b = np.full(600, 0.25, np.float32)
    para = prepare_speakers(None, b, "para")
    assert not para.tracks[0].any() and para.tracks[0].shape == b.shape
    add = prepare_speakers(None, b, "add")  # as the reference: silence of the other's length first
    assert add.mix.shape[0] == 1200 and np.array_equal(add.tracks[1][600:], b)
    with pytest.raises(ValueError, match="'para' or 'add'"):
        prepare_speakers(b, b, "mix")


def test_prepare_audio_two_files(tmp_path):
    p1 = write_media(tmp_path / "s1.wav", "pcm_s16le", 44100, 1.5)
    p2 = write_media(tmp_path / "s2.flac", "flac", 48000, 1.0)
    out = prepare_audio(p1, p2, "add")
    n1, n2 = int(1.5 * SR), SR
    assert out.mix.shape[0] == n1 + n2
    # each speaker normalised on its own to -23 LUFS, as the reference
    assert abs(measure_loudness(out.tracks[0][:n1]) + 23.0) < 0.05
    assert abs(measure_loudness(out.tracks[1][n1:]) + 23.0) < 0.05
    para = prepare_audio(p1, p2, "para")
    assert para.mix.shape[0] == n1
    single = prepare_audio(p1)
    assert len(single.tracks) == 1
    np.testing.assert_array_equal(single.mix, loudness_normalize(load_audio(p1)))


# ---------------------------------------------------------------------------------------------
# wav2vec2 features for any length
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_encoder():
    with torch.device("meta"):
        enc = AudioEncoder.from_config(TINY_WAV2VEC2)
    return randomize_(enc, seeded(5))


def speechish(seconds: float, seed: int = 0) -> np.ndarray:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    syl = np.sin(np.pi * ((4.1 * t) % 1.0)) ** 2 * (0.3 + 0.7 * (np.sin(2 * np.pi * t / 6.3) > -0.6))
    f0 = 2 * np.pi * (130 * t + 8 * np.sin(2 * np.pi * 0.7 * t))
    x = syl * (0.3 * np.sin(f0) + 0.15 * np.sin(2 * f0) + 0.08 * np.sin(3 * f0)) + 0.01 * rng.standard_normal(n)
    return x.astype(np.float32)


def test_features_short_audio_is_embed_waveform(tiny_encoder):
    x = speechish(7.3)
    ref = embed_waveform(x, tiny_encoder)
    out = audio_features(x, tiny_encoder, window_s=5, context_s=2)  # 182 frames <= 9 s: one pass
    assert out.device.type == "cpu" and out.shape == (num_video_frames(x.shape[0]), 3, 32)
    assert torch.equal(out, ref)
    assert torch.equal(audio_features(x, tiny_encoder, window_s=None), ref)
    assert audio_features(x, tiny_encoder, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_windowed_path_is_whole_track_up_to_attention(tiny_encoder):
    # With context covering the track, every window's transformer sees the whole track: only the
    # chunked conv features (GroupNorm statistics gathered in a first pass), whole-track input
    # normalisation and the global 50 Hz -> 25 fps index mapping are exercised. They must agree.
    x = speechish(23.7, seed=1)
    ref = embed_waveform(x, tiny_encoder)
    frames = ref.shape[0]
    for win in (37, 100, 250):
        out = windowed_features(x, tiny_encoder, win, frames, conv_chunk_s=3.0)
        assert out.shape == ref.shape
        err = (out - ref).abs().max().item() / ref.abs().max().item()
        assert err < 1e-5, (win, err)
    # window_s=None beyond the short cut: chunked conv + one transformer pass over everything.
    out = windowed_features(x, tiny_encoder, frames, 0, conv_chunk_s=2.0)
    assert (out - ref).abs().max().item() / ref.abs().max().item() < 1e-5


def test_windowed_long_audio_close():
    # 200 s with the default windows (120 s kept + 30 s context each side, spans shifted inwards
    # at the track's ends): 2 windows, each transformer pass sees 160 of the 200 s.
    # Bound from benchmarks/audio_windows.py: at these defaults, rel L2 2.7e-2 (tiny preset) and
    # 3.5e-2 (full architecture) on its harsher 10-minute speech-like track with long pauses
    # (random weights: diffuse attention, so the error is the span's statistics vs the whole
    # track's); this steadier signal measures about 7e-3.
    with torch.device("meta"):
        enc = AudioEncoder.from_config(TINY_WAV2VEC2, attn_implementation="sdpa")
    enc = randomize_(enc, seeded(5))
    x = speechish(200.0, seed=2)
    ref = embed_waveform(x, enc)
    out = audio_features(x, enc)
    assert out.shape == ref.shape == (5000, 3, 32)
    rel_l2 = ((out - ref).norm() / ref.norm()).item()
    max_rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel_l2 < 3e-2 and max_rel < 6e-2, (rel_l2, max_rel)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level package names imported at module level and inside functions."""
    import ast

    tree = ast.parse(path.read_text())
    top, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            if isinstance(node, ast.ImportFrom) and node.level:
                names = ["infinitetalk_dist"]
            target = top if node in tree.body else inner
            target.update(n.split(".")[0] for n in names)
    return top, inner


def test_windowing_imports_without_pyav_or_pyloudnorm():
    # The GPU image has neither: the windowed encoder (and the atomic writes the job store uses)
    # must import without them, and the benchmark needs only torch, numpy, transformers and our code.
    import subprocess
    import sys

    code = ("import sys; sys.modules['av'] = sys.modules['pyloudnorm'] = None; "
            "import infinitetalk_dist.models.wav2vec2_windows, infinitetalk_dist.media.atomic, "
            "infinitetalk_dist.farm.store")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    top, inner = _imports(REPO / "benchmarks" / "audio_windows.py")
    allowed = {"__future__", "argparse", "gc", "json", "math", "os", "resource", "subprocess", "sys", "time",
               "numpy", "torch", "transformers", "infinitetalk_dist"}
    assert top | inner <= allowed, (top | inner) - allowed
