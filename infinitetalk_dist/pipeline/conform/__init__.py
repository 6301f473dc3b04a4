"""Conform mode (``--conform``): dub a source video by re-rendering only the speaker's face.

    boxes.py      where the speaker is: a crop box per shot (given, or found and tracked)
    composite.py  the rendered crop back into the full-resolution source frame (feathered
                  mask, colour-matched); every pixel outside the mask is the source's
    retime.py     25 fps generated frames onto the source's own timestamps
"""
