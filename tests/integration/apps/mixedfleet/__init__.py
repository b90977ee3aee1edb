"""A mixed Celery/chard fleet: the same tasks under one name on both sides, on one Redis.

``chardside.app`` is a chard app and ``celeryside.app`` a real Celery 5 app; both build
their app with ``build(prefix)`` so a test makes its own per-test key prefix, and the
worker processes read it from ``MIXED_PREFIX`` (``MIXED_COMPAT=1``: chard's
``chard_celery_compat``).
"""
