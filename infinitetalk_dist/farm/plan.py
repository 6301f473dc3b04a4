"""The window plan: split one long job into windows the farm renders independently.

Order of preference for a seam:

1. a hard shot cut (``cut="shot"``): free, no overlap (the picture changes anyway);
2. inside a segment longer than the target length, the speech pause nearest each target
   boundary (``cut="silence"``): cut in the middle of the pause (in a pause over 2 s long, at
   the boundary itself, at least 1 s inside the pause), no overlap;
3. otherwise a forced cut (``cut="forced"``) at the boundary, with ``overlap_s`` of overlap: the
   next window starts ``overlap`` frames before the boundary and the stitcher cross-fades them.

Target length: given, or ``clamp(duration / wanted, min_s, max_s)`` where ``wanted`` is 1 window
for one replica (no seam it does not need) and ``2 x replicas`` windows otherwise (every replica
busy, with slack for longest-first load balancing). A long segment is split into
``ceil(length / target)`` equal pieces; a pause counts as "near" a boundary when its cut point
is within a quarter piece of it.

Everything is integer output frames at 25 fps (``end`` exclusive); the plan is plain JSON with
sorted keys, byte-identical for the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from infinitetalk_dist.media.atomic import atomic_write
from infinitetalk_dist.timeline import FPS, SAMPLE_RATE, num_chunks

__all__ = ["CUT_KINDS", "Plan", "Window", "draw_plan", "make_plan", "save_png", "window_seed"]

CUT_KINDS = ("start", "shot", "silence", "forced")
PLAN_VERSION = 1


def window_seed(job_seed: int, index: int) -> int:
    """Seed of window ``index``: a 31-bit int from sha256 of (job seed, index); stable everywhere."""
    digest = hashlib.sha256(f"infinitetalk-window:{int(job_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class Window:
    index: int
    start: int  # first output frame (includes the overlap)
    end: int  # exclusive
    cut: str  # kind of cut at the window's start: start / shot / silence / forced
    overlap: int  # frames shared with the previous window (0 for start/shot/silence)
    seed: int
    cost: int  # relative cost: chunks x steps

    @property
    def frames(self) -> int:
        return self.end - self.start


@dataclass
class Plan:
    fps: int
    frames: int
    windows: list[Window]
    settings: dict = field(default_factory=dict)  # target_s, overlap_s, replicas, seed, min_s, max_s, steps

    def to_json(self) -> str:
        doc = {
            "version": PLAN_VERSION,
            "fps": self.fps,
            "frames": self.frames,
            "settings": self.settings,
            "windows": [dataclasses.asdict(w) for w in self.windows],
        }
        return json.dumps(doc, sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        doc = json.loads(text)
        if doc.get("version") != PLAN_VERSION:
            raise ValueError(f"Plan.from_json: unsupported plan version {doc.get('version')!r}")
        names = [f.name for f in dataclasses.fields(Window)]
        try:
            windows = [Window(**{k: w[k] for k in names}) for w in doc["windows"]]
            plan = cls(fps=doc["fps"], frames=doc["frames"], windows=windows, settings=doc["settings"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"Plan.from_json: malformed plan document ({e!r})") from e
        plan.check()
        return plan

    def check(self) -> None:
        """Raise ValueError unless the windows cover [0, frames) in order, each >= 1 frame of
        its own, and each holds both its overlaps (the stitcher cross-fades them)."""
        if not self.windows or self.frames < 1:
            raise ValueError("plan: no windows / no frames")
        own_start = 0
        for i, w in enumerate(self.windows):
            if w.index != i or w.cut not in CUT_KINDS or w.overlap < 0:
                raise ValueError(f"plan: bad window {w}")
            if w.start + w.overlap != own_start or w.end <= own_start or w.start < 0:
                raise ValueError(f"plan: window {i} does not continue the previous one: {w}")
            if (i == 0) != (w.cut == "start") or (w.cut != "forced" and w.overlap):
                raise ValueError(f"plan: window {i} has cut {w.cut!r} with overlap {w.overlap}")
            k_out = self.windows[i + 1].overlap if i + 1 < len(self.windows) else 0
            if w.overlap + k_out > w.frames:
                raise ValueError(f"plan: window {i}: {w.frames} frames can't hold its overlaps "
                                 f"({w.overlap} with the previous, {k_out} with the next)")
            own_start = w.end
        if own_start != self.frames:
            raise ValueError(f"plan: windows end at {own_start}, expected {self.frames}")

    @property
    def cost(self) -> int:
        return sum(w.cost for w in self.windows)

    def summary(self) -> str:
        kinds = {k: sum(w.cut == k for w in self.windows) for k in CUT_KINDS[1:]}
        s = self.settings
        lines = [
            f"plan: {self.frames} frames ({self.frames / self.fps:.2f} s @ {self.fps} fps), "
            f"{len(self.windows)} windows, target {s.get('target_s')} s, {s.get('replicas')} replicas, "
            f"seams: " + ", ".join(f"{k} {n}" for k, n in kinds.items()) + f", total cost {self.cost}"
        ]
        for w in self.windows:
            lines.append(
                f"  #{w.index:<3d} [{w.start:>7d}, {w.end:>7d}) {w.frames / self.fps:7.2f} s  "
                f"{w.cut:<7s} overlap {w.overlap:>3d}  seed {w.seed:>10d}  cost {w.cost}"
            )
        return "\n".join(lines)


def _check_number(name: str, v, lo: float, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"make_plan: {name} must be a finite number, got {v!r}")
    if v < lo or (strict and v == lo):
        raise ValueError(f"make_plan: {name} must be {'>' if strict else '>='} {lo}, got {v!r}")
    return float(v)


PAUSE_MARGIN_S = 1.0  # a cut stays this far inside a long pause (VAD edges are approximate)


def _pause_cut(pause: tuple[float, float], ideal: int, fps: int) -> int:
    """Where a cut goes in ``pause`` for a target boundary at frame ``ideal``: the middle of a
    pause up to 2 x PAUSE_MARGIN_S long; in a longer one (a long digital silence holds several
    boundaries) the boundary itself, kept PAUSE_MARGIN_S inside the pause's edges."""
    a, b = pause
    if b - a <= 2 * PAUSE_MARGIN_S:
        return round((a + b) / 2 * fps)
    return round(min(max(ideal / fps, a + PAUSE_MARGIN_S), b - PAUSE_MARGIN_S) * fps)


