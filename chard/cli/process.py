"""What a long-running command sets up for its process: logging and the pidfile.

Shared by ``chard worker`` and ``chard beat``; only the CLI configures logging (the
library never adds handlers), so this lives here and nowhere below.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

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
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
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
    pidfile.write_text(f"{os.getpid()}\n")
    return pidfile
