import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from infinitetalk_dist.farm.cuts import shot_cuts, speech_pauses
from infinitetalk_dist.farm.plan import Plan, draw_plan, make_plan, window_seed
from infinitetalk_dist.timeline import num_chunks
from infinitetalk_dist.samples import speech_like

SR = 16000


def spans(plan):
    return [(w.start, w.end, w.cut, w.overlap) for w in plan.windows]


def test_num_chunks():
    assert [num_chunks(n, 81, 9) for n in (1, 81, 82, 153, 154)] == [1, 1, 2, 2, 3]
    assert [num_chunks(n, 17, 5) for n in (17, 18, 29, 30)] == [1, 2, 2, 3]


def test_window_cost_follows_the_chunk_settings():
    """The plan prices windows with the sampler's frame_num/motion_frame, not fixed 81/72."""
    default = make_plan(400, target_s=8.0, steps=4)
    short = make_plan(400, target_s=8.0, steps=4, frame_num=17, motion_frame=5)
    assert [w.cost for w in default.windows] == [num_chunks(w.frames, 81, 9) * 4 for w in default.windows]
    assert [w.cost for w in short.windows] == [num_chunks(w.frames, 17, 5) * 4 for w in short.windows]
    assert short.cost > default.cost


def test_shots_only_are_free_cuts():
    plan = make_plan(1000, shots=[300, 600], target_s=60)
    assert spans(plan) == [(0, 300, "start", 0), (300, 600, "shot", 0), (600, 1000, "shot", 0)]


def test_silence_near_target_boundary_cut_in_middle():
    # 40 s, target 20 s -> boundary at frame 500 (20 s); pause 19.6-20.4 s -> mid 20.0 s
    plan = make_plan(1000, pauses=[(5.0, 5.5), (19.0, 20.2), (35.0, 36.0)], target_s=20)
    assert spans(plan) == [(0, 490, "start", 0), (490, 1000, "silence", 0)]  # mid of 19.0-20.2 = 19.6 s


def test_nearest_pause_wins_and_far_pause_is_ignored():
    plan = make_plan(1000, pauses=[(17.0, 17.4), (20.5, 20.9), (30.0, 31.0)], target_s=20)
    assert plan.windows[1].start == round(20.7 * 25) and plan.windows[1].cut == "silence"
    far = make_plan(1000, pauses=[(2.0, 3.0), (35.0, 36.0)], target_s=20)  # no pause near 20 s
    assert spans(far) == [(0, 500, "start", 0), (475, 1000, "forced", 25)]


def test_forced_cuts_with_overlap():
    plan = make_plan(1500, target_s=20, overlap_s=1.0)  # 60 s -> 3 windows
    assert spans(plan) == [(0, 500, "start", 0), (475, 1000, "forced", 25), (975, 1500, "forced", 25)]
    assert [w.frames for w in plan.windows] == [500, 525, 525]
    no_ov = make_plan(1500, target_s=20, overlap_s=0)
    assert [w.overlap for w in no_ov.windows] == [0, 0, 0]


def test_shot_then_long_segment_split():
    plan = make_plan(2000, shots=[100], target_s=30, pauses=[(50.0, 50.6)])
    kinds = [w.cut for w in plan.windows]
    assert kinds[:2] == ["start", "shot"] and set(kinds[2:]) <= {"silence", "forced"}
    assert plan.windows[0].end == 100 and plan.windows[1].start == 100


def test_replicas_change_target():
    frames = 600 * 25  # 10 minutes
    one = make_plan(frames, replicas=1)
    four = make_plan(frames, replicas=4)
    many = make_plan(frames, replicas=64)
    assert one.settings["target_s"] == 120.0 and len(one.windows) == 5  # capped at max_s
    assert four.settings["target_s"] == 75.0 and len(four.windows) == 8  # 2 x replicas
    assert many.settings["target_s"] == 10.0 and len(many.windows) == 60  # floored at min_s
    short = make_plan(8 * 25, replicas=8)  # shorter than min_s: one window
    assert len(short.windows) == 1


