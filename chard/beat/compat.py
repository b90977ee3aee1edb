"""Celery's beat options, kept so Celery command lines and settings work: scheduler and ``-s``.

- **The scheduler class** (``--scheduler``, ``beat_scheduler``). chard has one scheduler; its
  schedule, run state and leader lease live in the broker. Celery's names for its built-in
  schedulers (``celery.beat:PersistentScheduler``, dotted or with a colon) name it. Any other
  class is refused with what to use instead: silently ignoring, say, django_celery_beat's
  ``DatabaseScheduler`` would leave its admin edits without effect.
- **The state file** (``-s/--schedule``, ``beat_schedule_filename``, default
  ``celerybeat-schedule``). In Celery it holds last-run times; in chard the broker does, shared
  by every beat so that a standby continues where the leader stopped, and the file is neither
  read nor written. Its path is still checked as Celery would need it (an existing, writable
  directory), so one command line or unit file works with both, and a typo shows at once.
  It never decides who leads.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from chard.exceptions import ImproperlyConfigured

__all__ = ["CELERY_SCHEDULERS", "check_scheduler", "check_state_file"]

#: Names accepted for chard's one scheduler: Celery's built-in ones and chard's own.
CELERY_SCHEDULERS = frozenset(
    {
        "celery.beat:PersistentScheduler",
        "celery.beat.PersistentScheduler",
        "celery.beat:Scheduler",
        "celery.beat.Scheduler",
        "chard.beat:Beat",
        "chard.beat.Beat",
    }
)

_DROP = "then drop --scheduler / beat_scheduler (or set it to 'celery.beat:PersistentScheduler')"
_DATABASE = (
    "chard keeps the schedule in the broker and lets you edit it while beat runs: define entries "
    "in beat_schedule or with add_periodic_task, and add, remove, enable or disable them with "
    f"'chard -A proj beat schedule add|remove|enable|disable'; {_DROP}"
)
#: What to use instead of well-known third-party schedulers, by top-level package.
_INSTEAD = {
    "django_celery_beat": _DATABASE,
    "celery_sqlalchemy_scheduler": _DATABASE,
    "sqlalchemy_celery_beat": _DATABASE,
    "redbeat": (
        "chard's own beat keeps its schedule and a leader lease in the broker's Redis, as "
        "RedBeat does, so several beats can run for failover (the redbeat_* settings are not "
        f"read); {_DROP}"
    ),
}
_OTHER = (
    "chard has one scheduler, which keeps the schedule, run state and leader lease in the broker; "
    + _DROP
)


def check_scheduler(name: object) -> None:
    """Accept a Celery name for chard's scheduler; refuse any other class, saying what to use.

    Args:
        name: ``--scheduler`` or ``beat_scheduler``: a ``"module:Class"`` / ``"module.Class"``
            string, a class (Celery allows one), or None/empty for the default.

    Raises:
        ImproperlyConfigured: chard has no such scheduler; the message names the replacement.
    """
    if name is None or name == "":
        return
    if isinstance(name, str):
        text = name.strip()
    else:
        text = f"{getattr(name, '__module__', '?')}:{getattr(name, '__qualname__', name)}"
    if text in CELERY_SCHEDULERS:
        return
    package = text.replace(":", ".").split(".", 1)[0]
    raise ImproperlyConfigured(
        f"chard beat has no scheduler {text!r}; {_INSTEAD.get(package, _OTHER)}"
    )


def check_state_file(path: str | os.PathLike[str]) -> Path:
    """Check that Celery could keep its beat state file at ``path``; return the absolute path.

    chard does not use the file (see the module docstring); this catches a path that would fail
    under Celery: a missing or unwritable directory, or a directory given as the file.

    Raises:
        ImproperlyConfigured: the path cannot hold the file; one line naming the path and fix.
    """
    given = os.fspath(path)
    target = Path(given).expanduser().absolute()
    directory = target.parent
    hint = "pass -s/--schedule (beat_schedule_filename) a file in a writable directory"
    if target.is_dir():
        raise ImproperlyConfigured(f"beat schedule file {given!r} is a directory; {hint}")
    if not directory.is_dir():
        raise ImproperlyConfigured(
            f"beat schedule file {given!r}: directory {str(directory)!r} does not exist; "
            f"create it, or {hint}"
        )
    try:  # a real write, not os.access: root passes access() even where writes fail
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".chard-beat-probe-"):
            pass
    except OSError as exc:
        raise ImproperlyConfigured(
            f"beat schedule file {given!r}: directory {str(directory)!r} is not writable "
            f"({exc.strerror}); {hint}"
        ) from exc
    if target.exists() and not os.access(target, os.W_OK):
        raise ImproperlyConfigured(f"beat schedule file {given!r} is not writable; {hint}")
    return target
