"""Where the output goes, checked before any model is built: never over an input (the output, or
a farm job's store), never a folder, never a place that cannot take a file; a missing folder is made."""

from __future__ import annotations

import pytest

from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.media import write_mp4
from infinitetalk_dist.samples import face_image, speech_like, write_demo_inputs

FAST = ["sampler.steps=1", "sampler.frame_num=9", "sampler.motion_frame=1", "--no-progress"]


@pytest.fixture()
def inputs(tmp_path, monkeypatch):
    import infinitetalk_dist.pipeline.generate as gen

    def no_models(*a, **k):
        raise AssertionError("models were built before the destination was checked")

    monkeypatch.setattr(gen, "replica_runtime", no_models)
    image, audio = write_demo_inputs(tmp_path / "in", seconds=0.5)
    clip = tmp_path / "in" / "clip.mp4"
    write_mp4(clip, [face_image((64, 64), seed=1)] * 12, fps=25, audio=speech_like(0.5), audio_sr=16000)
    return image, audio, clip


def _refused(capsys, argv, match):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err


def test_an_output_or_store_that_is_an_input_is_refused(inputs, tmp_path, capsys):
    image, audio, clip = inputs
    before = clip.read_bytes()
    _refused(capsys, ["generate", "--video", str(clip), "--audio", str(audio), "-o", str(clip), *FAST],
             "is the input")
    _refused(capsys, ["generate", "--image", str(image), "--audio", str(clip), "-o", str(clip), *FAST],
             "is the input")
    _refused(capsys, ["run", "--video", str(clip), "--audio", str(audio), "-o", str(tmp_path / "film.mp4"),
                      f"farm.store={clip}", *FAST], "job store")
    assert clip.read_bytes() == before


def test_unusable_places_fail_before_work_and_a_missing_folder_is_made(inputs, tmp_path, capsys, monkeypatch):
    image, audio, _ = inputs
    args = ["--image", str(image), "--audio", str(audio), *FAST]
    (tmp_path / "taken.mp4").mkdir()
    _refused(capsys, ["generate", *args, "-o", str(tmp_path / "taken.mp4")], "is a folder")
    (tmp_path / "file").write_text("x")
    _refused(capsys, ["generate", *args, "-o", str(tmp_path / "file" / "out.mp4")], "cannot write in")
    _refused(capsys, ["run", *args, "-o", str(tmp_path / "file" / "film.mp4")], "cannot write in")
    monkeypatch.undo()  # now render for real: the folders are made
    out = tmp_path / "new" / "deeper" / "out.mp4"
    assert main(["generate", *args, "-o", str(out)]) == 0
    assert out.stat().st_size > 0 and not list(out.parent.glob("*.probe"))


def test_random_14b_weights_are_refused_where_they_cannot_fit(inputs, tmp_path, capsys, monkeypatch):
    """--preset 14b without --weights used to fill host memory until the OOM killer ended it."""
    import infinitetalk_dist.pipeline.runtime as rt

    monkeypatch.undo()  # the models may be built (the tiny ones)
    monkeypatch.setattr(rt, "free_bytes", lambda device: 8 * 2**30)  # an 8 GiB machine
    image, audio, _ = inputs
    args = ["--image", str(image), "--audio", str(audio), *FAST]
    _refused(capsys, ["generate", "--preset", "14b", *args, "-o", str(tmp_path / "big.mp4")],
             "--preset 14b without --weights makes random weights")
    assert not (tmp_path / "big.mp4").exists()
    assert main(["generate", *args, "-o", str(tmp_path / "tiny.mp4")]) == 0  # the tiny preset fits
