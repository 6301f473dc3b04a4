"""write_video (studio conform deliverables): codecs, exact rates, VFR, the mix kept as is, errors."""

import wave
from fractions import Fraction

import av
import numpy as np
import pytest

from infinitetalk_dist.media import CODECS, MediaError, check_output, write_video
from tests.media_probe import probe

H, W = 48, 64
CONTAINER = {"h264": ".mp4", "hevc": ".mp4", "prores": ".mov", "ffv1": ".mkv"}
PIX_FMT = {"h264": "yuv420p", "hevc": "yuv420p10le", "prores": "yuv422p10le", "ffv1": "bgr0"}
RATES = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001)]


def _frames(n, size=(H, W)):
    """Smooth moving gradients (what lossy codecs keep well) plus a moving square."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for k in range(n):
        f = np.stack([x / w * 200 + 20 + k, y / h * 180 + 30, (x + y) / (w + h) * 150 + 60], -1)
        f[8:20, 4 + 3 * k:16 + 3 * k] = (230, 40, 40)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def _decode_video(path):
    """(codec, stored pix_fmt, average rate, stream time base, frames as RGB, frame times)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = (s.codec_context.name, s.codec_context.pix_fmt, s.average_rate, s.time_base)
        frames, times = [], []
        for f in c.decode(s):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(f.pts * f.time_base)
    return (*info, frames, times)


def _audio_streams(path):
    """Per audio stream: (codec, channels, rate, decoded [C, N] samples, decoded span in seconds)."""
    out = []
    with av.open(str(path)) as c:
        n_audio = len(c.streams.audio)
    for i in range(n_audio):
        with av.open(str(path)) as c:
            s = c.streams.audio[i]
            info = (s.codec_context.name, s.codec_context.channels, s.codec_context.sample_rate)
            chunks, start, end = [], None, None
            for f in c.decode(s):
                a = f.to_ndarray()
                chunks.append(a if f.format.is_planar else a.reshape(-1, info[1]).T)
                t0 = f.pts * f.time_base
                start = t0 if start is None else min(start, t0)
                end = t0 + Fraction(f.samples, f.sample_rate)
        out.append((*info, np.concatenate(chunks, 1), float(end - start)))
    return out


def _write_wav(path, channels, sr, seconds, width=2, seed=0):
    """A PCM WAV of noise; returns its samples as int ``[C, N]`` (24-bit ones in int32 units)."""
    n = int(sr * seconds)
    rng = np.random.default_rng(seed)
    bits = 8 * width
    a = rng.integers(-(1 << (bits - 2)), 1 << (bits - 2), (n, channels), dtype=np.int64)
    raw = a.astype("<i4").view(np.uint8).reshape(n, channels, 4)[:, :, :width].tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(sr)
        w.writeframes(raw)
    return a.T


