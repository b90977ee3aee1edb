"""A Celery-style project used by the integration tests (broker from CHARD_BROKER_URL)."""
