"""The chard side of the mixed fleet."""

from __future__ import annotations

import os

from chard import Celery
from mixedfleet import bodies


def build(prefix: str, compat: bool = False) -> Celery:
    url = f"{bodies.REDIS_BASE}?global_keyprefix={prefix}"
    app = Celery("mixedfleet", broker=url, backend=url, set_as_current=False)
    app.conf.update(chard_celery_compat=compat, result_expires=600)
    visibility = os.environ.get("MIXED_VISIBILITY")  # Celery's, for restoring its unacked
    if visibility:
        app.conf.broker_transport_options = {"visibility_timeout": float(visibility)}
    for name, (fun, bind) in bodies.NAMES.items():
        app.task(name=name, bind=bind)(fun)
    return app


app = build(bodies.prefix_from_env(), os.environ.get("MIXED_COMPAT") == "1")
