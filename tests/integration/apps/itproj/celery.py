import os

from chard import Celery, Exchange, Queue

# No broker in code: the tests point CHARD_BROKER_URL / CHARD_RESULT_BACKEND at a
# temporary SQLite file or a Redis prefix, so one project serves every transport.
app = Celery("itproj", include=["itproj.tasks"])
app.conf.update(result_expires=3600, task_max_deliveries=3)


def quorum_queues(delivery_limit: int) -> list[Queue]:
    """The default queue as a RabbitMQ quorum queue with its own x-delivery-limit."""
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit}
    return [Queue("celery", Exchange("celery"), "celery", queue_arguments=arguments)]


if os.environ.get("ITPROJ_DELIVERY_LIMIT"):  # a RabbitMQ test's worker
    app.conf.task_queues = quorum_queues(int(os.environ["ITPROJ_DELIVERY_LIMIT"]))
