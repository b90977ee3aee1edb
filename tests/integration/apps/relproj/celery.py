"""The reliability tests' app: CHARD_BROKER_URL / CHARD_RESULT_BACKEND pick the transport."""

from chard import Celery

app = Celery("relproj", include=["relproj.tasks"])
app.conf.update(
    result_expires=3600,
    task_max_deliveries=2,  # a poison pill is set aside after two deaths
    result_extended=True,
)
