"""Conform's crop boxes: the LBP cascade finds the astronaut's face; a moving face across a hard
cut in a real 1280x720 MP4 at 24000/1001 fps gets one fixed box per shot that holds every
frame's face, at the bucket's aspect, inside the frame, even-sized, one bucket for the clip;
face-less shots error or are skipped; given boxes (whole clip or over time) are checked and
grown the same way; read_face_boxes refuses bad files with one InputError each."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image
from skimage import data

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.media import VideoSource, write_mp4
from infinitetalk_dist.pipeline.conditioning import pick_bucket
from infinitetalk_dist.pipeline.conform.boxes import (
    Box,
    DetectorSettings,
    Margin,
    detect_faces,
    read_face_boxes,
    shot_boxes,
    track_faces,
)

ASTRONAUT_FACE = Box(176, 70, 270, 166)  # hairline to chin, ear to ear (labelled by hand)
RATE = Fraction(24000, 1001)
# The face patch pasted into the synthetic video: astronaut[20:300, 90:370] scaled to 320 px
# (x8/7), so the face sits at (98, 57)-(206, 167) inside it: 108 px, 1/6.7 of the height.
PATCH, PATCH_FACE = 320, (98, 57, 206, 167)
# The cascade's cost is in its smallest windows; this face is large, so the video test searches
# from 1/10 of the frame (3x faster than the default 1/16, which test_conform exercises).
FAST = DetectorSettings(min_face=1 / 10)


class FrameList:
    """The part of VideoSource that shot_boxes uses, over a list of frames at ``fps``."""

    def __init__(self, frames, fps=25.0, size=None):
        self.frames, self.fps = frames, fps
        self.size = size or frames[0].shape[:2]

    def frame(self, k):
        return self.frames[k]

    def source_index_at_time(self, seconds, clamp=False):
        return min(max(int(math.floor(seconds * self.fps + 1e-6)), 0), len(self.frames) - 1)


class NoFrames(FrameList):
    def frame(self, k):
        raise AssertionError("given boxes must not decode frames")


def _check_box(box: Box, size, bucket):
    h, w = size
    assert 0 <= box.left < box.right <= w and 0 <= box.top < box.bottom <= h
    assert box.width % 2 == 0 and box.height % 2 == 0
    assert abs(box.height - box.width * bucket[0] / bucket[1]) <= 1  # the bucket's aspect within a pixel


def _contains(outer: Box, inner) -> bool:
    l, t, r, b = inner
    return outer.left <= l and outer.top <= t and r <= outer.right and b <= outer.bottom


def test_detect_faces_finds_the_astronaut():
    boxes = detect_faces(data.astronaut())
    assert boxes, "no face found on the astronaut"
    face = boxes[0]
    areas = [b.width * b.height for b in boxes]
    assert areas == sorted(areas, reverse=True)
    cx, cy = face.centre
    assert cy < 256 and 150 < cx < 300  # upper half, middle columns: her face, not the badges
    inter = Box(max(face.left, 176), max(face.top, 70), min(face.right, 270), min(face.bottom, 166))
    assert inter.width * inter.height / (face.width * face.height + 94 * 96 - inter.width * inter.height) > 0.6
    assert face.crop(data.astronaut()).shape == (face.height, face.width, 3)


def test_detect_faces_on_faceless_images():
    assert detect_faces(data.coffee()) == []
    assert detect_faces(np.random.default_rng(0).integers(0, 256, (360, 640, 3), dtype=np.uint8)) == []


@pytest.fixture(scope="module")
def moving_face(tmp_path_factory):
    """Two shots of 18 frames (0.75 s: 3 samples each) at 24000/1001 fps: the face drifting right
    3 px a frame on a noisy blue background, then (hard cut) left and down on a sand one."""
    patch = np.asarray(Image.fromarray(data.astronaut()[20:300, 90:370]).resize((PATCH, PATCH)))
    rng = np.random.default_rng(3)
    frames, faces = [], []
    for k in range(36):
        second = k >= 18
        base = np.array((200, 180, 120) if second else (40, 60, 90), np.int16)
        f = np.clip(base + rng.integers(-6, 7, (720, 1280, 3)), 0, 255).astype(np.uint8)
        x, y = (850 - 3 * (k - 18), 300 + (k - 18)) if second else (150 + 3 * k, 120)
        f[y : y + PATCH, x : x + PATCH] = patch
        frames.append(f)
        faces.append((x + PATCH_FACE[0], y + PATCH_FACE[1], x + PATCH_FACE[2], y + PATCH_FACE[3]))
    path = tmp_path_factory.mktemp("boxes") / "moving.mp4"
    write_mp4(path, frames, fps=RATE)
    return VideoSource(path), faces


def test_shot_boxes_follow_a_moving_face_across_a_cut(moving_face):
    video, faces = moving_face
    assert video.size == (720, 1280) and len(video) == 36
    cut = float(video.timestamps[18])
    shots = [(0.0, cut), (cut, video.duration)]
    boxes = shot_boxes(video, shots, bucket_table="480", detector=FAST)
    assert len(boxes) == 2 and all(isinstance(b, Box) for b in boxes)
    bucket = pick_bucket(boxes[0].height, boxes[0].width, "480")
    assert pick_bucket(boxes[1].height, boxes[1].width, "480") == bucket  # one bucket for the clip
    for box, shot_faces in zip(boxes, (faces[:18], faces[18:])):
        _check_box(box, video.size, bucket)
        assert all(_contains(box, f) for f in shot_faces)
        span = max(f[2] for f in shot_faces) - min(f[0] for f in shot_faces)
        assert box.width < 1.5 * (span + 2.2 * 108)  # head and shoulders, not the whole frame
    assert boxes[0].centre[0] + 300 < boxes[1].centre[0]


def test_faceless_shot_errors_or_is_skipped():
    # 256x256 frames (the cascade is cheaper on frames below its 480 px work size), 0.75 s shots.
    face, coffee = data.astronaut()[::2, ::2].copy(), data.coffee()[:256, :256].copy()
    video = FrameList([face] * 18 + [coffee] * 18, fps=24.0)
    shots = [(0.0, 0.75), (0.75, 1.5)]
    with pytest.raises(InputError) as e:
        shot_boxes(video, shots, bucket_table="480")
    assert str(e.value) == "shot 1 (0.75 s - 1.50 s): no face found; give --face-box or input.face_boxes"
    boxes = shot_boxes(video, shots, bucket_table="480", on_missing="skip")
    assert boxes[1] is None and _contains(boxes[0], [v // 2 for v in ASTRONAUT_FACE.to_json()])
    _check_box(boxes[0], (256, 256), pick_bucket(boxes[0].height, boxes[0].width, "480"))


def test_given_box_for_the_whole_clip_is_grown_to_the_bucket():
    video = NoFrames([], size=(720, 1280))
    face = Box(600, 200, 700, 300)
    boxes = shot_boxes(video, [(0.0, 2.0), (2.0, 3.5)], bucket_table="tiny", given=face)
    assert boxes[0] == boxes[1]
    bucket = pick_bucket(boxes[0].height, boxes[0].width, "tiny")
    _check_box(boxes[0], (720, 1280), bucket)
    grown = Margin().grow(face)  # 2.2 x 100 wide, 60 above, 120 below
    assert (grown.left, grown.top, grown.right, grown.bottom) == (540, 140, 760, 420)
    assert _contains(boxes[0], grown.to_json())
    same = shot_boxes(video, [(0.0, 3.5)], bucket_table="tiny", given=face, margin=Margin(1, 0, 0))[0]
    assert _contains(same, face.to_json()) and same.width <= 102 and same.height <= 130


def test_given_boxes_over_time_union_the_entries_a_shot_overlaps(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps([{"start_s": 0, "box": [100, 100, 200, 200]},
                                {"start_s": 1.5, "box": [140, 110, 240, 210]},
                                {"start_s": 3.0, "box": [800, 300, 900, 400]}]))
    given = read_face_boxes(path)
    assert given == [(0.0, Box(100, 100, 200, 200)), (1.5, Box(140, 110, 240, 210)), (3.0, Box(800, 300, 900, 400))]
    video = NoFrames([], size=(720, 1280))
    boxes = shot_boxes(video, [(0.0, 2.0), (2.0, 3.0), (3.0, 4.0)], bucket_table="480", given=given)
    # Entries 0 and 1, unioned, grown by the faces' size (100 px), not the union's.
    assert Margin().grow(Box(100, 100, 240, 210), (100, 100)) == Box(40, 40, 300, 330)
    assert _contains(boxes[0], [40, 40, 300, 330]) and boxes[0].width < 2.2 * 140
    assert _contains(boxes[1], Margin().grow(given[1][1]).to_json()) and boxes[1].right < 800  # entry 1 only
    assert _contains(boxes[2], Margin().grow(given[2][1]).to_json())
    bucket = pick_bucket(boxes[0].height, boxes[0].width, "480")
    for b in boxes:  # one aspect for every shot, picked from the first
        _check_box(b, (720, 1280), bucket)
    late = [(1.0, Box(100, 100, 200, 200))]
    with pytest.raises(InputError, match=r"shot 0 \(0.00 s - 0.50 s\): no face box covers it"):
        shot_boxes(video, [(0.0, 0.5), (0.5, 2.0)], bucket_table="480", given=late)
    assert shot_boxes(video, [(0.0, 0.5), (0.5, 2.0)], bucket_table="480", given=late, on_missing="skip")[0] is None


def test_given_box_outside_the_frame_is_refused():
    video = NoFrames([], size=(720, 1280))
    for box in (Box(1200, 100, 1400, 400), Box(-5, 0, 100, 100), Box(10, 600, 100, 721)):
        with pytest.raises(InputError, match=r"face box \[.*\] is not inside the 1280x720 frame"):
            shot_boxes(video, [(0.0, 1.0)], bucket_table="480", given=box)
    with pytest.raises(InputError, match=r"face box from 2.00 s \[1200, 100, 1400, 400\]"):
        shot_boxes(video, [(0.0, 1.0)], bucket_table="480", given=[(0.0, Box(0, 0, 10, 10)),
                                                                   (2.0, Box(1200, 100, 1400, 400))])


def test_boxes_near_the_edge_shift_and_too_large_ones_shrink():
    video = NoFrames([], size=(720, 1280))
    corner = shot_boxes(video, [(0.0, 1.0)], bucket_table="480", given=Box(0, 0, 120, 120))[0]
    assert corner.left == 0 and corner.top == 0 and _contains(corner, [0, 0, 120, 120])
    _check_box(corner, (720, 1280), pick_bucket(corner.height, corner.width, "480"))
    huge = shot_boxes(video, [(0.0, 1.0)], bucket_table="480", given=Box(400, 100, 800, 600))[0]
    bucket = pick_bucket(huge.height, huge.width, "480")
    _check_box(huge, (720, 1280), bucket)
    assert huge.height >= 718  # as large as the frame allows, the aspect kept
    assert abs(huge.centre[0] - 600) <= 2


def test_tracking_drops_jumps_and_one_off_false_hits():
    face = [Box(300 + 4 * k, 200, 400 + 4 * k, 300) for k in range(8)]
    samples = [[f] for f in face]
    samples[3] = [Box(900, 500, 1000, 600)]  # another face far away: a jump
    samples[5] = [Box(0, 0, 400, 400), face[5]]  # a one-off false hit, larger than the face
    samples[6] = []  # missed
    tracked = track_faces(samples)
    assert tracked == [face[k] for k in (0, 1, 2, 4, 5, 7)]
    assert track_faces([[], []]) == []


def test_box_json_and_validation():
    b = Box.from_json([10, 20.4, 50, 60])
    assert b == Box(10, 20, 50, 60) and b.to_json() == [10, 20, 50, 60] and (b.width, b.height) == (40, 40)
    assert Box.from_json(b.to_json()) == b
    frame = np.zeros((100, 100, 3), np.uint8)
    assert b.crop(frame).shape == (40, 40, 3)
    for bad in ([10, 20, 5, 60], [10, 60, 50, 60]):
        with pytest.raises(InputError, match="empty or inverted"):
            Box.from_json(bad)
    for bad in ([1, 2, 3], "1,2,3,4", [1, 2, 3, True], [0, 0, float("nan"), 4]):
        with pytest.raises(InputError, match=r"\[left, top, right, bottom\]"):
            Box.from_json(bad)


@pytest.mark.parametrize("text, words", [
    ("[{\"start_s\": 0, \"box\": [1, 2, 3, 4]", "not valid JSON at line 1"),
    ("{\"start_s\": 0}", "must be a non-empty JSON list"),
    ("[]", "must be a non-empty JSON list"),
    ('[{"start_s": 0, "box": [0, 0, 9, 9]}, {"start_s": 2, "box": [0, 0, 9, 9]}, {"start_s": 1, "box": [0, 0, 9, 9]}]',
     "entry 2 .*start_s must increase"),
    ('[{"start_s": 0, "box": [0, 0, 9, 9]}, {"start_s": 0, "box": [0, 0, 9, 9]}]', "entry 1 .*start_s must increase"),
    ('[{"start_s": -1, "box": [0, 0, 9, 9]}]', "entry 0 .*start_s must be a number of seconds >= 0"),
    ('[{"start_s": "0", "box": [0, 0, 9, 9]}]', "entry 0 .*start_s must be a number"),
    ('[{"start_s": 0, "box": [50, 0, 9, 9]}]', r"entry 0 .*box \[50, 0, 9, 9\] is empty or inverted"),
    ('[{"start_s": 0, "box": [0, 0, 9]}]', r"entry 0 .*\[left, top, right, bottom\]"),
    ('[{"start_s": 0, "bbox": [0, 0, 9, 9]}]', "entry 0 .*nothing else"),
])
def test_read_face_boxes_errors(tmp_path, text, words):
    path = tmp_path / "faces.json"
    path.write_text(text)
    with pytest.raises(InputError, match=f"face boxes {path}: {words}"):
        read_face_boxes(path)


def test_read_face_boxes_missing_file(tmp_path):
    with pytest.raises(InputError, match="face boxes .*nope.json: cannot read it"):
        read_face_boxes(tmp_path / "nope.json")
