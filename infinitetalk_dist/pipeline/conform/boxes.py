"""Where the speaker is: one fixed crop box per shot, in source pixels.

A shot's box is fixed so the source's camera motion stays inside it (the model sees a steady
frame; the composite pastes it back where it came from). It comes from a face box per shot --
given (``--face-box`` for the whole clip, ``input.face_boxes`` over time) or found by
scikit-image's bundled LBP frontal-face cascade and tracked over frames sampled in the shot --
grown to head and shoulders (:class:`Margin`), expanded to the aspect of the model's size
bucket (one bucket for every shot of a clip), and kept inside the frame.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from infinitetalk_dist.errors import InputError

from ..conditioning import pick_bucket

__all__ = ["HEAD_AND_SHOULDERS", "Box", "DetectorSettings", "Margin", "detect_faces", "read_face_boxes",
           "shot_boxes", "track_faces"]


@dataclass(frozen=True)
class Box:
    """Source pixels, half-open: columns ``[left, right)``, rows ``[top, bottom)``."""

    left: int
    top: int
    right: int
    bottom: int

    def __post_init__(self):
        if self.right <= self.left or self.bottom <= self.top:
            raise InputError(f"box {self.to_json()} is empty or inverted (needs right > left and bottom > top)")

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def centre(self) -> tuple[float, float]:  # (x, y)
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return frame[self.top : self.bottom, self.left : self.right]

    def to_json(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]

    @classmethod
    def from_json(cls, value) -> Box:
        """``[left, top, right, bottom]`` (numbers; rounded to whole pixels)."""
        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(map(number, value)):
            raise InputError(f"a box must be [left, top, right, bottom] (4 numbers), got {value!r}")
        return cls(*(int(round(v)) for v in value))


@dataclass(frozen=True)
class Margin:
    """Growth from a face box to the crop, in face widths / heights.

    The cascade's box spans about hairline to chin and ear to ear. Above: 0.6 face heights
    hold the hair (~0.35) and some headroom. Below: 1.2 hold the jaw's motion while speaking,
    the neck and the top of the shoulders. Width 2.2, centred: the head turning and the
    shoulders' start. A square face gives a portrait crop (h/w 1.27: bucket 1.22 at 480p, 1.31
    at 720p), the face ~45% of its width as in a talking-head picture: enough pixels for the
    lips at bucket size, source around the face for the feathered composite mask to blend
    into, and room for the detector's jitter (~10% of the face).
    """

    width: float = 2.2
    above: float = 0.6
    below: float = 1.2

    def grow(self, extent: Box, face: tuple[float, float] | None = None) -> Box:
        """``extent`` (where the face went over the shot) grown by the face's (width, height),
        default the extent's own: by the face's size, so motion does not inflate the margin."""
        fw, fh = face or (extent.width, extent.height)
        side = fw * (self.width - 1) / 2
        out, tol = (math.floor, math.ceil), 1e-6  # outwards, not past float noise (1.2 = 1.2000..2)
        return Box(out[0](extent.left - side + tol), out[0](extent.top - fh * self.above + tol),
                   out[1](extent.right + side - tol), out[1](extent.bottom + fh * self.below - tol))


HEAD_AND_SHOULDERS = Margin()


def read_face_boxes(path: str | os.PathLike) -> list[tuple[float, Box]]:
    """A JSON list of ``{"start_s": seconds, "box": [left, top, right, bottom]}``, each valid
    from its start to the next one's; ``start_s`` >= 0 and increasing. Any problem is one
    :class:`InputError` naming the file (and the entry)."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise InputError(f"face boxes {name}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise InputError(f"face boxes {name}: not valid JSON{where}") from None
    if not isinstance(doc, list) or not doc:
        raise InputError(f'face boxes {name}: must be a non-empty JSON list of {{"start_s": seconds, '
                         f'"box": [left, top, right, bottom]}}')
    out: list[tuple[float, Box]] = []
    for i, entry in enumerate(doc):
        def bad(why: str):
            return InputError(f"face boxes {name}: entry {i} ({json.dumps(entry)[:80]}): {why}")
        if not isinstance(entry, dict) or set(entry) != {"start_s", "box"}:
            raise bad('must be {"start_s": seconds, "box": [left, top, right, bottom]} and nothing else')
        start = entry["start_s"]
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start) or start < 0:
            raise bad("start_s must be a number of seconds >= 0")
        if out and start <= out[-1][0]:
            raise bad(f"start_s must increase (the entry before starts at {out[-1][0]} s)")
        try:
            box = Box.from_json(entry["box"])
        except InputError as e:
            raise bad(str(e)) from None
        out.append((float(start), box))
    return out


