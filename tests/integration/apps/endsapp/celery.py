"""A project whose tasks end in every way a task can (tests/integration/test_workflow_ends.py)."""

import os

from chard import Celery, signals

# No broker in code: the tests point CHARD_BROKER_URL / CHARD_RESULT_BACKEND at a
# temporary SQLite file or a Redis prefix, so one project serves every transport.
app = Celery("endsapp", include=["endsapp.tasks"])
app.conf.update(result_expires=3600, task_max_deliveries=2)


def note(line: str) -> None:
    """Append ``line`` to the file the test names in ENDS_LOG (every process of the node)."""
    path = os.environ.get("ENDS_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


@signals.task_failure.connect
def _on_failure(sender=None, task_id=None, exception=None, **kwargs):
    note(f"failure {task_id} {type(exception).__name__}")


@signals.task_revoked.connect
def _on_revoked(sender=None, request=None, **kwargs):
    note(f"revoked {request.id}")