def make_plan(
    frames: int,
    *,
    shots=(),
    pauses=(),
    replicas: int = 1,
    target_s: float | None = None,
    overlap_s: float = 1.0,
    min_s: float = 10.0,
    max_s: float = 120.0,
    seed: int = 0,
    steps: int = 40,
    frame_num: int = 81,
    motion_frame: int = 9,
    fps: int = FPS,
) -> Plan:
    """Plan the windows of a job of ``frames`` output frames (see the module docstring).

    ``shots``: output-frame indices of hard cuts, strictly increasing, in ``(0, frames)``.
    ``pauses``: ``(start_s, end_s)`` silent intervals, sorted and non-overlapping; parts past the
    end of the timeline are ignored. A window's ``cost`` is its chunk count (chunks of
    ``frame_num`` frames overlapping by ``motion_frame``, :func:`timeline.num_chunks`) times
    ``steps``. Raises ValueError on bad input.
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"make_plan: frames must be an int >= 1, got {frames!r}")
    frames = int(frames)
    if isinstance(replicas, bool) or not isinstance(replicas, (int, np.integer)) or replicas < 1:
        raise ValueError(f"make_plan: replicas must be an int >= 1, got {replicas!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"make_plan: seed must be an int, got {seed!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"make_plan: steps must be an int >= 1, got {steps!r}")
    overlap_s = _check_number("overlap_s", overlap_s, 0.0)
    min_s = _check_number("min_s", min_s, 0.0, strict=True)
    max_s = _check_number("max_s", max_s, 0.0, strict=True)
    if min_s > max_s:
        raise ValueError(f"make_plan: min_s ({min_s}) > max_s ({max_s})")

    shots = [int(s) for s in shots]
    for s in shots:
        if not 0 < s < frames:
            raise ValueError(f"make_plan: shot cut {s} outside (0, {frames})")
    if any(b <= a for a, b in zip(shots, shots[1:])):
        raise ValueError(f"make_plan: shot cuts must be strictly increasing (sorted, no duplicates): {shots}")

    duration = frames / fps
    clean_pauses = []
    for p in pauses:
        try:
            a, b = (float(x) for x in p)
        except (TypeError, ValueError):
            raise ValueError(f"make_plan: a pause must be a (start_s, end_s) pair, got {p!r}") from None
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b <= a:
            raise ValueError(f"make_plan: bad pause {p!r}: need 0 <= start < end")
        if clean_pauses and a < clean_pauses[-1][1]:
            raise ValueError(f"make_plan: pauses must be sorted and non-overlapping, {p!r} after {clean_pauses[-1]}")
        clean_pauses.append((a, b))
    spans = [(a, min(b, duration)) for a, b in clean_pauses if a < duration]

    if target_s is None:
        wanted = 1 if replicas == 1 else 2 * replicas
        target_s = round(min(max(duration / wanted, min_s), max_s), 3)
    else:
        target_s = _check_number("target_s", target_s, 0.0, strict=True)
    target = max(1, round(target_s * fps))
    overlap = round(overlap_s * fps)

    # cut points: (frame, kind); 0 starts the first window
    cuts = [(0, "start")] + [(s, "shot") for s in shots]
    bounds = [c for c, _ in cuts] + [frames]
    points = []
    for (a, kind), b in zip(cuts, bounds[1:]):
        points.append((a, kind))
        length = b - a
        if length <= target:
            continue
        k = math.ceil(length / target)
        piece = length / k
        prev = a
        for i in range(1, k):
            ideal = a + round(i * piece)
            tol = piece / 4
            near = [m for m in (_pause_cut(p, ideal, fps) for p in spans) if prev < m < b and abs(m - ideal) <= tol]
            if near:
                cut = min(near, key=lambda m: (abs(m - ideal), m))
                points.append((cut, "silence"))
            else:
                cut = ideal
                points.append((cut, "forced"))
            prev = cut

    windows = []
    ends = [c for c, _ in points[1:]] + [frames]
    prev_own = 0
    for i, ((c, kind), end) in enumerate(zip(points, ends)):
        ov = min(overlap, prev_own) if kind == "forced" else 0
        start = c - ov
        cost = num_chunks(end - start, frame_num, motion_frame) * steps
        windows.append(Window(i, start, end, kind, ov, window_seed(seed, i), cost))
        prev_own = end - c
    plan = Plan(
        fps=fps,
        frames=frames,
        windows=windows,
        settings={
            "target_s": target_s,
            "overlap_s": overlap_s,
            "replicas": int(replicas),
            "seed": int(seed),
            "min_s": min_s,
            "max_s": max_s,
            "steps": int(steps),
        },
    )
    plan.check()
    return plan


_COLOURS = {
    "start": (90, 90, 90),
    "shot": (220, 40, 40),
    "silence": (40, 160, 60),
    "forced": (240, 140, 0),
}
_BARS = [(70, 120, 200), (120, 170, 235)]


def draw_plan(plan: Plan, wave_16k: np.ndarray | None, path_png: str | os.PathLike, *, width: int = 1200,
              height: int = 260) -> str:
    """Timeline picture: waveform envelope on top, windows as alternating-row bars with their
    index, overlaps shaded, seams as vertical lines coloured by kind (shot red, silence green,
    forced orange), a legend. Written atomically (temp file + rename). Returns the path."""
    from PIL import Image, ImageDraw

    if width < 100 or height < 120:
        raise ValueError(f"draw_plan: picture too small ({width}x{height}); need >= 100x120")
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    x0, x1 = 10, width - 10
    total = plan.frames

    def x(frame: float) -> int:
        return int(round(x0 + (x1 - x0) * frame / total))

    # waveform envelope (max |sample| per pixel column), over the plan's duration
    wave_top, wave_bot = 22, int(height * 0.45)
    mid = (wave_top + wave_bot) // 2
    d.line([(x0, mid), (x1, mid)], fill=(200, 200, 200))
    if wave_16k is not None and len(wave_16k):
        w = np.abs(np.asarray(wave_16k, dtype=np.float32))
        span = int(round(total / plan.fps * SAMPLE_RATE))  # samples of the plan's timeline
        n = min(len(w), span)
        edges = np.linspace(0, span, x1 - x0 + 1).astype(int)[:-1]
        env = np.maximum.reduceat(w[:n], np.minimum(edges, n - 1))
        env[edges >= n] = 0  # audio shorter than the plan: flat line
        env = env / (float(env.max()) or 1.0) * (wave_bot - wave_top) / 2
        for c, h in enumerate(env):
            d.line([(x0 + c, mid - h), (x0 + c, mid + h)], fill=(60, 60, 60))

    # window bars on two alternating rows, so overlaps are visible
    row_h = (height - wave_bot - 40) // 2
    rows = [wave_bot + 8, wave_bot + 8 + row_h + 4]
    for w in plan.windows:
        top = rows[w.index % 2]
        d.rectangle([x(w.start), top, max(x(w.end) - 1, x(w.start)), top + row_h - 1], fill=_BARS[w.index % 2])
        if w.overlap:
            d.rectangle([x(w.start), top, x(w.start + w.overlap), top + row_h - 1], fill=(150, 150, 150))
        d.text((x(w.start) + 3, top + 2), str(w.index), fill=(0, 0, 0))
    for w in plan.windows[1:]:
        seam = w.start + w.overlap
        d.line([(x(seam), wave_top), (x(seam), rows[1] + row_h)], fill=_COLOURS[w.cut], width=2)

    # legend + title
    d.text((x0, 4), f"{plan.frames} frames, {plan.frames / plan.fps:.1f} s, {len(plan.windows)} windows", fill=(0, 0, 0))
    lx = x0
    for k in ("shot", "silence", "forced"):
        d.rectangle([lx, height - 16, lx + 10, height - 6], fill=_COLOURS[k])
        d.text((lx + 14, height - 18), k, fill=(0, 0, 0))
        lx += 80
    d.rectangle([lx, height - 16, lx + 10, height - 6], fill=(150, 150, 150))
    d.text((lx + 14, height - 18), "overlap", fill=(0, 0, 0))

    return save_png(img, path_png)


def save_png(img, path_png: str | os.PathLike) -> str:
    """Write a PIL image as PNG atomically (temp file next to it, then rename)."""
    path = os.fspath(path_png)
    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")
    return path