@dataclass(frozen=True)
class DetectorSettings:
    """How the cascade searches; measured in ``benchmarks/face_boxes.py`` (RESULTS.md).

    work_side 480: the frame is downscaled to this short side first. The search costs the same
      at any work size (min_size scales with it); 360, 480, 720 found the face equally.
    scale_factor 1.1, step_ratio 1.0: a fine scale ladder, every position. 1.2 or 1.25 are
      ~2x faster but found the face in 57-61 of 66 test frames against 65.
    min_neighbors 6: overlapping hits needed to keep one. 4 lets textures through (1.7 false
      hits a frame, some larger than the face), 8 loses faces (63 of 66).
    min_face 1/16 of the short side (45 px at 720p): 1/12 is ~2x faster but found a 48 px face
      in a 720p frame 2 times of 6; smaller windows are mostly false hits.
    """

    work_side: int = 480
    scale_factor: float = 1.1
    step_ratio: float = 1.0
    min_neighbors: int = 6
    min_face: float = 1 / 16


@lru_cache(maxsize=1)
def _cascade():
    from skimage import data, feature

    return feature.Cascade(data.lbp_frontal_face_cascade_filename())


def detect_faces(frame: np.ndarray, settings: DetectorSettings = DetectorSettings()) -> list[Box]:
    """Frontal faces in a uint8 RGB ``[H, W, 3]`` frame, largest first (source pixels)."""
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
        raise ValueError(f"detect_faces needs a uint8 [H, W, 3] RGB array, got {getattr(frame, 'shape', frame)!r}")
    h, w = frame.shape[:2]
    scale = min(1.0, settings.work_side / min(h, w))
    gray = Image.fromarray(np.ascontiguousarray(frame)).convert("L")
    if scale < 1:
        gray = gray.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    g = np.asarray(gray, dtype=np.float32) / 255
    side = min(g.shape)
    smallest = max(24, round(side * settings.min_face))  # 24: the cascade's own window
    if smallest > side:
        return []
    hits = _cascade().detect_multi_scale(img=g, scale_factor=settings.scale_factor, step_ratio=settings.step_ratio,
                                         min_size=(smallest, smallest), max_size=(side, side),
                                         min_neighbor_number=settings.min_neighbors)
    boxes = []
    for d in hits:
        l, t = max(0, math.floor(d["c"] / scale)), max(0, math.floor(d["r"] / scale))
        r, b = min(w, math.ceil((d["c"] + d["width"]) / scale)), min(h, math.ceil((d["r"] + d["height"]) / scale))
        if r > l and b > t:
            boxes.append(Box(l, t, r, b))
    return sorted(boxes, key=lambda b: -b.width * b.height)


def _distance(a: Box, b: Box) -> float:
    (ax, ay), (bx, by) = a.centre, b.centre
    return math.hypot(ax - bx, ay - by)


def _median_box(boxes: list[Box]) -> Box:
    return Box(*(int(round(v)) for v in np.median([b.to_json() for b in boxes], axis=0)))


