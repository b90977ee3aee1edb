"""The classic Celery project layout, on chard: only the import changed.

No broker is given, so chard uses its embedded SQLite default (./chard.sqlite3)
for messages and results: nothing to install or start.
"""

from chard import Celery

app = Celery("proj", include=["proj.tasks"])

# Optional configuration, see chard/config.py (Celery's setting names).
app.conf.update(result_expires=3600)

if __name__ == "__main__":
    app.start()
