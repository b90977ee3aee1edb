"""``chard multi``'s processes: start nodes detached, signal them by their pidfiles, wait.

A node is found only through the PID in its pidfile, never by a process name: two
deployments on one host, or a process that happens to be called ``chard``, are never
touched by mistake.

Starting a node spawns ``python -m chard ... worker`` in its own session (so a
terminal's hang-up or Ctrl-C does not reach it), stdin from ``/dev/null``, stdout and
stderr appended to its log file, and waits until the node is up or has failed: the
node writes ``ready`` to a pipe whose end it gets in ``CHARD_READY_FD``
(:func:`chard.cli.process.notify_ready_on`); if it dies first the pipe closes unwritten.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass, field
from pathlib import Path

from chard._utils.nodenames import node_format
from chard.cli.multinodes import MultiArgsError, Node
from chard.cli.process import READY_FD_ENV

#: Seconds a node may take to start consuming before ``start`` reports it as failed.
START_TIMEOUT = float(os.environ.get("CHARD_MULTI_START_TIMEOUT", "60"))
#: Lines of a failed node's log that ``start`` prints.
LOG_TAIL_LINES = 10


def main_file(node: Node, template: str) -> Path:
    """Return the path of the node's main-process file, as the node itself expands it."""
    try:
        return Path(node_format(template, node.name, index=0))
    except ValueError as exc:
        raise MultiArgsError(f"node {node.name}: {exc}") from None


def pidfile(node: Node) -> Path:
    return main_file(node, node.pidfile)


def logfile(node: Node) -> Path:
    return main_file(node, node.logfile)


def read_pid(path: Path) -> int | None:
    """Return the PID in ``path``, or None if it is missing, empty or not a number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_alive(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie, or another user's process, does not count)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or its PID reused by another user
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: the signal said it exists
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def check_files(node: Node) -> str | None:
    """Return why ``node`` cannot be started (a file problem or a live pidfile), else None."""
    for kind, path in (("pidfile", pidfile(node)), ("logfile", logfile(node))):
        directory = str(path.parent)
        if not path.parent.is_dir():
            return f"{kind} directory {directory!r} does not exist; create it or change --{kind}"
        if not os.access(directory, os.W_OK | os.X_OK):
            return f"{kind} directory {directory!r} is not writable; change --{kind} or its mode"
    pid = read_pid(pidfile(node))
    if pid is not None and is_alive(pid):
        return (
            f"pidfile {str(pidfile(node))!r} names running process {pid}; "
            "stop it first (chard multi stop) or choose another --pidfile"
        )
    return None


@dataclass
class Started:
    """How a start went: up (``ok``), or why not, with the end of the node's log."""

    ok: bool
    pid: int | None = None
    reason: str = ""
    log_tail: list[str] = field(default_factory=list)


def start(node: Node, env: dict[str, str], timeout: float = START_TIMEOUT) -> Started:
    """Start ``node`` detached and wait until it is up or has failed."""
    problem = check_files(node)
    if problem is not None:
        return Started(False, reason=problem)
    log = logfile(node)
    offset = log.stat().st_size if log.exists() else 0  # what earlier runs wrote
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(write_end, True)  # the node's; the read end closes on exec
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        pid = os.posix_spawn(
            node.argv[0],
            node.argv,
            {**env, READY_FD_ENV: str(write_end)},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log), flags, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        os.close(read_end)
        return Started(False, reason=f"cannot run {node.argv[0]!r}: {exc.strerror}")
    finally:
        os.close(write_end)
    try:
        return _wait_ready(pid, read_end, log, offset, timeout)
    finally:
        os.close(read_end)


def _wait_ready(pid: int, read_end: int, log: Path, offset: int, timeout: float) -> Started:
    deadline = time.monotonic() + timeout
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Started(
                False,
                pid,
                f"not up after {timeout:.0f}s (process {pid} still starting; see its log)",
                tail(log, offset),
            )
        ready, _, _ = select.select([read_end], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(read_end, 64)
            received += chunk
            if b"ready" in received:
                return Started(True, pid)
            if not chunk:  # closed unwritten: the node stopped before it was up
                return Started(False, pid, _exit_reason(pid, wait=True), tail(log, offset))
        else:
            reason = _exit_reason(pid, wait=False)
            if reason:
                return Started(False, pid, reason, tail(log, offset))


def _exit_reason(pid: int, *, wait: bool) -> str:
    """Reap ``pid`` if it exited and say how ('' if it still runs and ``wait`` is False)."""
    deadline = time.monotonic() + (5.0 if wait else 0.0)
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "the node exited"
        if done:
            if os.WIFSIGNALED(status):
                return f"the node was killed by signal {os.WTERMSIG(status)}"
            return f"the node exited with code {os.waitstatus_to_exitcode(status)}"
        if time.monotonic() >= deadline:
            return "the node closed its start-up pipe without reporting ready" if wait else ""
        time.sleep(0.05)  # a process that closed its pipe is exiting: poll its end briefly


def tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> list[str]:
    """Return the last ``lines`` lines of ``path`` written past ``offset`` (this start's)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def send(pid: int, signum: int) -> bool:
    """Send ``signum`` to ``pid``; False if no such process (or no longer ours to signal)."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True
