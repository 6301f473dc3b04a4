"""The job store: a job's finished windows and its manifest, on a local path or any fsspec URL.

Layout under the job's URL::

    manifest.json          the plan (JSON), the settings, the inputs' sha256, per-window state
    windows/00000.mkv      one finished window each, ``{index:05d}.mkv`` (FFV1; ``.mp4``: H.264,
                           farm.window_codec=h264)

``manifest.json`` looks like::

    {"format": "infinitetalk-dist-job", "version": 1,
     "plan": {...}, "settings": {...}, "inputs": {"video": "<sha256>", ...},
     "windows": {"0": {"state": "done", "sha256": "...", "size": 123}, "1": {"state": "pending"}}}

Rules:

- **Same job or nothing**: :meth:`JobStore.create_or_open` writes a new manifest, or opens an
  existing one only if its plan, settings and input hashes are equal to the ones given;
  anything else raises :class:`StoreError` (resuming a different job into a folder fails).
- **Atomic writes**: a window is uploaded under a temporary name inside ``windows/``, its size
  checked, then moved to its final name; the manifest is written to a temporary name and moved
  over ``manifest.json``. On a local disk the move is a ``rename`` (atomic); on an object store
  each object appears whole (a PUT), so readers never see a half-written file either way.
  A failure (unwritable store, disk full, any ``OSError``) raises :class:`StoreError`, removes
  the temporary file and leaves every earlier window and the manifest as they were.
- **Done means verified**: :meth:`JobStore.done` lists windows that the manifest records as done
  *and* whose file exists with the recorded size and sha256. A missing, truncated or corrupted
  file is reported with a ``UserWarning`` naming it and is treated as not done (it will be
  rendered again). A window file the manifest does not record (a crash between the move and the
  manifest update) is not done either.
- **One writer**: only the driver process writes the manifest (replicas hand their window files
  to the driver, which calls :meth:`put_window`). Two processes calling ``put_window`` on the
  same job concurrently could lose each other's manifest updates; nothing here locks.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from infinitetalk_dist.errors import InfiniteTalkError
from infinitetalk_dist.media.atomic import atomic_write

__all__ = ["JobStore", "StoreError", "hash_file", "job_id"]

MANIFEST = "manifest.json"
_FORMAT = "infinitetalk-dist-job"
_VERSION = 1
_CHUNK = 1 << 20


class StoreError(InfiniteTalkError, RuntimeError):
    """The job store can't be used: unwritable, full, unreachable, or holds a different job."""


def hash_file(path: str | os.PathLike, *, fs: fsspec.AbstractFileSystem | None = None) -> str:
    """sha256 (hex) of a file, read in 1 MiB chunks (a local path, or a path on ``fs``)."""
    h = hashlib.sha256()
    opener = fs.open if fs is not None else open
    with opener(os.fspath(path) if fs is None else path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj: Any, what: str) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, ...), or StoreError if not JSON."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serialisable: {e}") from e


