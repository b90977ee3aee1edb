"""Wake-up doorbells between processes on one machine, over unix datagram sockets.

SQLite cannot notify another connection, so a consumer waiting for work would
have to poll. Instead each waiting broker instance binds a datagram socket in a
directory next to the database (``<db>.wake/``), and a publisher sends one byte
to every socket there after its commit. A waiter therefore sleeps in the kernel
(near-zero CPU) and wakes within a millisecond of a publish; polling remains only
as a slow safety net (ETAs falling due, leases lapsing, a lost datagram).

Everything here is best effort: a full socket buffer means the waiter is already
due to wake, a refused send means the socket's owner died (the file is removed),
and any other failure only costs latency, never correctness.

Unix socket paths are limited to ~107 bytes, which a deep ``tmp_path`` exceeds;
on Linux the directory is then reached through ``/proc/self/fd/<dirfd>/``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

SUFFIX = ".sock"
#: Longest socket path used as is (``sun_path`` holds 108 bytes with the NUL).
_MAX_PATH = 100
_PROC_FD = Path("/proc/self/fd")


def wake_dir(db_path: Path) -> Path:
    """Return the doorbell directory of the database at ``db_path``."""
    return db_path.with_name(db_path.name + ".wake")


class _DirRef:
    """Turn file names in ``directory`` into socket addresses short enough to use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None
        if len(os.fsencode(directory)) + 40 > _MAX_PATH and _PROC_FD.is_dir():
            self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def address(self, name: str) -> str:
        if self._fd is not None:
            return f"{_PROC_FD}/{self._fd}/{name}"
        return str(self.directory / name)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def ring(directory: Path) -> None:
    """Send one byte to every doorbell in ``directory``; remove the dead ones.

    Called after a commit that made messages available. Never raises.
    """
    try:
        names = [e.name for e in os.scandir(directory) if e.name.endswith(SUFFIX)]
    except OSError:
        return  # no directory: nobody has ever waited
    if not names:
        return
    try:
        ref = _DirRef(directory)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError as exc:
        logger.debug("Cannot ring doorbells in %s: %s", directory, exc)
        return
    try:
        sender.setblocking(False)
        for name in names:
            _ring_one(sender, ref, directory, name)
    finally:
        sender.close()
        ref.close()


def _ring_one(sender: socket.socket, ref: _DirRef, directory: Path, name: str) -> None:
    try:
        sender.sendto(b"\x01", ref.address(name))
    except (BlockingIOError, FileNotFoundError):
        pass  # buffer full: a wake-up is already pending; or the waiter just left
    except ConnectionRefusedError:
        # Nobody reads this socket any more: its process died without closing.
        with contextlib.suppress(OSError):
            os.unlink(directory / name)
    except OSError as exc:
        if exc.errno != errno.ENOBUFS:
            logger.debug("Cannot ring doorbell %s/%s: %s", directory, name, exc)


class Doorbell:
    """A socket that :func:`ring` wakes; owned by one broker instance in one process.

    Not for concurrent :meth:`wait` calls from several threads: one would take
    the wake-up and the other would fall back to its poll interval.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.path = directory / f"{uuid.uuid4().hex[:16]}{SUFFIX}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ref = _DirRef(directory)
        try:
            self._sock.bind(ref.address(self.path.name))
        except OSError:
            self._sock.close()
            raise
        finally:
            ref.close()

    def drain(self) -> None:
        """Discard pending wake-ups (from publishes we have already seen)."""
        self._sock.settimeout(0.0)
        try:
            while self._sock.recv(64):
                pass
        except OSError:  # BlockingIOError: empty
            pass

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a ring; return whether one came."""
        self._sock.settimeout(max(timeout, 0.0))
        try:
            self._sock.recv(64)
        except OSError:  # TimeoutError, BlockingIOError, or closed under us
            return False
        self.drain()
        return True

    def close(self) -> None:
        """Close the socket, and remove its file if this process created it."""
        self._sock.close()
        if os.getpid() == self.pid:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def abandon(self) -> None:
        """Close the inherited copy after ``fork()``, leaving the parent's file alone."""
        self._sock.close()
