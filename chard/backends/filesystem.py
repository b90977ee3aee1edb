"""Celery's filesystem result backend: ``file:///path/to/dir``, one file per key.

For processes that share a directory (one machine, or a network filesystem) and no
server. Each key (``celery-task-meta-<id>``, group and chord keys) is a file of that name
holding exactly the value Celery writes (the JSON meta), so Celery and chard read each
other's results. A value is written to a temporary file in the same directory and renamed
over the key: a reader sees the old value or the new one, never half of one.

Expiry (``result_expires``): a file older than it (by its modification time, as Celery's
``cleanup`` reckons) is invisible to reads at once, and writers delete expired files at
most once per ``purge_interval`` per process: no beat task needed.

Chord counters: a read-add-rename under an exclusive ``flock`` on ``.chard-counters.lock``
in the directory, so they are atomic across the processes that share it.

Waiting: on Linux a waiting ``get()`` sleeps on inotify (:mod:`chard.backends._inotify`)
and wakes when a file of its keys is renamed into the directory; it also reads its keys
again at least once a second, since another host's writes on a network filesystem raise no
local event. Elsewhere it polls with the base class's back-off (5 ms doubling up to the
``interval`` of ``get``, 0.5 s by default): a bounded number of cheap reads per second.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from chard.backends import _inotify
from chard.backends.base import GROUP_KEY_PREFIX, TASK_KEY_PREFIX, ResultBackend
from chard.exceptions import BackendError, ImproperlyConfigured

logger = logging.getLogger(__name__)

#: Seconds between two sweeps of expired files by one process.
DEFAULT_PURGE_INTERVAL = 60.0
_LOCK_NAME = ".chard-counters.lock"
_TMP_PREFIX = ".tmp-"


def parse_file_url(url: str) -> Path:
    """Return the directory a ``file:///path`` URL names (absolute).

    Raises:
        ImproperlyConfigured: not a file URL, or no path.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "file":
        raise ImproperlyConfigured(f"not a file URL: {url!r}; use 'file:///path/to/results'")
    path = urllib.parse.unquote(parts.netloc + parts.path)
    if not path:
        raise ImproperlyConfigured(
            f"file URL {url!r} names no directory; use 'file:///absolute/path/to/results'"
        )
    return Path(path).resolve()


class FilesystemResultBackend(ResultBackend):
    """Store results as files in one directory, shared by the processes that can reach it.

    Options:
        purge_interval: seconds between sweeps of expired files (default 60).
    """

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, expires=expires, options=options)
        self.path = parse_file_url(url)
        self.purge_interval = float(self.options.get("purge_interval", DEFAULT_PURGE_INTERVAL))
        self._next_purge = 0.0
        self._watch = threading.local()  # .fd: this thread's DirectoryWatch
        self.has_native_wait = _inotify.is_available()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImproperlyConfigured(
                f"cannot create the result directory {str(self.path)!r}: {exc.strerror}; "
                "point result_backend at a writable directory"
            ) from exc
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ImproperlyConfigured(
                f"the result directory {str(self.path)!r} is not writable; fix its permissions "
                "or point result_backend elsewhere"
            )

    # -- primitives -------------------------------------------------------------------
    def _get(self, key: str) -> bytes | None:
        path = self._file(key)
        try:
            with open(path, "rb") as fh:
                if self._is_expired(os.fstat(fh.fileno()).st_mtime, time.time()):
                    return None
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read result file {str(path)!r}: {exc}") from exc

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._write(self._file(key), value)
        self._purge_expired()

    def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(key))

    def _incr(self, key: str, ttl: float | None) -> int:
        path = self._file(key)
        with self._counter_lock():
            current = self._get(key)
            value = int(current) + 1 if current is not None else 1
            self._write(path, str(value).encode())
        self._purge_expired()
        return value

    # -- waiting (inotify) ---------------------------------------------------------------
    def _listen(self, keys: Sequence[str], deadline: float | None) -> Mapping[str, bytes] | None:
        """Start this thread's watch of the directory before the keys are read.

        One watch per waiting thread, kept while the thread lives (closed with it): events
        that come between two waits only cause one extra read.
        """
        if self.has_native_wait and getattr(self._watch, "fd", None) is None:
            try:
                self._watch.fd = _inotify.DirectoryWatch(self.path)
            except OSError as exc:
                logger.warning("Cannot watch %s (%s); polling instead", self.path, exc)
                self.has_native_wait = False
        return None

    def _wait_for_values(self, keys: Collection[str], timeout: float) -> Mapping[str, bytes] | None:
        """Sleep until a file of ``keys`` is renamed in (None: read them), ``{}`` otherwise."""
        watch: _inotify.DirectoryWatch | None = getattr(self._watch, "fd", None)
        if watch is None:
            return super()._wait_for_values(keys, timeout)
        names = watch.wait(timeout)
        if names is None:
            return None  # a second without an event: read anyway (another host may have written)
        return None if names & {self._file(key).name for key in keys} else {}

    def close(self) -> None:
        """Close this thread's directory watch (other threads' close when they end)."""
        watch: _inotify.DirectoryWatch | None = getattr(self._watch, "fd", None)
        if watch is not None:
            self._watch.fd = None
            watch.close()

    # -- helpers ------------------------------------------------------------------------
    def _file(self, key: str) -> Path:
        """Return the file of ``key``: the key itself, quoted if it is not a plain name."""
        return self.path / urllib.parse.quote(key, safe="-_.@+=")

    def _write(self, path: Path, value: bytes) -> None:
        """Write ``value`` to ``path`` atomically: a temporary file renamed over it."""
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(value)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BackendError(f"cannot write result file {str(path)!r}: {exc}") from exc

    @contextlib.contextmanager
    def _counter_lock(self) -> Iterator[None]:
        fd = os.open(self.path / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _is_expired(self, mtime: float, now: float) -> bool:
        return self.expires is not None and mtime + self.expires <= now

    def _purge_expired(self) -> None:
        """Delete expired result files at most once per ``purge_interval`` in this process."""
        now = time.time()
        if self.expires is None or now < self._next_purge:
            return
        self._next_purge = now + self.purge_interval
        deleted = 0
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:  # housekeeping: the next writer tries again
            logger.warning("Cannot sweep expired results in %s: %s", self.path, exc)
            return
        for entry in entries:
            if not entry.name.startswith((TASK_KEY_PREFIX, GROUP_KEY_PREFIX)):
                continue
            with contextlib.suppress(OSError):
                if self._is_expired(entry.stat().st_mtime, now):
                    os.unlink(entry.path)
                    deleted += 1
        if deleted:
            logger.debug("Deleted %d expired result files from %s", deleted, self.path)
