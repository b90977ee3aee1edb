"""What a long-running command sets up for its process: logging, the pidfile, readiness.

Shared by ``chard worker`` and ``chard beat``; only the CLI configures logging (the
library never adds handlers), so this lives here and nowhere below.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from chard import signals

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
#: For records of a task logger (``get_task_logger``) inside a task: Celery's task log format.
TASK_LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)


class LogFormatter(logging.Formatter):
    """Celery's worker formats: a task logger's record inside a task names the task and id."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._task = logging.Formatter(TASK_LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "task_id", "???") != "???":
            return self._task.format(record)
        return super().format(record)


def setup_logging(loglevel: str, logfile: str | None = None) -> None:
    """Configure the root logger the way Celery's worker does (the library never does)."""
    level = logging.getLevelName(loglevel.upper())
    if not isinstance(level, int):
        raise click.BadParameter(f"unknown log level {loglevel!r}; use DEBUG, INFO, WARNING, ...")
    try:
        handler: logging.Handler = (
            logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
        )
    except OSError as exc:
        raise click.ClickException(
            f"cannot open logfile {logfile!r}: {exc.strerror}; fix its directory or --logfile"
        ) from None
    handler.setFormatter(LogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def write_pidfile(path: str) -> Path:
    """Write this process's id to ``path`` unless a running process already holds it.

    Raises:
        click.ClickException: ``path`` names a process that is still running.
    """
    pidfile = Path(path)
    if pidfile.exists():
        try:
            pid = int(pidfile.read_text().strip() or 0)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            pass  # stale: its process is gone
        else:
            raise click.ClickException(
                f"pidfile {path!r} names running process {pid}; stop it or choose another --pidfile"
            )
    try:
        pidfile.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise click.ClickException(
            f"cannot write pidfile {path!r}: {exc.strerror}; fix its directory or --pidfile"
        ) from None
    return pidfile


#: Set by ``chard multi`` for each node it starts: the write end of a pipe it reads.
READY_FD_ENV = "CHARD_READY_FD"


def notify_ready_on(worker: object) -> None:
    """Tell ``chard multi`` (if it started this node) when ``worker`` is ready.

    ``chard multi start`` passes a pipe's write end in ``CHARD_READY_FD``; the node
    writes ``ready`` to it once it consumes, and closes it. If the node dies first, the
    pipe closes unwritten: multi tells the two apart without reading the log's level.
    The pipe is closed before the prefork children are forked, so none holds it open.
    """
    value = os.environ.pop(READY_FD_ENV, None)
    if not value:
        return
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        return  # not ours to use: started by hand with a stale environment
    os.set_inheritable(fd, False)

    def ready(sender: object = None, **kwargs: object) -> None:
        signals.worker_ready.disconnect(ready, sender=worker)
        try:
            os.write(fd, b"ready\n")
        except OSError:
            pass  # multi gave up waiting: nothing to tell
        finally:
            os.close(fd)

    signals.worker_ready.connect(ready, sender=worker)
