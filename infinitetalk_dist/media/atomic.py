"""Write a file whole or not at all: a hidden temp file next to it, renamed over it when complete.

Readers (players, resumed jobs, the stitcher) then see the previous file or the finished one,
never a partial one, even if the writer dies half-way. No PyAV here: the job store uses it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
from collections.abc import Iterator
from typing import Any

__all__ = ["atomic_write"]

_TRIES = 100


@contextlib.contextmanager
def atomic_write(final: str | os.PathLike, *, fs: Any = None) -> Iterator[str]:
    """Yield a temp path next to ``final`` to write to; on success move it over ``final``.

    The temp file is ``.{name}.{8 hex}.part`` in ``final``'s folder. Locally (``fs`` None) it is
    created exclusively (so concurrent writers of the same file never share one; the umask
    applies to its mode), fsynced, ``os.replace``d over ``final`` and the folder fsynced. With an
    fsspec filesystem ``fs`` the name is only reserved, the writer creates it on ``fs`` and it is
    moved with ``fs.mv`` (on an object store each object appears whole anyway).

    On any exception in the block or in the move, the temp file is removed and the exception
    re-raised: ``final`` is untouched (absent, or the previous file). A check that must pass
    before the file appears (a size check, say) goes at the end of the block.
    """
    final = os.fspath(final)
    if fs is None:
        tmp = _create_temp(final)
    else:
        folder, name = posixpath.split(final)
        tmp = posixpath.join(folder, _temp_name(name))
    try:
        yield tmp
        if fs is None:
            _fsync(tmp)
            os.replace(tmp, final)
        else:
            fs.mv(tmp, final)
    except BaseException:
        _remove_quietly(tmp, fs)
        raise
    if fs is None:
        _fsync(os.path.dirname(final) or ".")  # the rename itself survives a crash


def _temp_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(4)}.part"


STALE_S = 3600.0  # a temp file untouched this long belongs to a writer that died (SIGKILL, power)


def _sweep_stale(folder: str, name: str) -> None:
    """Remove ``.{name}.*.part`` files of writers that died mid-write (nothing else cleans them).
    A live writer streams into its file, so only files untouched for ``STALE_S`` go."""
    import glob
    import time

    for old in glob.glob(os.path.join(glob.escape(folder or "."), f".{glob.escape(name)}.*.part")):
        with contextlib.suppress(OSError):
            if time.time() - os.path.getmtime(old) > STALE_S:
                os.unlink(old)


def _create_temp(final: str) -> str:
    folder, name = os.path.split(final)
    _sweep_stale(folder, name)
    for _ in range(_TRIES):
        tmp = os.path.join(folder, _temp_name(name))
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{final}: could not create a temporary file ({_TRIES} names taken)")


def _fsync(path: str) -> None:
    """Flush a file's or folder's data to disk; best effort (not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(tmp: str, fs: Any) -> None:
    with contextlib.suppress(Exception):
        if fs is None:
            os.unlink(tmp)
        elif fs.exists(tmp):
            fs.rm(tmp)
