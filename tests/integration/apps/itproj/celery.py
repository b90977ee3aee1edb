from chard import Celery

# No broker in code: the tests point CHARD_BROKER_URL / CHARD_RESULT_BACKEND at a
# temporary SQLite file or a Redis prefix, so one project serves every transport.
app = Celery("itproj", include=["itproj.tasks"])
app.conf.update(result_expires=3600, task_max_deliveries=3)