def _source_with_two_tracks(path):
    """A source video: 5 frames of H.264 + a stereo 44.1 kHz and a mono 48 kHz audio stream."""
    with av.open(str(path), "w", format="matroska") as c:
        v = c.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        tracks = []
        for layout, sr in (("stereo", 44100), ("mono", 48000)):
            a = c.add_stream("flac", rate=sr)
            a.layout = layout
            tracks.append((a, layout, sr))
        for f in _frames(5):
            for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        for a, layout, sr in tracks:
            ch = 2 if layout == "stereo" else 1
            t = np.arange(sr // 2) / sr  # half a second: longer than the 5 frames at 24 fps
            samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            fr = av.AudioFrame.from_ndarray(np.repeat(samples, ch)[None], format="s16", layout=layout)
            fr.sample_rate, fr.pts = sr, 0
            for p in a.encode(fr):
                c.mux(p)
            for p in a.encode(None):
                c.mux(p)


# --- codecs, pixel formats, exact rates --------------------------------------------------------

@pytest.mark.parametrize("rate", RATES, ids=str)
@pytest.mark.parametrize("codec", CODECS)
def test_codec_pix_fmt_count_and_exact_rate(tmp_path, codec, rate):
    out = tmp_path / f"v{CONTAINER[codec]}"
    r = write_video(out, iter(_frames(5)), fps=rate, codec=codec)
    name, pix_fmt, avg, _, frames, _ = _decode_video(out)
    assert name == {"h264": "h264", "hevc": "hevc", "prores": "prores", "ffv1": "ffv1"}[codec]
    assert pix_fmt == PIX_FMT[codec]  # hevc/prores: 10-bit round-trips as 10-bit
    assert len(frames) == r.frames == 5 and avg == rate
    assert (r.width, r.height, r.codec, r.fps) == (W, H, codec, float(rate))
    assert r.duration == pytest.approx(5 / rate)


def test_ffv1_is_bit_exact_rgb_any_size(tmp_path):
    src = [f[:47, :63] for f in _frames(4)]  # odd sizes: ffv1 needs no padding
    r = write_video(tmp_path / "a.mkv", src, fps=25, codec="ffv1")
    frames = _decode_video(tmp_path / "a.mkv")[4]
    assert (r.width, r.height) == (63, 47) and len(frames) == 4
    for a, b in zip(src, frames):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("codec", ["h264", "hevc", "prores"])
def test_lossy_codecs_stay_close(tmp_path, codec):
    src = _frames(6)
    write_video(tmp_path / f"a{CONTAINER[codec]}", src, fps=24, codec=codec)
    frames = _decode_video(tmp_path / f"a{CONTAINER[codec]}")[4]
    assert len(frames) == 6
    for a, b in zip(src, frames):
        # ~2.3 of it is the chroma subsampling of the hard-edged red square, codec or not
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 4.0


@pytest.mark.parametrize("codec,size", [("h264", (48, 64)), ("prores", (47, 64)), ("hevc", (48, 64))])
def test_odd_sizes_padded_as_the_chroma_needs(tmp_path, codec, size):
    src = [f[:47, :63] for f in _frames(3)]
    r = write_video(tmp_path / f"a{CONTAINER[codec]}", src, fps=25, codec=codec)
    frames = _decode_video(tmp_path / f"a{CONTAINER[codec]}")[4]
    assert (r.height, r.width) == size and frames[0].shape[:2] == size
    assert np.abs(frames[0][:47, :63].astype(int) - src[0].astype(int)).mean() < 3.0


def test_crf_changes_h264_and_is_ignored_for_ffv1(tmp_path):
    write_video(tmp_path / "lo.mp4", _frames(4), fps=25, crf=10)
    write_video(tmp_path / "hi.mp4", _frames(4), fps=25, crf=40)
    assert (tmp_path / "lo.mp4").stat().st_size > (tmp_path / "hi.mp4").stat().st_size
    write_video(tmp_path / "a.mkv", _frames(2), fps=25, codec="ffv1", crf=99)  # no error
    with pytest.raises(ValueError, match="crf"):
        write_video(tmp_path / "b.mp4", _frames(2), fps=25, crf=99)


# --- variable frame rate -----------------------------------------------------------------------

@pytest.mark.parametrize("codec,ext", [("h264", ".mp4"), ("prores", ".mov"), ("ffv1", ".mkv"),
                                       ("hevc", ".mov"), ("h264", ".mkv")])
def test_vfr_timestamps_round_trip(tmp_path, codec, ext):
    ts = [0.0, 1001 / 24000, 0.1, 0.125, 0.2, 0.21, 0.35, 0.4]  # irregular, incl. a 10 ms gap
    sr = 48000
    out = tmp_path / f"a{ext}"
    r = write_video(out, _frames(len(ts)), fps=Fraction(24000, 1001), timestamps=ts, codec=codec,
                    audio=np.zeros(sr, np.float32), audio_sr=sr)
    *_, tb, frames, times = _decode_video(out)
    assert len(frames) == len(ts)
    for got, want in zip(times, ts):
        assert abs(float(got) - want) <= float(tb) / 2 + 1e-9
    end = ts[-1] + 1001 / 24000
    assert r.duration == pytest.approx(end, abs=1e-6)
    audio_span = _audio_streams(out)[0][4]
    assert abs(audio_span - end) <= 1024 / sr
    info = probe(out)  # readers see the whole picture: the last frame lasts 1/fps, not 0
    assert info["duration"] == pytest.approx(end, abs=1e-3)
    video = info["streams"][0]
    if video["duration"] is not None:  # MP4/MOV sample tables (Matroska keeps no stream length)
        assert video["start_time"] + video["duration"] == pytest.approx(end, abs=float(tb))


def test_vfr_late_start_and_nominal_rate_ticks(tmp_path):
    # starting at 0.5 s (an empty edit), on the 24000/1001 grid: stored exactly, tick for tick
    ts = [0.5 + k * 1001 / 24000 for k in (0, 1, 2, 4, 5)]
    out = tmp_path / "a.mov"
    write_video(out, _frames(len(ts)), fps=Fraction(24000, 1001), timestamps=ts, codec="prores")
    *_, tb, _, times = _decode_video(out)
    assert [t - times[0] for t in times] == [k * Fraction(1001, 24000) for k in (0, 1, 2, 4, 5)]
    assert abs(float(times[0]) - 0.5) <= float(tb) / 2


def test_vfr_timestamps_must_match_frames_and_increase(tmp_path):
    out = tmp_path / "a.mp4"
    for ts in ([0.0, 0.04], [0.0, 0.04, 0.08, 0.12, 0.16, 0.2]):  # too few, too many
        with pytest.raises(MediaError, match="timestamps"):
            write_video(out, _frames(4), fps=25, timestamps=ts)
    with pytest.raises(MediaError, match="strictly increasing"):
        write_video(out, _frames(3), fps=25, timestamps=[0.0, 0.04, 0.04])
    with pytest.raises(MediaError, match=">= 0"):
        write_video(out, _frames(2), fps=25, timestamps=[-0.04, 0.0])
    with pytest.raises(MediaError, match="millisecond"):  # fine for MP4's clock, not Matroska's
        write_video(tmp_path / "a.mkv", _frames(2), fps=25, codec="ffv1", timestamps=[0.0, 0.0004])
    assert list(tmp_path.iterdir()) == []


# --- audio: the mix kept as is -----------------------------------------------------------------

@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv"])
@pytest.mark.parametrize("channels,sr", [(2, 48000), (6, 48000), (2, 44100)])
def test_wav_mix_keeps_channels_and_rate(tmp_path, ext, channels, sr):
    _write_wav(tmp_path / "mix.wav", channels, sr, 0.5)
    r = write_video(tmp_path / f"a{ext}", _frames(5), fps=Fraction(24000, 1001), audio=tmp_path / "mix.wav")
    [(name, ch, rate, _, span)] = _audio_streams(tmp_path / f"a{ext}")
    assert name == {".mp4": "aac", ".mov": "pcm_s24le", ".mkv": "flac"}[ext]
    assert (ch, rate) == (channels, sr)
    assert abs(span - r.duration) <= 1024 / sr  # cut to the video, within one audio frame
    assert r.audio_trimmed and r.audio_padded == 0


@pytest.mark.parametrize("ext", [".mov", ".mkv"])
@pytest.mark.parametrize("width", [2, 3])
def test_lossless_containers_carry_the_samples_exactly(tmp_path, ext, width):
    want = _write_wav(tmp_path / "mix.wav", 6, 48000, 0.5, width=width, seed=3)
    write_video(tmp_path / f"a{ext}", _frames(5), fps=25, audio=tmp_path / "mix.wav")
    [(_, _, _, got, _)] = _audio_streams(tmp_path / f"a{ext}")
    n = 48000 * 5 // 25
    assert got.shape == (6, n)
    scale = 1 << (32 - 8 * width) if got.dtype == np.int32 else 1 << (16 - 8 * width)
    np.testing.assert_array_equal(got.astype(np.int64), want[:, :n] * scale)


def test_int16_stereo_array_audio(tmp_path):
    sr = 44100
    a = (np.sin(np.arange(sr) / 7.0)[:, None] * [8000, -8000]).astype(np.int16)  # [N, 2]
    r = write_video(tmp_path / "a.mkv", _frames(5), fps=25, audio=a, audio_sr=sr)
    [(name, ch, rate, got, _)] = _audio_streams(tmp_path / "a.mkv")
    assert (name, ch, rate) == ("flac", 2, sr) and r.audio_trimmed
    n = sr * 5 // 25
    np.testing.assert_array_equal(got[:, :n].astype(np.int64) >> 16, a[:n].T)  # lossless


@pytest.mark.parametrize("ext", [".mp4", ".mov", ".mkv"])
def test_short_array_audio_padded_to_the_video(tmp_path, ext):
    sr = 16000
    t = np.arange(sr // 10) / sr  # 0.1 s under 0.24 s of video
    r = write_video(tmp_path / f"a{ext}", _frames(6), fps=25, audio=0.3 * np.sin(2 * np.pi * 300 * t),
                    audio_sr=sr)
    [(_, ch, rate, _, span)] = _audio_streams(tmp_path / f"a{ext}")
    assert (ch, rate) == (1, sr) and r.audio and not r.audio_trimmed
    assert r.audio_padded == pytest.approx(0.14) and r.audio_duration == pytest.approx(0.24)
    assert abs(span - 0.24) <= 1024 / sr


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_extra_audio_adds_every_source_track(tmp_path, ext):
    _source_with_two_tracks(tmp_path / "source.mkv")
    _write_wav(tmp_path / "mix.wav", 6, 48000, 0.1)  # shorter than the video: padded
    r = write_video(tmp_path / f"a{ext}", _frames(5), fps=24, audio=tmp_path / "mix.wav",
                    extra_audio=tmp_path / "source.mkv")
    tracks = _audio_streams(tmp_path / f"a{ext}")
    assert [(ch, sr) for _, ch, sr, _, _ in tracks] == [(6, 48000), (2, 44100), (1, 48000)]
    assert {name for name, *_ in tracks} == {".mp4": {"aac"}, ".mkv": {"flac"}}[ext]
    for _, _, sr, _, span in tracks:
        assert abs(span - 5 / 24) <= 1024 / sr
    assert r.extra_audio_tracks == 2 and r.audio_padded > 0


def test_extra_audio_without_main_audio(tmp_path):
    _source_with_two_tracks(tmp_path / "source.mkv")
    r = write_video(tmp_path / "a.mov", _frames(3), fps=25, codec="prores",
                    extra_audio=tmp_path / "source.mkv")
    assert not r.audio and r.extra_audio_tracks == 2
    tracks = [(n, ch) for n, ch, *_ in _audio_streams(tmp_path / "a.mov")]
    assert tracks == [("pcm_s24le", 2), ("pcm_s24le", 1)]


def test_audio_file_without_audio_is_refused(tmp_path):
    write_video(tmp_path / "silent.mkv", _frames(2), fps=25, codec="ffv1")
    with pytest.raises(MediaError, match="no audio stream"):
        write_video(tmp_path / "a.mp4", _frames(2), fps=25, audio=tmp_path / "silent.mkv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silent.mkv"]
    r = write_video(tmp_path / "b.mp4", _frames(2), fps=25, extra_audio=tmp_path / "silent.mkv")
    assert r.extra_audio_tracks == 0 and not r.audio  # a silent source adds no tracks


def test_mp4_refuses_a_rate_aac_lacks(tmp_path):
    _write_wav(tmp_path / "odd.wav", 2, 37000, 0.2)
    with pytest.raises(MediaError, match="37000 Hz"):
        write_video(tmp_path / "a.mp4", _frames(3), fps=25, audio=tmp_path / "odd.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.wav"]
    write_video(tmp_path / "a.mkv", _frames(3), fps=25, audio=tmp_path / "odd.wav")  # FLAC can
    assert _audio_streams(tmp_path / "a.mkv")[0][2] == 37000


# --- refusals and atomicity ---------------------------------------------------------------------

@pytest.mark.parametrize("name,codec,err,needs", [
    ("a.mp4", "prores", MediaError, ".mov or .mkv"),
    ("a.mp4", "ffv1", MediaError, "needs .mkv"),
    ("a.avi", "hevc", MediaError, ".mp4, .mov or .mkv"),
    ("a", "h264", MediaError, ".mp4, .mov or .mkv"),
    ("a.mp4", "vp9", ValueError, "h264, hevc, prores, ffv1"),
])
def test_container_mismatch_is_one_clear_error_before_any_work(tmp_path, name, codec, err, needs):
    pulled = []

    def frames():
        pulled.append(1)
        yield from _frames(2)

    with pytest.raises(err, match=needs) as e:
        write_video(tmp_path / name, frames(), fps=25, codec=codec)
    assert "\n" not in str(e.value) and not pulled
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(err, match=needs):
        check_output(tmp_path / name, codec)


def test_check_output_accepts_every_listed_pair(tmp_path):
    from infinitetalk_dist.media.encode import CONTAINERS

    for ext, codecs in CONTAINERS.items():
        for codec in codecs:
            check_output(tmp_path / f"a{ext.upper()}", codec)  # the extension's case doesn't matter


@pytest.mark.parametrize("codec", CODECS)
def test_failing_frames_iterator_leaves_no_file(tmp_path, codec):
    def frames():
        yield from _frames(3)
        raise RuntimeError("render died")

    _write_wav(tmp_path / "mix.wav", 2, 48000, 0.5)
    out = tmp_path / f"a{CONTAINER[codec]}"
    with pytest.raises(RuntimeError, match="render died"):
        write_video(out, frames(), fps=25, codec=codec, audio=tmp_path / "mix.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.wav"]


def test_failure_keeps_the_previous_file(tmp_path):
    out = tmp_path / "a.mkv"
    write_video(out, _frames(2), fps=25, codec="ffv1")
    before = out.read_bytes()
    with pytest.raises(ValueError, match="frame 1"):
        write_video(out, [_frames(1)[0], np.zeros((H, W), np.uint8)], fps=25, codec="ffv1")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.mkv"]


@pytest.mark.parametrize("codec", ["h264", "prores", "ffv1"])
def test_same_input_same_bytes(tmp_path, codec):
    """Re-renders must be byte-identical (Matroska's random ids are turned off)."""
    ext = ".mkv" if codec != "prores" else ".mov"
    sr = 48000
    for name in ("a", "b"):
        write_video(tmp_path / f"{name}{ext}", _frames(6), fps=Fraction(24000, 1001), codec=codec,
                    audio=np.zeros(sr // 4, np.float32), audio_sr=sr)
    assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
