"""Print each event as one line, as Celery's ``celery events --dump`` does.

The line is Celery's dumper's: ``<hostname> [<UTC time>] <what>: <task> <fields>``,
where ``<what>`` is ``started``/``heartbeat``/``shutdown`` for worker events and
the type without its dashes for task events (``task succeeded``), ``<task>`` is
``name(uuid) args=... kwargs=...`` (remembered from the task's ``task-sent`` or
``task-received``), and the remaining fields follow sorted by name. One
difference: a value that spans lines (a traceback) is printed with ``\\n``
escapes, so that every event is one line.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, TextIO

from chard.protocol.events import Event

#: Worker event types shown by what they mean (Celery's ``HUMAN_TYPES``).
HUMAN_TYPES = {
    "worker-offline": "shutdown",
    "worker-online": "started",
    "worker-heartbeat": "heartbeat",
}
#: Task descriptions remembered, by uuid (Celery keeps 4095).
MAX_TASK_NAMES = 0xFFF


def humanize_type(type_: str) -> str:
    """Return how the dump names an event type (``task-failed`` -> ``task failed``)."""
    return HUMAN_TYPES.get(type_.lower()) or type_.lower().replace("-", " ")


class Dumper:
    """Format events as lines and write them to ``out``, flushed, one per event."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self._task_names: OrderedDict[str, str] = OrderedDict()

    def say(self, line: str) -> None:
        """Write one line and flush it (so the dump can be piped)."""
        print(line, file=self.out, flush=True)

    def on_event(self, event: Event) -> None:
        """Print ``event`` (a handler for :class:`~chard.events.receiver.EventReceiver`)."""
        self.say(self.format(event))

    def format(self, event: Event) -> str:
        """Return the line for ``event``."""
        fields = dict(event)
        stamp = datetime.fromtimestamp(float(fields.pop("timestamp")), UTC)
        type_ = str(fields.pop("type")).lower()
        hostname = fields.pop("hostname")
        task = ""
        if type_.startswith("task-"):
            uuid = str(fields.pop("uuid", ""))
            if type_ in ("task-received", "task-sent"):
                task = (
                    f"{fields.pop('name', None)}({uuid}) args={fields.pop('args', None)} "
                    f"kwargs={fields.pop('kwargs', None)}"
                )
                self._remember(uuid, task)
            else:
                task = self._task_names.get(uuid, "")
            task = f" {task}"
        shown = ", ".join(f"{key}={_one_line(fields[key])}" for key in sorted(fields))
        sep = ":" if shown else ""
        return f"{hostname} [{stamp}] {humanize_type(type_)}{sep}{task} {shown}"

    def _remember(self, uuid: str, task: str) -> None:
        names = self._task_names
        names[uuid] = task
        names.move_to_end(uuid)
        while len(names) > MAX_TASK_NAMES:
            names.popitem(last=False)


def _one_line(value: Any) -> str:
    text = str(value)
    return text.replace("\n", "\\n") if "\n" in text else text