def _follows(d: Box, ref: Box) -> bool:
    # The same face: centre within one face width of the reference, size within 1.5x of it.
    return _distance(d, ref) <= ref.width and 1 / 1.5 <= d.width / ref.width <= 1.5


def track_faces(samples: list[list[Box]]) -> list[Box]:
    """The speaker's face box in each sample that has it, in sample order.

    Start from the detection seen in most samples (the largest among those): a texture the
    cascade takes for a face in one frame does not come back in the next ones. Then walk away
    from it both ways, taking in each sample the detection nearest to the median of the last
    five tracked boxes (following camera motion), and dropping it if it jumps farther than one
    face width or changes size past 1.5x (another face, or a false hit).
    """
    every = [(i, d) for i, ds in enumerate(samples) for d in ds]
    if not every:
        return []
    i0, seed = max(every, key=lambda x: (sum(any(_follows(e, x[1]) for e in ds) for ds in samples),
                                         x[1].width * x[1].height))
    tracked = {i0: seed}
    for order in (range(i0 + 1, len(samples)), range(i0 - 1, -1, -1)):
        recent = [seed]
        for i in order:
            ref = _median_box(recent[-5:])
            near = min(samples[i], key=lambda d: _distance(d, ref), default=None)
            if near is not None and _follows(near, ref):
                tracked[i] = near
                recent.append(near)
    return [tracked[i] for i in sorted(tracked)]


def _extent(faces: list[Box], smooth: bool) -> tuple[Box, tuple[float, float]]:
    """Where the face went (the union) and its size (median width, height)."""
    a = np.array([f.to_json() for f in faces], dtype=np.float64)
    if smooth and len(a) >= 3:  # a running median of three: the detector's size jitter out
        padded = np.concatenate([a[:1], a, a[-1:]])
        a = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    union = Box(int(math.floor(a[:, 0].min())), int(math.floor(a[:, 1].min())),
                int(math.ceil(a[:, 2].max())), int(math.ceil(a[:, 3].max())))
    return union, (float(np.median(a[:, 2] - a[:, 0])), float(np.median(a[:, 3] - a[:, 1])))


SAMPLE_EVERY_S = 0.25  # camera motion between samples is small next to the growth margin
MIN_SAMPLES = 3
MIN_FOUND = 0.25  # a face in fewer sampled frames than this is a stray hit, not a speaker


def _sample_times(start: float, end: float) -> list[float]:
    # Centres of equal slices: never the frames at a cut, which may belong to the other shot.
    n = max(MIN_SAMPLES, math.ceil((end - start) / SAMPLE_EVERY_S))
    return [start + (k + 0.5) * (end - start) / n for k in range(n)]


def _even(x: float) -> int:
    return 2 * int(round(x / 2))


def _fit(box: Box, ratio: float, size: tuple[int, int]) -> Box:
    """The smallest even-sized box of aspect ``ratio`` (h / w) around ``box``'s centre, shifted
    inside the frame; larger than the frame: shrunk around that centre, same aspect."""
    fh, fw = size
    w = 2 * math.ceil(max(box.width, box.height / ratio) / 2)
    while _even(w * ratio) < box.height:
        w += 2
    if _even(w * ratio) > fh or w > fw:
        w = 2 * math.floor(min(fw, fh / ratio) / 2)
        while w > 2 and _even(w * ratio) > fh:
            w -= 2
    h = max(2, _even(w * ratio))
    cx, cy = box.centre
    left = min(max(int(round(cx - w / 2)), 0), fw - w)
    top = min(max(int(round(cy - h / 2)), 0), fh - h)
    return Box(left, top, left + w, top + h)


def _shot_name(k: int, shot: tuple[float, float]) -> str:
    return f"shot {k} ({shot[0]:.2f} s - {shot[1]:.2f} s)"


