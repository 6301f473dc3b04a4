"""A job's inputs, read and checked before any model is built (bad input costs nothing).

:class:`Sources` is what the driver of a job holds (the speakers' tracks, the audio the MP4
carries, the frame count); :class:`Reference` is the part a renderer needs to anchor its
chunks (the picture, or the source video with its frame index). A ``Reference`` pickles
without its open decoder and with the index already built, so farm replicas seek straight to
the frames they need instead of decoding the whole film again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from infinitetalk_dist.errors import InputError
from infinitetalk_dist.media import VideoSource, load_audio, read_image
from infinitetalk_dist.timeline import FPS, num_video_frames

from .audio import SpeakerAudio, prepare_audio, prepare_speakers
from .conditioning import image_to_tensor
from .request import InputOptions

__all__ = ["MIX_RATE", "Reference", "Sources", "check_destination", "check_not_an_input", "entry_at",
           "resolve_sources"]

log = logging.getLogger(__name__)

MIX_RATE = 48000  # Hz of a two-speaker mix the MP4 carries (the un-normalised tracks, arranged)


@dataclass
class Reference:
    """What each chunk is anchored on: the picture (I2V, and frame 0 of V2V) or the source
    video's frame on screen at the chunk's start (V2V)."""

    picture: Image.Image
    video_path: str | None = None
    video_index: Any = None  # VideoSource.index: the frame timestamps, shipped instead of rebuilt
    crops: tuple | None = None  # conform: ((start_s, (left, top, right, bottom)), ...) per shot
    motion: str = "none"  # I2V: a virtual camera over the picture (zoom | pan | none), see moved_picture
    _video: VideoSource | None = field(default=None, repr=False, compare=False)

    def video(self) -> VideoSource | None:
        if self.video_path is not None and self._video is None:
            self._video = VideoSource(self.video_path, index=self.video_index)
        return self._video

    def frame(self, index: int, hw: tuple[int, int]) -> torch.Tensor:
        """Job frame ``index`` as the model's reference image ``[3, H, W]`` in [-1, 1]."""
        video = self.video()
        if video is None and self.motion != "none":
            return image_to_tensor(moved_picture(self.picture, self.motion, index / FPS), hw)
        if video is None or index == 0:
            return image_to_tensor(self.picture, hw)
        frame = video.frame_for_output_index(index, FPS, clamp=True)
        if self.crops:
            frame = _crop(frame, self.box_at(index / FPS))
        return image_to_tensor(Image.fromarray(np.ascontiguousarray(frame)), hw)

    def box_at(self, seconds: float) -> tuple[int, int, int, int]:
        """Conform: the crop box of the shot on screen at ``seconds``."""
        return entry_at(self.crops, seconds)

    def cropped(self, crops) -> Reference:
        """Conform: this video reference seen through one crop box per shot (``crops``:
        ``(start_s, box)`` sorted by start); the picture becomes frame 0's crop."""
        crops = tuple((float(t), tuple(int(v) for v in box)) for t, box in crops)
        picture = Image.fromarray(np.ascontiguousarray(_crop(np.asarray(self.picture), crops[0][1])))
        return Reference(picture, self.video_path, self.video_index, crops, _video=self._video)

    def for_workers(self) -> Reference:
        """A copy to send to other processes: the video's frame index built (once, here)."""
        video = self.video()
        if video is None:
            return Reference(self.picture, motion=self.motion)
        path = self.video_path if "://" in self.video_path else str(Path(self.video_path).resolve())
        return Reference(self.picture, path, video.index, self.crops)

    def __getstate__(self):
        return {**self.__dict__, "_video": None}  # an open decoder does not travel


MOTION_PERIOD_S = 12.0  # one slow zoom in and out, or one pan across and back
MOTION_SPAN = 0.12  # of the picture's size: the zoom's depth, the pan's crop margin


def moved_picture(picture: Image.Image, motion: str, seconds: float) -> Image.Image:
    """The picture as a slowly moving camera sees it ``seconds`` in: ``zoom`` into the centre
    and back out (the whole picture at 0 s), or ``pan`` a crop smaller by ``MOTION_SPAN`` from
    the centre to one side, the other and back. The official tip for long I2V — dub such a
    video as V2V, so that the chunks' anchors move — done here frame by frame, no video written."""
    w, h = picture.size
    phase = 2 * np.pi * seconds / MOTION_PERIOD_S
    if motion == "zoom":
        scale = 1 - MOTION_SPAN * (1 - np.cos(phase)) / 2
        cx, cy = w / 2, h / 2
    elif motion == "pan":
        scale = 1 - MOTION_SPAN
        cx, cy = w / 2 + (1 - scale) * w / 2 * np.sin(phase), h / 2
    else:
        raise ValueError(f"unknown i2v motion {motion!r}")
    box = (cx - scale * w / 2, cy - scale * h / 2, cx + scale * w / 2, cy + scale * h / 2)
    return picture.resize((w, h), Image.Resampling.BICUBIC, box=tuple(float(v) for v in box))


