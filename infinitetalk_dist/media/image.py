"""The reference picture: one RGB image, EXIF orientation applied, sanity-checked."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from infinitetalk_dist.errors import MediaError

from .container import check_file

__all__ = ["read_image"]


def read_image(path: str | os.PathLike, *, max_aspect: float = 8.0) -> np.ndarray:
    """Read a picture as ``uint8 [H, W, 3]`` RGB with its EXIF orientation applied.

    Any format PIL reads; the first frame of animated/multi-page files. Alpha is dropped as the
    reference's ``Image.open(p).convert("RGB")`` does (transparent pixels keep their stored RGB),
    16-bit greyscale is scaled to 8 bits. Raises :class:`MediaError` for a missing file, a file
    that is not an image or is corrupt/truncated, a zero-sized image, and an aspect ratio more
    extreme than ``max_aspect`` : 1 either way (``None`` disables that check).
    """
    p = check_file(path)
    try:
        with Image.open(p) as im:
            try:
                im.load()
            except Image.DecompressionBombError as e:
                raise MediaError(p, f"image too large to decode safely ({e})") from e
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise MediaError(p, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
            try:
                im = ImageOps.exif_transpose(im)
            except Exception as e:  # a broken EXIF block must not lose a good picture
                warnings.warn(f"{p}: ignoring unreadable EXIF orientation ({e})", stacklevel=2)
            if im.mode.startswith("I;16"):
                arr16 = np.asarray(im, dtype=np.uint16)
                rgb = np.repeat(((arr16.astype(np.uint32) + 128) // 257).astype(np.uint8)[..., None], 3, -1)
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except MediaError:
        raise
    except UnidentifiedImageError as e:
        raise MediaError(p, "not a recognised image file") from e
    except Image.DecompressionBombError as e:
        raise MediaError(p, f"image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise MediaError(p, f"corrupt image ({type(e).__name__}: {e})") from e
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise MediaError(p, f"image has zero size ({w}x{h})")
    if max_aspect is not None and max(h, w) / min(h, w) > max_aspect:
        raise MediaError(p, f"aspect ratio {w}x{h} ({max(h, w) / min(h, w):.1f}:1) is beyond the "
                            f"supported 1:{max_aspect:g}")
    return np.ascontiguousarray(rgb)

