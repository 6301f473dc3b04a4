"""--i2v-motion: a slow virtual camera over the I2V picture, each chunk anchored on the moved view."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from infinitetalk_dist.launch.cli import main
from infinitetalk_dist.pipeline.sources import MOTION_PERIOD_S, MOTION_SPAN, Reference, moved_picture
from infinitetalk_dist.samples import face_image, write_demo_inputs
from tests.media_probe import decoded_frames

FAST = ["sampler.steps=1", "sampler.frame_num=17", "sampler.motion_frame=5", "--no-progress"]


def test_the_camera_moves_slowly_and_starts_on_the_picture():
    picture = Image.fromarray(face_image((96, 128), seed=2))
    a = np.asarray(picture).astype(float)
    assert np.abs(np.asarray(moved_picture(picture, "zoom", 0.0)) - a).max() <= 1  # the whole picture at 0 s
    deepest = np.asarray(moved_picture(picture, "zoom", MOTION_PERIOD_S / 2)).astype(float)
    h, w = a.shape[:2]
    m = int(round(MOTION_SPAN / 2 * h)), int(round(MOTION_SPAN / 2 * w))
    centre = np.asarray(picture.resize((w, h), box=(m[1], m[0], w - m[1], h - m[0])))
    assert np.abs(deepest - centre).mean() < 3  # half a period in: the centre, MOTION_SPAN deeper
    steps = [np.asarray(moved_picture(picture, "pan", t)).astype(float) for t in (0.0, 0.04, 3.0)]
    assert 0 < np.abs(steps[1] - steps[0]).mean() < np.abs(steps[2] - steps[0]).mean()  # slow: a frame moves little
    ref = Reference(picture, motion="pan")
    assert not np.array_equal(ref.frame(0, (64, 64)).numpy(), ref.frame(75, (64, 64)).numpy())
    assert ref.for_workers().motion == "pan"  # farm replicas see the same camera
    with pytest.raises(ValueError, match="unknown i2v motion"):
        moved_picture(picture, "tilt", 1.0)


def test_generate_with_motion_anchors_later_chunks_on_the_moved_view(tmp_path, capsys):
    image, audio = write_demo_inputs(tmp_path / "in", seconds=2.0)
    outs = {}
    for motion in ("none", "zoom"):
        outs[motion] = tmp_path / f"{motion}.mp4"
        assert main(["generate", "--image", str(image), "--audio", str(audio), "--i2v-motion", motion, *FAST,
                     "-o", str(outs[motion])]) == 0
    still, zoom = (np.stack(decoded_frames(outs[m])).astype(int) for m in ("none", "zoom"))
    assert still.shape == zoom.shape
    assert np.array_equal(still[:17], zoom[:17])  # chunk 0 is anchored on the picture itself (0 s)
    assert np.abs(still[17:] - zoom[17:]).mean() > 0.5  # later chunks on the zoomed view
    capsys.readouterr()
    assert main(["generate", "--video", str(outs["none"]), "--audio", str(audio), "--i2v-motion", "pan", *FAST,
                 "-o", str(tmp_path / "bad.mp4")]) == 1
    assert "a --video source already moves" in capsys.readouterr().err
