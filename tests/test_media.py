"""Media I/O: MP4 writing (round trip, audio length, atomicity), VideoSource timing, bad inputs, samples."""

import os
import warnings
import wave
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from infinitetalk_dist.media import MediaError, VideoSource, load_audio, read_image, to_uint8_frames, write_mp4
from infinitetalk_dist.samples import face_image, speech_like, write_demo_inputs
from tests.media_probe import probe

# --- helpers ---------------------------------------------------------------------------------

BITS = 8  # frame index drawn as 8 black/white 8x8 blocks along the top edge
SRC_SIZE = (48, 80)  # H, W of the synthetic source videos


def _indexed_frame(k: int, size=SRC_SIZE) -> np.ndarray:
    img = np.full((*size, 3), 96, np.uint8)
    for b in range(BITS):
        img[:8, 8 * b + 8:8 * b + 16] = 255 if (k >> b) & 1 else 0
    img[-8:, :8] = (255, 0, 0)  # a red marker in the bottom-left corner, for orientation
    return img


def _read_index(frame: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if frame[2:6, 8 * b + 10:8 * b + 14].mean() > 128)


def _write_source(path, n=None, fps=25, pts_ms=None, gop=10, rotation=None, faststart=True):
    """An H.264 mp4 whose frame k shows k in binary; constant ``fps`` or explicit ms timestamps."""
    out = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"} if faststart else {})
    vs = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "ultrafast"})
    vs.height, vs.width = SRC_SIZE
    vs.pix_fmt = "yuv420p"
    vs.codec_context.gop_size = gop
    if pts_ms is not None:
        vs.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        vs.set_display_rotation(rotation)
    for k in range(n if pts_ms is None else len(pts_ms)):
        f = av.VideoFrame.from_ndarray(_indexed_frame(k), format="rgb24")
        f.pts = k if pts_ms is None else pts_ms[k]
        if pts_ms is not None:
            f.time_base = Fraction(1, 1000)
        for p in vs.encode(f):
            out.mux(p)
    for p in vs.encode(None):
        out.mux(p)
    out.close()


def _moving_frames(n, size=(96, 128)):
    base = face_image(size, seed=1)
    for i in range(n):
        f = base.copy()
        f[10:30, 4 + i:24 + i] = (230, 230, 40)
        yield f


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def _listing(folder):
    return sorted(os.listdir(folder))


# --- write_mp4 -------------------------------------------------------------------------------


def test_round_trip_video_and_audio(tmp_path):
    path = tmp_path / "out.mp4"
    frames = list(_moving_frames(40))
    audio = speech_like(2.5, 16000, seed=3)  # longer than the 1.6 s video: trimmed
    info = write_mp4(path, iter(frames), fps=25, audio=audio, audio_sr=16000)
    assert (info.frames, info.width, info.height, info.audio) == (40, 128, 96, True)
    assert info.duration == pytest.approx(1.6) and info.audio_duration == pytest.approx(1.6)
    assert info.audio_trimmed and info.audio_padded == 0
    assert _listing(tmp_path) == ["out.mp4"]  # no temp file left

    p = probe(path, decode=True)
    v, a = p["streams"][0], p["streams"][1]
    assert (v["type"], v["codec"], v["pix_fmt"]) == ("video", "h264", "yuv420p")
    assert (a["type"], a["codec"], a["profile"]) == ("audio", "aac", "LC")
    assert p["frames"] == 40 and v["decoded_frames"] == 40 and v["frames"] == 40
    assert p["fps"] == 25
    assert v["decode_errors"] == 0 and a["decode_errors"] == 0  # plays: every packet decodes
    assert abs(p["audio_duration"] - p["video_duration"]) <= 1 / 25
    assert abs(a["decoded_duration"] - v["decoded_duration"]) <= 1 / 25  # by decoded timestamps too
    assert a["decoded_samples"] >= 1.6 * 48000

    with av.open(str(path)) as c:  # independent decode with plain PyAV
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == 40
    # RGB is bounded by 4:2:0 chroma on the cartoon's saturated edges (31.4 dB even at crf 0);
    # luma (BT.709 weights) shows the crf 18 coding loss: ~43 dB
    assert min(_psnr(x, y) for x, y in zip(decoded, frames)) > 29
    luma = np.array([0.2126, 0.7152, 0.0722])
    assert min(_psnr(x @ luma, y @ luma) for x, y in zip(decoded, frames)) > 40