def entry_at(entries, seconds: float):
    """The value of the last ``(start_s, value)`` entry (sorted by start) starting at or before
    ``seconds``; the first entry's before any."""
    value = entries[0][1]
    for start, v in entries:
        if start <= seconds + 1e-9:
            value = v
    return value


def _crop(frame: np.ndarray, box) -> np.ndarray:
    left, top, right, bottom = box
    return frame[top:bottom, left:right]


@dataclass
class Sources:
    """Checked inputs of one job."""

    reference: Reference
    audio: SpeakerAudio  # loudness-normalised 16 kHz tracks (model input)
    mix_original: np.ndarray | str  # what the MP4 carries: the original file, or the two-speaker mix at MIX_RATE
    frames: int  # output frames = the audio's frame count at 25 fps
    files: dict[str, str]  # input name -> the file read (demo inputs included): image/video, audio, audio2

    @property
    def picture(self) -> Image.Image:
        return self.reference.picture

    @property
    def mix_rate(self) -> int | None:
        """Sample rate of ``mix_original`` when it is samples (None: a file)."""
        return None if isinstance(self.mix_original, str) else MIX_RATE


def check_destination(path: str | Path, what: str = "output") -> None:
    """Before any work: ``path`` is not a folder, and its folder exists (made if missing) and
    takes a file (a probe file is created there and removed): an unwritable place fails now,
    not after the render. URLs (fsspec stores) are left to their filesystem."""
    import tempfile

    if "://" in str(path):
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder: give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=f".{p.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise InputError(f"{what} {p}: cannot write in {p.parent} ({e.strerror or e})") from None


def check_not_an_input(path: str | Path, files, what: str = "output") -> None:
    """``path`` (an output or a job store) is none of the job's input files and not inside one."""
    if "://" in str(path):
        return
    p = Path(path).expanduser().resolve()
    for f in files:
        src = Path(f).expanduser().resolve()
        if p == src or src in p.parents:
            raise InputError(f"{what} {path} is the input {f}: it would be overwritten; choose another name")


def resolve_sources(inputs: InputOptions, output: Path, *, seed: int, allow_demo: bool) -> Sources:
    """Read and check every input file (no model needed). With no inputs at all and
    ``allow_demo`` (the tiny preset), demo inputs made from ``seed`` are written and used."""
    image, video, audio, audio2 = inputs.image, inputs.video, inputs.audio, inputs.audio2
    if image and video:
        raise InputError("give either input.image (--image) or input.video (--video), not both")
    if not (image or video or audio):
        if not allow_demo:
            raise InputError("no inputs: give --image/--video and --audio (demo inputs are for --preset tiny)")
        from infinitetalk_dist.samples import write_demo_inputs

        folder = Path(inputs.demo_dir) if inputs.demo_dir else output.parent / "demo_inputs"
        image, audio = (str(p) for p in write_demo_inputs(folder, seed=seed))
        log.info("no inputs given: generated demo inputs %s and %s", image, audio)
    if not (image or video):
        raise InputError("missing the reference picture: give --image or --video")
    if not audio:
        raise InputError("missing the speech track: give --audio")

    if video:
        source = VideoSource(video)
        reference = Reference(Image.fromarray(np.ascontiguousarray(source.frame(0))), str(video), _video=source)
    else:
        reference = Reference(Image.fromarray(read_image(image)), motion=inputs.i2v_motion)

    mode = inputs.audio_mode
    speakers = prepare_audio(audio, audio2, mode)
    if audio2:  # two speakers: the un-normalised mix, arranged like the model's tracks
        original = prepare_speakers(load_audio(audio, MIX_RATE), load_audio(audio2, MIX_RATE), mode).mix
    else:
        original = str(audio)
    named = {"image": image, "video": video, "audio": audio, "audio2": audio2}
    files = {k: str(v) for k, v in named.items() if v}
    return Sources(reference, speakers, original, num_video_frames(speakers.mix.shape[0]), files)
