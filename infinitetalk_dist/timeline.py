"""The job's clock: output frames at 25 fps, 16 kHz model audio, and chunk arithmetic.

One place for the numbers every layer shares. The model is trained at 25 fps with 16 kHz
wav2vec2 audio, so one output frame is 640 samples. A window of ``frames`` output frames is
rendered as a chain of chunks of ``frame_num`` frames (4n+1), each later chunk overlapping the
previous one by ``motion_frame`` frames; the plan prices a window by its chunk count and the
loop places its chunks with the same function.
"""

from __future__ import annotations

__all__ = ["FPS", "SAMPLES_PER_FRAME", "SAMPLE_RATE", "chunk_starts", "num_chunks", "num_video_frames"]

FPS = 25  # output frames per second (the model's)
SAMPLE_RATE = 16000  # Hz of the audio the model hears (wav2vec2)
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


def num_video_frames(num_samples: int, sr: int = SAMPLE_RATE, fps: float = FPS) -> int:
    """Frames the reference makes for ``num_samples`` of audio: ``int(len / sr * fps)`` (floor)."""
    return int(num_samples / sr * fps)


def chunk_starts(frames: int, frame_num: int, motion_frame: int) -> list[int]:
    """First frame of each chunk covering ``frames`` frames: ``[0]`` when one chunk holds them,
    else chunks advancing by ``frame_num - motion_frame`` until one reaches ``frames``."""
    if frame_num <= motion_frame:
        raise ValueError(f"frame_num ({frame_num}) must exceed motion_frame ({motion_frame})")
    starts = [0]
    while starts[-1] + frame_num < frames:
        starts.append(starts[-1] + frame_num - motion_frame)
    return starts


def num_chunks(frames: int, frame_num: int, motion_frame: int) -> int:
    """Chunks the streaming generator needs for ``frames`` output frames."""
    return len(chunk_starts(frames, frame_num, motion_frame))
