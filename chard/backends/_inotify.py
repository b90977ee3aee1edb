"""Wake a waiter when a file is renamed into a directory: Linux inotify through ctypes.

The filesystem result backend writes every value by renaming a finished temporary file
over its key, so one ``IN_MOVED_TO`` event per store names the key that changed. Only
changes made through this machine's kernel are seen (not another host's writes on a
network filesystem): callers keep a slow re-read as a safety net.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import struct
import sys
import weakref
from pathlib import Path

logger = logging.getLogger(__name__)

IN_MOVED_TO = 0x00000080
IN_CLOSE_WRITE = 0x00000008
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.inotify_init1  # noqa: B018 - present, or AttributeError
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def is_available() -> bool:
    """Return whether this platform has inotify."""
    return _LIBC is not None


class DirectoryWatch:
    """An inotify descriptor watching one directory for files renamed (or written) into it."""

    def __init__(self, directory: Path) -> None:
        if _LIBC is None:
            raise OSError("inotify is not available on this platform")
        fd = _LIBC.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        wd = _LIBC.inotify_add_watch(fd, os.fsencode(directory), IN_MOVED_TO | IN_CLOSE_WRITE)
        if wd < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch on {directory} failed")
        self.fd = fd
        # Closed with its owner (a thread-local dies with its thread), or by close().
        self._finalizer = weakref.finalize(self, _close, fd)

    def wait(self, timeout: float) -> set[str] | None:
        """Block up to ``timeout`` for events; return the names they carry (None: timed out)."""
        poller = select.poll()  # not select(): descriptors may be numbered past 1024
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(max(timeout, 0.0) * 1000):
            return None
        names: set[str] = set()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.fd, 64 * 1024):
                offset = 0
                while offset + _EVENT.size <= len(data):
                    _, _, _, length = _EVENT.unpack_from(data, offset)
                    raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                    names.add(os.fsdecode(raw.rstrip(b"\0")))
                    offset += _EVENT.size + length
        return names

    def close(self) -> None:
        self._finalizer()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
