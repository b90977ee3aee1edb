"""chard: a distributed task queue with Celery's API."""
