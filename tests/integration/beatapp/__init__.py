"""A small app for beat's process tests, configured from environment variables.

- ``CHARD_BROKER_URL``: the broker (a tmp SQLite file or a prefixed Redis URL), as for the
  shared ``itproj`` app, so the integration fixtures' transports plug in.
- ``BEATAPP_OUT``: file the ``beatapp.record`` task appends one JSON line to per run, with the
  run's beat slot header, so a test can count runs per slot across processes.
- ``BEATAPP_SCHEDULE``: JSON ``{name: {"task": ..., "every": s | "cron": "m h dom mon dow",
  "args": [...]}}`` turned into ``beat_schedule``; anything else is passed through unchanged so
  tests can feed deliberately broken entries.
- ``BEATAPP_PERIODIC``: seconds; when set, an ``on_after_configure`` handler (connected before
  the task it names is defined, as in Celery's docs) adds ``from-handler``.
- ``BEATAPP_TZ``: the app's ``timezone``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from chard import Celery
from chard.schedules import crontab

app = Celery("beatapp")
app.conf.timezone = os.environ.get("BEATAPP_TZ") or None


def _item(spec: dict[str, Any]) -> dict[str, Any]:
    item = {k: v for k, v in spec.items() if k not in ("every", "cron")}
    if "every" in spec:
        item["schedule"] = spec["every"]
    elif "cron" in spec:
        item["schedule"] = crontab.from_string(spec["cron"])
    return item


app.conf.beat_schedule = {
    name: _item(spec) for name, spec in json.loads(os.environ.get("BEATAPP_SCHEDULE", "{}")).items()
}


@app.on_after_configure.connect
def setup_periodic_tasks(sender: Celery, **kwargs: Any) -> None:
    every = os.environ.get("BEATAPP_PERIODIC")
    if every:
        sender.add_periodic_task(float(every), record.s("handler"), name="from-handler")


@app.task(bind=True, name="beatapp.record")
def record(self: Any, label: str = "") -> str:
    line = {
        "label": label,
        "slot": self.request.headers.get("chard_beat_slot"),
        "id": self.request.id,
        "pid": os.getpid(),
    }
    with open(os.environ["BEATAPP_OUT"], "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    return label