def test_short_stereo_audio_is_padded(tmp_path):
    path = tmp_path / "pad.mp4"
    sr = 22050
    stereo = np.stack([speech_like(0.5, sr, 1), speech_like(0.5, sr, 2)], axis=1)  # [N, 2]
    info = write_mp4(path, np.stack(list(_moving_frames(25))), audio=stereo, audio_sr=sr, preset="ultrafast")
    assert info.frames == 25 and not info.audio_trimmed
    assert info.audio_padded == pytest.approx(0.5, abs=1e-3)
    p = probe(path, decode=True)
    a = p["streams"][1]
    assert a["channels"] == 2 and a["sample_rate"] == 48000
    assert abs(p["audio_duration"] - 1.0) <= 1 / 25 and abs(a["decoded_duration"] - 1.0) <= 1 / 25


def test_audio_from_file_and_tensor_frames(tmp_path):
    _, wav = write_demo_inputs(tmp_path / "demo", seconds=1.0, size=(64, 64))
    video = torch.rand(3, 30, 64, 96) * 2 - 1
    path = tmp_path / "t.mp4"
    info = write_mp4(path, to_uint8_frames(video), audio=wav, preset="ultrafast")
    assert info.frames == 30 and info.audio_padded == pytest.approx(0.2, abs=1e-3)
    p = probe(path)
    assert p["audio_codec"] == "aac" and p["frames"] == 30
    assert abs(p["audio_duration"] - p["video_duration"]) <= 1 / 25
    # a uint8 [T, H, W, 3] tensor is accepted as is
    info = write_mp4(tmp_path / "u.mp4", torch.zeros(5, 32, 32, 3, dtype=torch.uint8), preset="ultrafast")
    assert info.frames == 5


_HEAP_SCRIPT = """
import hashlib, sys
import numpy as np
import infinitetalk_dist.media as M
t = np.arange(44)[:, None, None]; y = np.arange(64)[None, :, None]; x = np.arange(64)[None, None, :]
v = 128 + 60 * np.sin((x + 2 * t) / 7.0) * np.cos((y - t) / 9.0)
v = v + np.random.default_rng(0).normal(0, 6, v.shape)
frames = np.clip(np.stack([v, np.roll(v, 3, 2), 255 - v], -1), 0, 255).astype(np.uint8)
M.write_mp4(sys.argv[1], frames, fps=25, crf=12)
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
"""


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="glibc/Linux only (MALLOC_PERTURB_)")
def test_h264_bytes_do_not_depend_on_heap_contents(tmp_path):
    """The farm needs encodes to be a function of the frames: x264's AVX-512 lookahead reads
    uninitialised memory (x264_params caps it at AVX2). MALLOC_PERTURB_ fills fresh heap
    blocks with different bytes in each run; the file must not change."""
    import subprocess
    import sys

    digests = set()
    for fill in (0, 1, 85, 170):
        env = {**os.environ, "MALLOC_PERTURB_": str(fill)}
        run = subprocess.run([sys.executable, "-c", _HEAP_SCRIPT, str(tmp_path / f"{fill}.mp4")], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        digests.add(run.stdout.strip())
    assert len(digests) == 1, f"H.264 bytes depend on heap contents: {len(digests)} different files"


def test_to_uint8_frames_values():
    v = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0, 0.5]).view(1, 1, 1, 6).expand(3, 2, 1, 6)
    frames = list(to_uint8_frames(v))
    assert len(frames) == 2 and frames[0].shape == (1, 6, 3) and frames[0].dtype == np.uint8
    assert frames[0][0, :, 0].tolist() == [0, 0, 128, 255, 255, 191]  # 127.5 -> 128, 191.25 -> 191
    assert next(to_uint8_frames(v, truncate=True))[0, :, 0].tolist() == [0, 0, 127, 255, 255, 191]
    assert np.array_equal(next(to_uint8_frames(v.numpy())), frames[0])
    with pytest.raises(ValueError, match="NaN"):
        list(to_uint8_frames(torch.full((3, 1, 2, 2), float("nan"))))
    with pytest.raises(ValueError, match=r"\[3, T, H, W\]"):
        list(to_uint8_frames(torch.zeros(2, 3, 4, 4)))


