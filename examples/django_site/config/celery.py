"""The chard app of the Django project: Celery's own Django layout, only the import changed."""

import os

from chard import Celery  # was: from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")

# Every CELERY_* setting in config/settings.py (CELERY_BROKER_URL -> broker_url, ...).
app.config_from_object("django.conf:settings", namespace="CELERY")

# Import tasks.py of every installed app, once Django is set up (chard does that first).
app.autodiscover_tasks()
