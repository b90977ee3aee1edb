"""The example's tasks: they use the ORM, found by ``app.autodiscover_tasks()``."""

import os

from django.db import connection

from chard import shared_task
from chard.utils.log import get_task_logger

from .models import Note

logger = get_task_logger(__name__)


@shared_task
def count_words(note_id: int) -> int:
    """Count a note's words and store the count on the row."""
    note = Note.objects.get(pk=note_id)
    note.words = len(note.text.split())
    note.save(update_fields=["words"])
    logger.info("note %s has %s words", note_id, note.words)
    return note.words


@shared_task
def count_all() -> int:
    """Count the words of every note not counted yet (beat sends this)."""
    pending = list(Note.objects.filter(words__isnull=True).values_list("pk", flat=True))
    for note_id in pending:
        count_words(note_id)
    return len(pending)


@shared_task
def connection_state() -> dict[str, object]:
    """Say whether this task started with a database connection open, and in which process."""
    was_open = connection.connection is not None
    Note.objects.count()  # opens one
    return {"was_open": was_open, "pid": os.getpid()}