def _check_inside(box: Box, size: tuple[int, int], what: str) -> None:
    if not (0 <= box.left and 0 <= box.top and box.right <= size[1] and box.bottom <= size[0]):
        raise InputError(f"{what} {box.to_json()} is not inside the {size[1]}x{size[0]} frame "
                         f"(width x height; needs 0 <= left < right <= {size[1]}, 0 <= top < bottom <= {size[0]})")


def shot_boxes(video, shots: list[tuple[float, float]], *, bucket_table: str,
               given: Box | list[tuple[float, Box]] | None = None, margin: Margin = HEAD_AND_SHOULDERS,
               on_missing: str = "error", detector: DetectorSettings = DetectorSettings()) -> list[Box | None]:
    """One crop box per shot (``shots``: ``(start_s, end_s)`` covering the clip), every one of
    the same bucket aspect, even-sized and inside the frame.

    ``video``: a :class:`~infinitetalk_dist.media.VideoSource` (or anything with ``size``,
    ``frame(k)`` and ``source_index_at_time(s, clamp=True)``). ``given``: None (detect and
    track the face in frames sampled every 0.25 s, at least 3 per shot), one face box for the
    whole clip, or :func:`read_face_boxes`' list (every entry overlapping a shot is unioned).
    Given boxes are face boxes, as the detector's: a shot's faces (tracked, or the entries
    overlapping it) are unioned and grown by ``margin`` times their median size
    (``Margin(1, 0, 0)``: no growth, only the aspect). The bucket
    (``pick_bucket(h, w, bucket_table)``) is the first boxed shot's grown box's; every box is
    expanded to its aspect. A shot without a face: ``on_missing="error"`` raises, ``"skip"``
    gives None for it (the caller leaves the shot as the source).
    """
    if on_missing not in ("error", "skip"):
        raise InputError(f"on_missing must be error or skip, got {on_missing!r}")
    size = tuple(video.size)
    for k, (a, b) in enumerate(shots):
        if not b > a >= 0:
            raise InputError(f"{_shot_name(k, (a, b))}: a shot needs 0 <= start < end")
    if isinstance(given, Box):
        _check_inside(given, size, "face box")
        given = [(0.0, given)]
    elif given is not None:
        for start, box in given:
            _check_inside(box, size, f"face box from {start:.2f} s")
    faces = []  # per shot: (extent, face size) or None
    for k, shot in enumerate(shots):
        face, why = _given_face(given, shot) if given is not None else _found_face(video, shot, detector)
        if face is None and on_missing == "error":
            raise InputError(f"{_shot_name(k, shot)}: {why}")
        faces.append(face)
    grown = [margin.grow(*f) if f is not None else None for f in faces]
    first = next((g for g in grown if g is not None), None)
    if first is None:
        return [None] * len(shots)
    bh, bw = pick_bucket(first.height, first.width, bucket_table)
    return [_fit(g, bh / bw, size) if g is not None else None for g in grown]


def _given_face(given: list[tuple[float, Box]], shot: tuple[float, float]):
    a, b = shot
    ends = [s for s, _ in given[1:]] + [math.inf]
    eps = 1e-6  # an entry starting at the cut belongs to the next shot only
    hit = [box for (s, box), e in zip(given, ends) if s < b - eps and e > a + eps]
    if not hit:
        return None, f"no face box covers it (the first starts at {given[0][0]:.2f} s)"
    return _extent(hit, smooth=False), ""


def _found_face(video, shot: tuple[float, float], detector: DetectorSettings):
    indices = sorted({video.source_index_at_time(t, clamp=True) for t in _sample_times(*shot)})
    samples = [detect_faces(np.asarray(video.frame(i)), detector) for i in indices]
    faces = track_faces(samples)
    hint = "; give --face-box or input.face_boxes"
    if not faces:
        return None, "no face found" + hint
    if len(faces) < max(1, math.ceil(MIN_FOUND * len(samples))):
        return None, f"no face found (one in only {len(faces)} of {len(samples)} sampled frames){hint}"
    return _extent(faces, smooth=True), ""
