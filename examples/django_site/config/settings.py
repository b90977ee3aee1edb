"""Settings of the example site: SQLite for Django, chard configured through CELERY_* names."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "config.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "notes",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}

# chard: the embedded SQLite broker by default; CELERY_BROKER_URL=redis://... for Redis.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "sqlite:///chard.sqlite3")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    "count-all-notes": {
        "task": "notes.tasks.count_all",
        "schedule": float(os.environ.get("COUNT_ALL_EVERY", "3600")),
    },
}