def test_seeds_and_cost():
    plan = make_plan(1500, target_s=20, seed=7, steps=10)
    assert [w.seed for w in plan.windows] == [window_seed(7, i) for i in range(3)]
    assert len({w.seed for w in plan.windows}) == 3 and all(0 <= w.seed < 2**31 for w in plan.windows)
    assert make_plan(1500, target_s=20, seed=8).windows[0].seed != plan.windows[0].seed
    assert [w.cost for w in plan.windows] == [num_chunks(w.frames, 81, 9) * 10 for w in plan.windows]


def test_deterministic_json_and_round_trip():
    args = dict(shots=[400], pauses=[(30.0, 30.5), (61.0, 61.3)], replicas=3, seed=5)
    a, b = make_plan(3000, **args).to_json(), make_plan(3000, **args).to_json()
    assert a.encode() == b.encode()
    plan = Plan.from_json(a)
    assert plan == make_plan(3000, **args) and plan.to_json() == a
    doc = json.loads(a)
    assert list(doc) == sorted(doc) and doc["settings"]["replicas"] == 3
    assert "windows" in plan.summary() and len(plan.summary().splitlines()) == 1 + len(plan.windows)


def test_windows_cover_every_frame_at_least_one_frame():
    for frames in (1, 2, 3, 26, 999):
        plan = make_plan(frames, target_s=0.04, overlap_s=1.0)  # 1-frame target: worst case
        assert plan.windows[-1].end == frames and all(w.frames >= 1 for w in plan.windows)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frames=0), "frames must be an int >= 1"),
        (dict(frames=2.5), "frames must be an int >= 1"),
        (dict(frames=100, shots=[0]), "outside"),
        (dict(frames=100, shots=[100]), "outside"),
        (dict(frames=100, shots=[50, 20]), "strictly increasing"),
        (dict(frames=100, shots=[20, 20]), "strictly increasing"),
        (dict(frames=100, pauses=[(2.0, 1.0)]), "bad pause"),
        (dict(frames=100, pauses=[(1.0, 2.0), (1.5, 3.0)]), "non-overlapping"),
        (dict(frames=100, pauses=[3.0]), "pair"),
        (dict(frames=100, replicas=0), "replicas"),
        (dict(frames=100, overlap_s=-1), "overlap_s"),
        (dict(frames=100, target_s=0), "target_s"),
        (dict(frames=100, min_s=50, max_s=10), "min_s"),
    ],
)
def test_bad_inputs(kwargs, message):
    frames = kwargs.pop("frames")
    with pytest.raises(ValueError, match=message):
        make_plan(frames, **kwargs)


def test_from_json_rejects_broken_plan():
    doc = json.loads(make_plan(1500, target_s=20).to_json())
    doc["windows"][1]["start"] += 3
    with pytest.raises(ValueError, match="continue"):
        Plan.from_json(json.dumps(doc))
    # a window shorter than its two overlaps: the cross-fades with both neighbours would collide
    doc = json.loads(make_plan(90, target_s=1.0, overlap_s=0.4).to_json())
    w1, w2 = doc["windows"][1], doc["windows"][2]
    assert (w1["overlap"], w1["end"] - w1["start"], w2["cut"]) == (10, 33, "forced")
    w2["overlap"], w2["start"] = 30, w1["end"] - 30
    with pytest.raises(ValueError, match=r"window 1: 33 frames can't hold its overlaps \(10 .*, 30 .*\)"):
        Plan.from_json(json.dumps(doc))


def test_long_digital_silence_is_cut_for_free():
    """24 s of digital silence between two 3 s lines, 6 s windows: every boundary inside the
    silence is a free cut (no overlap), not a forced one (before: only the pause's middle, 15 s,
    counted, far from every boundary, so all four seams were forced overlaps)."""
    wave = np.concatenate([speech_like(3, seed=1), np.zeros(24 * SR), speech_like(3, seed=2)]).astype(np.float32)
    pauses = speech_pauses(wave, min_pause_s=0.3)
    silence = [p for p in pauses if p[1] - p[0] > 20]
    assert len(silence) == 1 and 2.5 < silence[0][0] < 3.5 and 26.5 < silence[0][1] < 27.5, pauses
    plan = make_plan(30 * 25, pauses=pauses, target_s=6)
    assert [w.cut for w in plan.windows] == ["start"] + ["silence"] * 4
    assert [w.start for w in plan.windows[1:]] == [150, 300, 450, 600]  # at the boundaries themselves
    assert all(w.overlap == 0 for w in plan.windows)
    # a cut stays 1 s inside a long pause; a short pause is still cut in its middle
    edge = make_plan(1000, pauses=[(20.5, 24.0)], target_s=20)
    assert edge.windows[1].start == round(21.5 * 25) and edge.windows[1].cut == "silence"
    assert make_plan(1000, pauses=[(19.2, 21.0)], target_s=20).windows[1].start == round(20.1 * 25)