def job_id(manifest: dict) -> str:
    """The job a manifest belongs to: sha256 of its plan, settings and input hashes."""
    body = {k: manifest.get(k) for k in ("plan", "settings", "inputs")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _plan_window_indices(plan: Any) -> list[int]:
    ws = plan.get("windows") if isinstance(plan, dict) else None
    if not isinstance(ws, list):
        return []
    return [int(w.get("index", i)) if isinstance(w, dict) else i for i, w in enumerate(ws)]


class JobStore:
    """A job's output location. ``JobStore(url)`` opens it without reading anything; use
    :meth:`create_or_open` to start or resume a job (it checks the manifest). ``window_ext``:
    the window files' extension (``mkv``: lossless FFV1, the default; ``mp4``: H.264)."""

    def __init__(self, url: str | os.PathLike, *, window_ext: str = "mkv"):
        self.url = os.fspath(url)
        self.window_ext = window_ext
        try:
            self.fs, self.root = url_to_fs(self.url)
        except (ImportError, ValueError, OSError) as e:
            raise StoreError(f"job store {self.url}: cannot open ({type(e).__name__}: {e})") from e
        self.root = self.root.rstrip("/") or "/"
        self._manifest: dict | None = None

    # -- paths ------------------------------------------------------------------------------

    def _p(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root != "/" else "/" + "/".join(parts)

    @property
    def is_local(self) -> bool:
        return "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    def window_path(self, index: int) -> str:
        """The window's file as a path on the store's filesystem (a URL for remote stores)."""
        p = self._wp(index)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def _wp(self, index: int) -> str:
        return self._p("windows", f"{int(index):05d}.{self.window_ext}")

    # -- manifest ---------------------------------------------------------------------------

    @classmethod
    def create_or_open(cls, url: str | os.PathLike, plan_json: str, settings: dict,
                       inputs: dict[str, str], *, window_ext: str = "mkv") -> JobStore:
        """Start a new job at ``url`` (writes the manifest) or resume the same job there.

        ``plan_json``: the plan's JSON text; ``settings``: the job's settings (JSON-able);
        ``inputs``: name -> sha256 of each input file (see :func:`hash_file`). An existing
        manifest must record an equal plan, settings and inputs, else :class:`StoreError`.
        """
        store = cls(url, window_ext=window_ext)
        try:
            plan = json.loads(plan_json)
        except (TypeError, ValueError) as e:
            raise StoreError(f"job store {store.url}: plan_json is not valid JSON ({e})") from e
        want = {"plan": plan, "settings": _canonical(settings, "settings"),
                "inputs": _canonical(inputs, "inputs")}
        existing = store._read_manifest()
        if existing is None:
            m = {"format": _FORMAT, "version": _VERSION, **want,
                 "windows": {str(i): {"state": "pending"} for i in _plan_window_indices(plan)}}
            try:
                store.fs.makedirs(store._p("windows"), exist_ok=True)
            except OSError as e:
                raise StoreError(f"job store {store.url}: cannot create the job folder "
                                 f"({type(e).__name__}: {e})") from e
            store._write_manifest(m)
            return store
        if existing.get("format") != _FORMAT:
            raise StoreError(f"job store {store.url}: {MANIFEST} is not an infinitetalk-dist job manifest")
        diffs = [k for k in ("plan", "settings", "inputs") if existing.get(k) != want[k]]
        if diffs:
            detail = ""
            if "inputs" in diffs:
                old, new = existing.get("inputs") or {}, want["inputs"]
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                detail = f" (inputs that differ: {', '.join(changed)})"
            elif "settings" in diffs:
                old, new = existing.get("settings") or {}, want["settings"]
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                detail = f" (settings that differ: {', '.join(changed)})"
            raise StoreError(f"job store {store.url} holds a different job: its "
                             f"{' and '.join(diffs)} differ{detail}; use another output location "
                             f"or delete {store._p(MANIFEST)} to start over")
        store._manifest = existing
        try:
            store.fs.makedirs(store._p("windows"), exist_ok=True)
        except OSError:
            pass  # read-only resume (e.g. stitching only) is fine
        return store

    @property
    def manifest(self) -> dict:
        """The manifest (read from the store on first use)."""
        if self._manifest is None:
            m = self._read_manifest()
            if m is None:
                raise StoreError(f"job store {self.url}: no {MANIFEST} (not a job folder)")
            self._manifest = m
        return self._manifest

    def _read_manifest(self) -> dict | None:
        path = self._p(MANIFEST)
        try:
            if not self.fs.exists(path):
                return None
            with self.fs.open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StoreError(f"job store {self.url}: cannot read {MANIFEST} ({type(e).__name__}: {e})") from e
        try:
            m = json.loads(data)
        except ValueError as e:
            raise StoreError(f"job store {self.url}: {MANIFEST} is not valid JSON ({e})") from e
        if not isinstance(m, dict):
            raise StoreError(f"job store {self.url}: {MANIFEST} is not a JSON object")
        return m

    def _write_manifest(self, m: dict) -> None:
        data = json.dumps(m, indent=1, sort_keys=True).encode()
        self._put_atomic(lambda tmp: self._write_bytes(tmp, data), self._p(MANIFEST), len(data),
                         f"cannot write {MANIFEST}", "the previous manifest is unchanged")
        self._manifest = m

    def _put_atomic(self, write, final: str, size: int, what: str, kept: str) -> None:
        """``write(tmp)`` to a temp name next to ``final``, check its size, move it to ``final``;
        any OSError -> StoreError and no temp file left (``final`` is the old or the new file,
        never a partial one)."""
        try:
            with atomic_write(final, fs=self.fs) as tmp:
                write(tmp)
                got = self.fs.size(tmp)
                if got != size:
                    raise OSError(f"{tmp}: wrote {got} bytes, expected {size}")
        except OSError as e:
            raise StoreError(f"job store {self.url}: {what} ({type(e).__name__}: {e}); {kept}") from e

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open(path, "wb") as f:
            f.write(data)
            with contextlib.suppress(AttributeError, OSError, ValueError, NotImplementedError):
                f.flush()
                os.fsync(f.fileno())

    # -- windows ----------------------------------------------------------------------------

    def put_window(self, index: int, local_mp4_path: str | os.PathLike) -> str:
        """Upload a finished window atomically and mark it done; returns its sha256.

        :meth:`upload_window` then :meth:`record_window` (the single-process path). Raises
        :class:`StoreError` on any write failure; what was done before stays done.
        """
        digest, size = self.upload_window(index, local_mp4_path)
        self.record_window(index, digest, size)
        return digest

    def upload_window(self, index: int, local_mp4_path: str | os.PathLike) -> tuple[str, int]:
        """Copy a finished window's file into ``windows/{index:05d}.<ext>`` atomically (temporary
        name, size check, move) without touching the manifest: replicas call this, the driver
        then records it (:meth:`record_window`). Returns ``(sha256, size)``."""
        index = int(index)
        src = os.fspath(local_mp4_path)
        try:
            size = os.path.getsize(src)
            digest = hash_file(src)
        except OSError as e:
            raise StoreError(f"window {index}: cannot read {src} ({type(e).__name__}: {e})") from e
        if size == 0:
            raise StoreError(f"window {index}: {src} is empty")

        def upload(tmp: str) -> None:
            self.fs.makedirs(self._p("windows"), exist_ok=True)
            self.fs.put_file(src, tmp)

        self._put_atomic(upload, self._wp(index), size, f"cannot store window {index}",
                         "earlier windows are unaffected")
        return digest, size

    def record_window(self, index: int, digest: str, size: int) -> None:
        """Mark an uploaded window done in the manifest (written atomically). The file must be
        in the store with ``size`` bytes; its sha256 is checked on every :meth:`done`."""
        index = int(index)
        path = self._wp(index)
        try:
            got = self.fs.size(path) if self.fs.exists(path) else None
        except OSError as e:
            raise StoreError(f"job store {self.url}: cannot read window {index} ({e})") from e
        if got != size:
            raise StoreError(f"job store {self.url}: window {index} file {self.window_path(index)} has "
                             f"{got} bytes, the replica reported {size}")
        # The store's manifest as it is now (another driver of this job may have recorded windows
        # since), and still this job's: a different job that took the folder over is an error,
        # never a film made of two jobs' windows.
        new = self._ours("window {} not recorded".format(index))
        new.setdefault("windows", {})[str(index)] = {"state": "done", "sha256": digest, "size": int(size)}
        self._write_manifest(new)

    def _ours(self, what: str) -> dict:
        """The manifest read from the store now, checked to be this job's (:func:`job_id`)."""
        now = self._read_manifest()
        if now is None or job_id(now) != job_id(self.manifest):
            raise StoreError(f"job store {self.url}: {MANIFEST} now belongs to another job (it was removed or "
                             f"replaced while this one ran); {what}")
        return now

    def put_file(self, name: str, local_path: str | os.PathLike) -> str:
        """Store a job artefact (report, pictures) at ``name`` under the job folder, atomically.
        Returns its path on the store."""
        src = os.fspath(local_path)
        final = self._p(name)
        self._put_atomic(lambda tmp: self.fs.put_file(src, tmp), final, os.path.getsize(src),
                         f"cannot write {name}", "the job's windows are unaffected")
        return final if self.is_local else self.fs.unstrip_protocol(final)

    def done(self, *, verify: bool = True) -> set[int]:
        """Windows whose file exists with the size (and, with ``verify``, the sha256) recorded
        in the manifest. Anything else recorded as done warns, naming the file, and is left out."""
        out: set[int] = set()
        for key, rec in sorted(self.manifest.get("windows", {}).items(), key=lambda kv: int(kv[0])):
            if rec.get("state") != "done":
                continue
            i = int(key)
            path = self._wp(i)
            why = None
            try:
                if not self.fs.exists(path):
                    why = "is missing"
                elif (size := self.fs.size(path)) != rec.get("size"):
                    why = f"has {size} bytes, the manifest recorded {rec.get('size')} (truncated or replaced)"
                elif verify and hash_file(path, fs=self.fs) != rec.get("sha256"):
                    why = "does not match its recorded sha256 (corrupted)"
            except OSError as e:
                why = f"cannot be read ({type(e).__name__}: {e})"
            if why:
                warnings.warn(f"job store {self.url}: window {i} file {self.window_path(i)} {why}; "
                              "treating it as not done", UserWarning, stacklevel=2)
            else:
                out.add(i)
        return out

    @contextlib.contextmanager
    def open_window(self, index: int) -> Iterator[str]:
        """Context manager yielding a *local* path to the window's MP4 (for PyAV).

        Local stores yield the file itself; remote ones download it to a temporary file that is
        removed on exit (so reading the windows one after another uses one window of disk).
        """
        path = self._wp(index)
        try:
            exists = self.fs.exists(path)
        except OSError as e:
            raise StoreError(f"job store {self.url}: cannot read window {index} ({e})") from e
        if not exists:
            raise StoreError(f"job store {self.url}: window {index} ({self.window_path(index)}) does not exist")
        if self.is_local:
            yield path
            return
        d = scratch_dir()
        try:
            local = os.path.join(d, f"{int(index):05d}.{self.window_ext}")
            try:
                self.fs.get_file(path, local)
            except OSError as e:
                raise StoreError(f"job store {self.url}: cannot download window {index} ({e})") from e
            yield local
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def iter_windows(self, windows: Iterable[Any]) -> Iterator[tuple[Any, str]]:
        """``(window, local_path)`` for each window (objects with ``index``), one at a time: the
        previous download is removed when the next is requested. Feed this to ``stitch``. The
        store must still hold this job, and every window the file recorded for it (its sha256,
        checked again here: a window replaced after it was recorded is a StoreError)."""
        records = self._ours("not stitching").get("windows", {})
        for w in windows:
            with self.open_window(w.index) as p:
                want = (records.get(str(w.index)) or {}).get("sha256")
                if want is None or hash_file(p) != want:
                    raise StoreError(f"job store {self.url}: window {w.index} ({self.window_path(w.index)}) is not "
                                     "the file this job recorded (replaced or changed since); not stitching")
                yield w, p


SCRATCH = "itd-window-"


def scratch_dir() -> str:
    """A temp folder for one window's file, named after this process: a worker killed mid-window
    leaves it behind, and the next one started on the host removes the folders of dead processes."""
    for old in glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), f"{SCRATCH}*-*")):
        pid = os.path.basename(old)[len(SCRATCH):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
