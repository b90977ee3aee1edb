"""Celery's ``celery.utils`` paths that user code imports (``chard.utils.log``, ``.nodenames``)."""