def test_speech_pauses_finds_known_gaps():
    # speech 0-3 s, silence 3-4 s, speech 4-8 s, silence 8-8.6 s, speech 8.6-11.6 s, silence to 12.6 s
    parts = [speech_like(3, seed=1), np.zeros(SR), speech_like(4, seed=2), np.zeros(int(0.6 * SR)),
             speech_like(3, seed=3), np.zeros(SR)]
    wave = np.concatenate(parts).astype(np.float32)
    pauses = speech_pauses(wave, min_pause_s=0.3)
    assert pauses == speech_pauses(wave, min_pause_s=0.3)  # deterministic
    for lo, hi in [(3.0, 4.0), (8.0, 8.6), (11.6, 12.6)]:
        hits = [p for p in pauses if p[0] <= lo + 0.25 and p[1] >= hi - 0.25]
        assert len(hits) == 1, (lo, hi, pauses)
    assert pauses[-1][1] == pytest.approx(12.6)
    # silero found the synthetic speech: most of the speech time is not in a pause
    assert sum(b - a for a, b in pauses) < 4.0
    assert speech_pauses(np.zeros(2 * SR, np.float32)) == [(0.0, 2.0)]
    with pytest.raises(ValueError, match="1-D"):
        speech_pauses(np.zeros((2, 100), np.float32))


def test_shot_cuts_on_two_shot_video(tmp_path):
    from infinitetalk_dist.media import write_mp4
    from infinitetalk_dist.samples import face_image

    rng = np.random.default_rng(0)
    a = face_image((128, 96), seed=1)
    b = (rng.integers(0, 255, a.shape)).astype(np.uint8)  # noise texture, very different
    b[..., 2] = 30
    frames = [np.roll(a, i % 5, axis=1) for i in range(90)] + [np.roll(b, i, axis=0) for i in range(90)]
    path = tmp_path / "two_shots.mp4"
    audio = np.concatenate([speech_like(2.5, seed=1), np.zeros(SR), speech_like(2.5, seed=2)])
    write_mp4(path, frames, fps=30, audio=audio, audio_sr=SR)
    cuts = shot_cuts(path, fps_out=25)
    assert len(cuts) == 1 and abs(cuts[0] - 75) <= 1, cuts
    with pytest.raises(ValueError, match="no such video"):
        shot_cuts(tmp_path / "missing.mp4")


def test_draw_plan_png(tmp_path):
    wave = np.tile(np.concatenate([speech_like(2, seed=0), np.zeros(SR // 2)]), 16)  # 40 s
    plan = make_plan(1000, shots=[200], pauses=[(20.0, 21.0)], target_s=12)
    out = tmp_path / "plan.png"
    assert draw_plan(plan, wave, out, width=900, height=240) == str(out)
    with Image.open(out) as im:
        assert im.size == (900, 240) and im.format == "PNG"
        px = np.asarray(im.convert("RGB"))
    assert (px == (220, 40, 40)).all(-1).any() and (px == (240, 140, 0)).all(-1).any()
    assert [p.name for p in tmp_path.iterdir()] == ["plan.png"]  # no temp file left behind


def test_speech_pauses_leave_the_process_thread_count_alone():
    # silero-vad's module sets torch.set_num_threads(1) on import: a farm=local job on the GPU
    # then loaded the 14B model on one thread (397 s instead of 96 s). A fresh process, so the
    # import happens here.
    code = ("import numpy as np, torch; torch.set_num_threads(2); "
            "from infinitetalk_dist.farm.cuts import speech_pauses; "
            "assert speech_pauses(np.zeros(16000, np.float32)) == [(0.0, 1.0)]; print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2"]
