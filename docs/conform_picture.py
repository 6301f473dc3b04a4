"""Draw docs/conform.png: one frame of a conformed dub next to its source (README picture).

    python docs/conform_picture.py        # tiny preset on the CPU, ~1 minute

The source is 1280x720 at 24000/1001 fps (scikit-image's astronaut on a plain background, a
hard cut after 1 s); `generate --conform --codec ffv1` re-renders the face. With the tiny
preset's random weights the face region shows noise colour-matched to the source, which makes
the mask visible; with real weights it is the dubbed face. Outside the mask the frames are
the source's bit for bit.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import av
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conform.test_conform import FAST, _wav, two_shots  # noqa: E402

from infinitetalk_dist.launch.cli import main  # noqa: E402


def run(folder: Path, frame: int = 12) -> Path:
    src = two_shots(folder / "source.mp4")
    out = folder / "dub.mkv"
    assert main(["generate", "--video", str(src), "--audio", _wav(folder / "s.wav", 1.6, 16000, 1, 1),
                 "--conform", "--codec", "ffv1", "-o", str(out), *FAST]) == 0

    def nth(path):
        with av.open(str(path)) as c:
            for k, f in enumerate(c.decode(c.streams.video[0])):
                if k == frame:
                    return f.to_image()

    before, after = nth(src), nth(out)
    w, h = before.size
    sheet = Image.new("RGB", (w, h * 2 + 60), "white")
    sheet.paste(before, (0, 40)), sheet.paste(after, (0, h + 60))
    d = ImageDraw.Draw(sheet)
    d.text((8, 12), f"source frame {frame} (1280x720, 23.976 fps)", fill="black")
    d.text((8, h + 44), "conformed (--conform --codec ffv1, tiny preset): only the masked face region changed",
           fill="black")
    png = REPO / "docs" / "conform.png"
    sheet.resize((w // 2, (h * 2 + 60) // 2)).save(png, optimize=True)
    return png


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(run(Path(tmp)))
