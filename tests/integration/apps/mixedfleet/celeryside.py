"""The Celery side of the mixed fleet: a real Celery 5 app (imported only by tests)."""

from __future__ import annotations

from celery import Celery

from mixedfleet import bodies


def build(prefix: str) -> Celery:
    app = Celery(
        "mixedfleet", broker=bodies.REDIS_BASE, backend=bodies.REDIS_BASE, set_as_current=False
    )
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        result_expires=600,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    for name, (fun, bind) in bodies.NAMES.items():
        app.task(name=name, bind=bind)(fun)
    return app


app = build(bodies.prefix_from_env())
