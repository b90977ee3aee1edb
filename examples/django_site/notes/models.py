from django.db import models


class Note(models.Model):
    """A note whose words a task counts."""

    text = models.TextField()
    words = models.IntegerField(null=True)
