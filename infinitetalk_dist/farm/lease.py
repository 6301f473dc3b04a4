"""One driver per job store at a time: a lease file the driver keeps fresh.

``lock.json`` in the store names its owner (host, pid, a random token), the job and the time of
the owner's last heartbeat; the owner rewrites it every ``beat_s`` from a daemon thread. Another
driver (a second run of the same job, or a different job pointed at the same folder) is refused
while the heartbeat is younger than ``ttl_s``, and takes the lease over once it is older (the
owner was killed, its host lost), or at once when the owner ran on this host and its
process is gone (a killed driver rerun on the same machine). Plain files written whole (the store's atomic write), so it
works on any fsspec store; two drivers racing for a free lease both write and re-read it, and
the one whose token is not there backs off.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

from .store import JobStore, StoreError, _alive

__all__ = ["StoreLease"]

LOCK = "lock.json"
log = logging.getLogger(__name__)


class StoreLease:
    """The lease of ``store`` for job ``job`` (a context manager: acquire, keep fresh, release)."""

    def __init__(self, store: JobStore, job: str, *, ttl_s: float = 120.0, beat_s: float = 30.0):
        self.store, self.job, self.ttl_s, self.beat_s = store, job, float(ttl_s), float(beat_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made = False

    def __enter__(self) -> StoreLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _path(self) -> str:
        return self.store._p(LOCK)

    def read(self) -> dict | None:
        try:
            if not self.store.fs.exists(self._path()):
                return None
            with self.store.fs.open(self._path(), "rb") as f:
                return json.loads(f.read())
        except (OSError, ValueError):
            return None  # unreadable or half-written by a dead owner: as good as free

    def _write(self) -> None:
        data = json.dumps({"owner": self.owner, "job": self.job, "heartbeat": time.time(),
                           "ttl_s": self.ttl_s}).encode()
        try:
            self.store.fs.makedirs(self.store._p(""), exist_ok=True)
        except OSError as e:
            raise StoreError(f"job store {self.store.url}: cannot create the job folder ({type(e).__name__}: {e})") from e
        def write(tmp: str) -> None:  # not the store's window/manifest writer: the lease is its own file
            with self.store.fs.open(tmp, "wb") as f:
                f.write(data)

        self.store._put_atomic(write, self._path(), len(data),
                               f"cannot write {LOCK}", "the job's windows are unaffected")

    def acquire(self) -> None:
        held = self.read()
        if held and held.get("owner") != self.owner:
            age = time.time() - float(held.get("heartbeat", 0))
            if age < float(held.get("ttl_s", self.ttl_s)) and not _dead_here(str(held.get("owner", ""))):
                same = "this job" if held.get("job") == self.job else "another job"
                raise StoreError(f"job store {self.store.url} is in use by {held.get('owner')} ({same}; last "
                                 f"heartbeat {age:.0f} s ago): wait for it, or for its lease to expire "
                                 f"{float(held.get('ttl_s', self.ttl_s)) - age:.0f} s after its last heartbeat")
            log.warning("job store %s: taking over the lease of %s (no heartbeat for %.0f s, or its process on this "
                        "host is gone)", self.store.url, held.get("owner"), age)
        self._made = not self.store.fs.exists(self.store._p(""))  # a folder only the lease made goes with it
        self._stop.clear()
        self._write()
        if (self.read() or {}).get("owner") != self.owner:
            raise StoreError(f"job store {self.store.url}: another driver took the lease at the same moment")
        self._thread = threading.Thread(target=self._beat, name="itd-store-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            if (self.read() or {}).get("owner") != self.owner:
                log.error("job store %s: the lease was taken over by another driver", self.store.url)
                return
            try:
                self._write()
            except StoreError as e:  # the next beat tries again; the lease only expires after ttl_s
                log.warning("%s", e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if (self.read() or {}).get("owner") == self.owner:
            try:
                self.store.fs.rm(self._path())
                if self._made and not self.store.fs.ls(self.store._p("")):
                    self.store.fs.rmdir(self.store._p(""))  # bad input: no empty job folder left behind
            except OSError:
                pass
        self._thread = None


def _dead_here(owner: str) -> bool:
    """The owner ``host:pid:token`` ran on this host and its process is gone (a killed driver
    rerun on the same machine takes its store back at once, not after the ttl)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