@pytest.mark.parametrize("mode,size", [("pad", (34, 50)), ("crop", (32, 48))])
def test_odd_sizes(tmp_path, mode, size):
    frames = np.random.default_rng(0).integers(0, 255, (3, 33, 49, 3), dtype=np.uint8)
    info = write_mp4(tmp_path / "o.mp4", frames, odd_size=mode, preset="ultrafast")
    assert (info.height, info.width) == size
    assert probe(tmp_path / "o.mp4")["streams"][0]["height"] == size[0]
    with pytest.raises(MediaError, match="odd"):
        write_mp4(tmp_path / "e.mp4", frames, odd_size="error")
    assert not (tmp_path / "e.mp4").exists()


def test_atomic_write_on_failure(tmp_path):
    def broken():
        yield from _moving_frames(3)
        raise RuntimeError("renderer died")

    path = tmp_path / "fail.mp4"
    with pytest.raises(RuntimeError, match="renderer died"):
        write_mp4(path, broken(), audio=speech_like(1.0), audio_sr=16000)
    assert _listing(tmp_path) == []  # neither the file nor the hidden temp

    # an existing file is replaced only on success
    path.write_bytes(b"previous")
    bad = [np.zeros((32, 32, 3), np.uint8)] * 3 + [np.zeros((16, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 3 has shape"):
        write_mp4(path, bad)
    assert path.read_bytes() == b"previous" and _listing(tmp_path) == ["fail.mp4"]
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(path, [np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(MediaError, match="no frames"):
        write_mp4(path, [])
    with pytest.raises(MediaError, match="does not exist"):
        write_mp4(tmp_path / "nodir" / "x.mp4", [np.zeros((32, 32, 3), np.uint8)])
    with pytest.raises(MediaError, match="fail.mp4: not a readable media file"):
        write_mp4(tmp_path / "x.mp4", [np.zeros((32, 32, 3), np.uint8)], audio=path)  # not media at all
    Image.new("RGB", (8, 8)).save(tmp_path / "pic.png")
    with pytest.raises(MediaError, match="pic.png: has no audio stream"):
        write_mp4(tmp_path / "x.mp4", [np.zeros((32, 32, 3), np.uint8)], audio=tmp_path / "pic.png")
    (tmp_path / "pic.png").unlink()
    assert _listing(tmp_path) == ["fail.mp4"]
    write_mp4(path, _moving_frames(2), preset="ultrafast")
    assert probe(path)["frames"] == 2 and _listing(tmp_path) == ["fail.mp4"]


# --- VideoSource -----------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [24, 30, 60])
def test_video_source_maps_output_frames_by_timestamp(tmp_path, fps):
    path = tmp_path / f"src{fps}.mp4"
    _write_source(path, n=2 * fps, fps=fps)
    with VideoSource(path) as v:
        assert (v.fps, v.frame_count, v.duration, v.size) == (fps, 2 * fps, 2.0, SRC_SIZE)
        # output frame i at 25 fps shows the source frame on screen at i / 25 s
        for i in range(50):
            expected = i * fps // 25
            assert v.source_index_for_output(i) == expected
            assert _read_index(v.frame_for_output_index(i)) == expected, i
        # random access backwards and forwards (seeks across key frames every 10 frames)
        for k in (2 * fps - 1, 3, 2 * fps // 2 + 1, 0, 17):
            assert _read_index(v.frame(k)) == k
        assert _read_index(v.frame(v.source_index_at_time(1.0))) == fps
        with pytest.raises(IndexError, match="past the end"):
            v.frame_for_output_index(50)
        assert _read_index(v.frame_for_output_index(60, clamp=True)) == 2 * fps - 1
        assert [_read_index(f) for f in v] == list(range(2 * fps))


def test_video_source_variable_frame_rate(tmp_path):
    pts = [0, 40, 50, 100, 180, 200, 260, 300, 310, 400]  # ms
    path = tmp_path / "vfr.mp4"
    _write_source(path, pts_ms=pts)
    v = VideoSource(path)
    assert v.frame_count == 10 and np.allclose(v.timestamps, np.array(pts) / 1000)
    for t, k in [(0, 0), (0.039, 0), (0.04, 1), (0.045, 1), (0.05, 2), (0.099, 2), (0.1, 3), (0.2, 5),
                 (0.305, 7), (0.41, 9)]:
        assert v.source_index_at_time(t) == k
        assert _read_index(v.frame(v.source_index_at_time(t))) == k
    assert [v.source_index_for_output(i) for i in range(5)] == [0, 1, 2, 3, 3]  # 0, .04, .08, .12, .16 s


@pytest.mark.parametrize("kind", ["cfr", "vfr"])
def test_video_source_with_shipped_index_does_not_decode_the_stream(tmp_path, monkeypatch, kind):
    import pickle

    path = tmp_path / f"{kind}.mp4"
    if kind == "cfr":
        _write_source(path, n=60, fps=30)
    else:
        _write_source(path, pts_ms=[0, 40, 50, 100, 180, 200, 260, 300, 310, 400])
    built = VideoSource(path)
    index = pickle.loads(pickle.dumps(built.index))  # as sent to another process
    wanted = [0, 7, 3, 11, 40, 24]
    expected = [built.frame_for_output_index(i, clamp=True).tobytes() for i in wanted]

    def no_rebuild(self):
        raise AssertionError("the whole stream was decoded again")

    monkeypatch.setattr(VideoSource, "_build_index", no_rebuild)
    with VideoSource(path, index=index) as v:
        assert [v.frame_for_output_index(i, clamp=True).tobytes() for i in wanted] == expected
        assert (v.frame_count, v.duration, v.fps) == (built.frame_count, built.duration, built.fps)
        assert np.array_equal(v.timestamps, built.timestamps) and v.index is index
    with pytest.raises(AssertionError, match="decoded again"):
        VideoSource(path).frame_count


def test_video_source_rotation(tmp_path):
    path = tmp_path / "rot.mp4"
    _write_source(path, n=3, rotation=-90)  # phone portrait: display turned 90 degrees clockwise
    v = VideoSource(path)
    assert v.rotation == 270 and v.size == (SRC_SIZE[1], SRC_SIZE[0])
    f = v.frame(0)
    assert f.shape == (SRC_SIZE[1], SRC_SIZE[0], 3)
    assert f[2:6, 2:6, 0].mean() > 200 and f[2:6, 2:6, 1].mean() < 60  # bottom-left marker now top-left
    assert not f.flags.writeable


def test_video_source_truncated_decodes_what_exists(tmp_path):
    path = tmp_path / "full.mp4"
    _write_source(path, n=60, gop=250)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])  # faststart: the index survives, the data does not
    v = VideoSource(cut)
    with pytest.warns(UserWarning, match="damaged"):
        n = v.frame_count
    assert 0 < n < 60 and v.header_frames == 60
    assert _read_index(v.frame(n - 1)) == n - 1 and _read_index(v.frame(0)) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the damage was reported where the index was built
        again = VideoSource(cut, index=v.index)
        assert (again.frame_count, again.decode_errors) == (n, v.decode_errors)
    nofast = tmp_path / "nofast.mp4"
    _write_source(nofast, n=10, faststart=False)
    nofast.write_bytes(nofast.read_bytes()[:-200])  # the index (moov atom, at the end) is damaged
    with pytest.raises(MediaError, match="nofast.mp4: video stream \\(h264\\) has no decodable frames"):
        VideoSource(nofast)
    nofast.write_bytes(nofast.read_bytes()[:1000])  # ... or gone
    with pytest.raises(MediaError, match="nofast.mp4: not a readable media file"):
        VideoSource(nofast)


def test_video_source_bad_inputs(tmp_path):
    with pytest.raises(MediaError, match="missing.mp4: no such file"):
        VideoSource(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        VideoSource(tmp_path / "empty.mp4")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MediaError, match="noise.mp4: not a readable media file"):
        VideoSource(tmp_path / "noise.mp4")
    _, wav = write_demo_inputs(tmp_path, seconds=0.3, size=(32, 32))
    with pytest.raises(MediaError, match="speech.wav: has no video stream: audio only"):
        VideoSource(wav)
    m4a = tmp_path / "voice.m4a"
    write_mp4(tmp_path / "av.mp4", _moving_frames(3), audio=wav, preset="ultrafast")
    with av.open(str(tmp_path / "av.mp4")) as src, av.open(str(m4a), "w", format="mp4") as dst:
        a = dst.add_stream_from_template(src.streams.audio[0])
        for p in src.demux(src.streams.audio[0]):
            if p.dts is not None:
                p.stream = a
                dst.mux(p)
    with pytest.raises(MediaError, match="voice.m4a: has no video stream"):
        VideoSource(m4a)
    with pytest.raises(MediaError, match="still image"):
        VideoSource(tmp_path / "face.png")
    with pytest.raises(MediaError, match="no such file"):
        probe(tmp_path / "missing.mp4")


def test_atomic_write(tmp_path):
    import fsspec

    from infinitetalk_dist.media import atomic_write

    final = tmp_path / "a.txt"
    with atomic_write(final) as one, atomic_write(final) as two:
        assert one != two and os.path.dirname(one) == str(tmp_path)  # concurrent writers don't share
        assert os.path.basename(one).startswith(".a.txt.") and one.endswith(".part")
        assert final.exists() is False and os.path.exists(one) and os.path.exists(two)
        open(two, "w").write("two")
        open(one, "w").write("one")
    assert final.read_text() == "one" and _listing(tmp_path) == ["a.txt"]  # the last rename wins
    with pytest.raises(RuntimeError, match="died"):
        with atomic_write(final) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("died")
    assert final.read_text() == "one" and _listing(tmp_path) == ["a.txt"]

    fs = fsspec.filesystem("memory")
    root = f"/itd-atomic-{os.getpid()}"
    try:
        with atomic_write(f"{root}/b.txt", fs=fs) as tmp:
            assert tmp.startswith(f"{root}/.b.txt.") and not fs.exists(tmp)
            fs.pipe_file(tmp, b"remote")
        assert fs.cat_file(f"{root}/b.txt") == b"remote" and fs.ls(root, detail=False) == [f"{root}/b.txt"]
        with pytest.raises(OSError, match="full"):
            with atomic_write(f"{root}/b.txt", fs=fs) as tmp:
                fs.pipe_file(tmp, b"partial")
                raise OSError("disk full")
        assert fs.cat_file(f"{root}/b.txt") == b"remote" and fs.ls(root, detail=False) == [f"{root}/b.txt"]
    finally:
        fs.rm(root, recursive=True)


def test_iter_video_frames_rejects_damage(tmp_path):
    from infinitetalk_dist.media import iter_video_frames

    path = tmp_path / "w.mp4"
    _write_source(path, n=30, gop=250)
    assert [_read_index(f) for f in iter_video_frames(path)] == list(range(30))
    data = bytearray(path.read_bytes())
    at = data.find(b"mdat") + len(data) // 10
    data[at:at + 2000] = bytes(2000)  # zeros over some frames: packets the decoder rejects
    (tmp_path / "bad.mp4").write_bytes(data)
    with pytest.raises(MediaError, match="bad.mp4: decoding failed .undecodable packet"):
        list(iter_video_frames(tmp_path / "bad.mp4"))
    with pytest.raises(MediaError, match="nope.mp4: no such file"):
        list(iter_video_frames(tmp_path / "nope.mp4"))


# --- read_image ------------------------------------------------------------------------------


def test_read_image(tmp_path):
    img = face_image((40, 30), seed=2)
    Image.fromarray(img).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), img)
    Image.fromarray(img).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(img).convert("L").save(tmp_path / "grey.png")
    assert read_image(tmp_path / "rgba.png").shape == (40, 30, 3)
    assert read_image(tmp_path / "grey.png").shape == (40, 30, 3)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(img).save(tmp_path / "o.jpg", exif=exif, quality=95)
    turned = read_image(tmp_path / "o.jpg")
    assert turned.shape == (30, 40, 3)
    assert _psnr(turned, np.rot90(img, -1)) > 25


def test_read_image_errors(tmp_path):
    with pytest.raises(MediaError, match="nope.png: no such file"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(np.random.default_rng(1).bytes(2000))
    with pytest.raises(MediaError, match="junk.png: not a recognised image"):
        read_image(tmp_path / "junk.png")
    Image.fromarray(face_image((64, 64))).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="cut.png: corrupt or truncated"):
        read_image(tmp_path / "cut.png")
    Image.new("RGB", (200, 10)).save(tmp_path / "strip.png")
    with pytest.raises(MediaError, match=r"strip.png: aspect ratio 200x10 \(20.0:1\)"):
        read_image(tmp_path / "strip.png")
    assert read_image(tmp_path / "strip.png", max_aspect=None).shape == (10, 200, 3)
    with pytest.raises(MediaError, match="directory"):
        read_image(tmp_path)


# --- samples ---------------------------------------------------------------------------------


def test_samples_are_deterministic_and_plausible(tmp_path):
    a, b = face_image((120, 80), seed=4), face_image((120, 80), seed=4)
    assert a.shape == (120, 80, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, face_image((120, 80), seed=5))
    assert a.std() > 20  # not a flat picture

    s = speech_like(2.0, 16000, seed=7)
    assert s.dtype == np.float32 and s.shape == (32000,)
    assert s.tobytes() == speech_like(2.0, 16000, seed=7).tobytes()
    assert s.tobytes() != speech_like(2.0, 16000, seed=8).tobytes()
    rms_db = 20 * np.log10(np.sqrt(np.mean(s.astype(np.float64) ** 2)))
    assert -21 < rms_db < -19 and np.abs(s).max() < 1
    frame_rms = np.sqrt(np.mean(s[: 32000 // 400 * 400].reshape(-1, 400) ** 2, axis=1))  # 25 ms frames
    assert (frame_rms < 0.01).mean() > 0.05 and (frame_rms > 0.05).mean() > 0.3  # pauses and syllables

    i1, w1 = write_demo_inputs(tmp_path / "one", seconds=1.0, size=(64, 48))
    i2, w2 = write_demo_inputs(tmp_path / "two", seconds=1.0, size=(64, 48))
    assert i1.read_bytes() == i2.read_bytes() and w1.read_bytes() == w2.read_bytes()
    assert np.array_equal(read_image(i1), face_image((64, 48)))
    with wave.open(str(w1)) as wf:
        assert (wf.getnchannels(), wf.getframerate(), wf.getsampwidth()) == (1, 16000, 2)
        assert wf.getnframes() == 16000


def _aac_71(path, seconds=1.0, sr=48000):
    """A 7.1 AAC track (decodes to planar float: 8 planes), tones of a different level per channel."""
    import av

    t = np.arange(int(seconds * sr)) / sr
    x = (np.sin(2 * np.pi * 440 * t)[None] * np.linspace(0.1, 0.4, 8)[:, None]).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = "7.1"
        for i in range(0, x.shape[1], 1024):  # packed frames: PyAV cannot build planar ones of 8 channels
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 1024].T.reshape(1, -1)), format="flt",
                                           layout="7.1")
            f.sample_rate = sr
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize("channels", [1, 2, 6, 8, 12, 16])
def test_any_channel_count_is_averaged_to_mono(tmp_path, channels):
    """8+ channel audio used to kill the process (PyAV's to_ndarray of a planar frame): every
    channel count is averaged exactly as before, in packed form."""
    import wave

    sr = 16000
    x = (np.random.default_rng(channels).standard_normal((sr, channels)) * 3000).astype(np.int16)
    path = tmp_path / f"ch{channels}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels), w.setsampwidth(2), w.setframerate(sr), w.writeframes(x.tobytes())
    np.testing.assert_array_equal(load_audio(path), x.astype(np.float32).mean(axis=1) / 32768)


def test_planar_71_track_loads_and_is_carried(tmp_path):
    from infinitetalk_dist.media import write_video

    src = _aac_71(tmp_path / "mix71.m4a")
    assert load_audio(src).shape[0] == pytest.approx(16000, abs=400)
    frames = [np.zeros((16, 16, 3), np.uint8)] * 25
    write_video(tmp_path / "a.mkv", frames, fps=25, audio=src)  # FLAC keeps the 8 channels
    import av

    with av.open(str(tmp_path / "a.mkv")) as c:
        assert c.streams.audio[0].codec_context.channels == 8
