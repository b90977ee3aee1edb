"""Issue 14: a real Django project (examples/django_site, seed 000's layout) on chard.

Each test copies the example site, migrates its SQLite database, and runs chard through
the CLI as a Django user would: ``chard -A config worker`` from the directory that holds
``manage.py``. The broker is this test's transport (SQLite or Redis).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.integration.workers import CHARD, WorkerFactory, child_pythonpath, run_cli

pytest.importorskip("django")
pytestmark = pytest.mark.slow

SITE = Path(__file__).resolve().parents[2] / "examples" / "django_site"


def _env(transport: dict[str, str], **extra: str) -> dict[str, str]:
    """The site's environment: its broker through Django's CELERY_* settings, not chard's."""
    env = {
        "CELERY_BROKER_URL": transport["CHARD_BROKER_URL"],
        "CELERY_RESULT_BACKEND": transport["CHARD_RESULT_BACKEND"],
        "CHARD_BROKER_URL": "",
        "CHARD_RESULT_BACKEND": "",
        **extra,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)  # config/celery.py sets it, as in Celery's layout
    return env


def _python(site: Path, env: dict[str, str], code: str) -> Any:
    """Run ``code`` in a Django-set-up process in ``site``; return what it prints as JSON."""
    script = "import os, django, json\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', "
    script += "'config.settings')\ndjango.setup()\nimport config\n" + textwrap.dedent(code)
    full = {**os.environ, **env, "PYTHONPATH": child_pythonpath(str(site))}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=site, env=full, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A fresh copy of the example site with its database migrated."""
    copy = tmp_path / "site"
    shutil.copytree(SITE, copy, ignore=shutil.ignore_patterns("*.sqlite3*", "__pycache__"))
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=copy, capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": child_pythonpath(str(copy))},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return copy


@pytest.fixture
def site_workers(site: Path, transport: dict[str, str]) -> Iterator[WorkerFactory]:
    """Workers started in the site's directory (where manage.py is)."""
    factory = WorkerFactory(site, _env(transport))
    yield factory
    factory.cleanup()


def test_an_orm_task_runs_on_a_real_worker(
    site: Path, transport: dict[str, str], site_workers: WorkerFactory
) -> None:
    env = _env(transport)

    # Given tasks sent on commit, before any worker runs: only a committed one is sent
    on_commit = _python(
        site,
        env,
        """
        from django.db import transaction
        from notes.models import Note
        from notes.tasks import count_words
        queue = lambda: config.celery_app.broker.queue_size("celery")
        note = Note.objects.create(text="one two three")
        try:
            with transaction.atomic():
                count_words.delay_on_commit(note.id)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        after_rollback = queue()
        with transaction.atomic():
            count_words.apply_async_on_commit((note.id,), task_id="sent-on-commit")
            inside = queue()
        # apply() inside the caller's transaction: the worker hooks leave its connection be
        from django.db import connection
        from chard.contrib import django as chard_django
        from notes.tasks import connection_state
        chard_django.setup(config.celery_app)  # the hooks a worker process installs
        with transaction.atomic():
            Note.objects.count()
            eager = connection_state.apply().get()
            kept = connection.in_atomic_block and connection.connection is not None
            Note.objects.count()  # the transaction is still usable
        print(json.dumps({"id": note.id, "rollback": after_rollback, "inside": inside,
                          "committed": queue(), "cls": type(count_words).__name__,
                          "eager_was_open": eager["was_open"], "kept": kept}))
        """,
    )
    assert on_commit["cls"] == "DjangoTask"
    assert on_commit["eager_was_open"] is True
    assert on_commit["kept"] is True
    assert (on_commit["rollback"], on_commit["inside"], on_commit["committed"]) == (0, 0, 1)

    # When a prefork worker starts in the project (django.setup() before the tasks import)
    worker = site_workers.start("-c", "2", app="config")

    # Then autodiscovery found the app's tasks, the committed task ran, and an ORM task
    # sent now updates its row; each task starts without a database connection
    out = worker.output()
    assert "  . notes.tasks.count_words" in out
    ran = _python(
        site,
        env,
        """
        from notes.models import Note
        from notes.tasks import connection_state, count_words
        note = Note.objects.create(text="a b c d")
        counted = count_words.delay(note.id).get(timeout=30)
        note.refresh_from_db()
        states = [connection_state.delay().get(timeout=30) for _ in range(6)]
        on_commit = config.celery_app.AsyncResult("sent-on-commit").get(timeout=30)
        first = Note.objects.order_by("id").first()
        print(json.dumps({"id": note.id, "counted": counted, "stored": note.words,
                          "states": states, "on_commit": on_commit, "first": first.words}))
        """,
    )
    assert ran["counted"] == ran["stored"] == 4
    assert ran["on_commit"] == ran["first"] == 3  # sent on commit, before the worker started
    assert not any(state["was_open"] for state in ran["states"])
    pids = [state["pid"] for state in ran["states"]]
    assert len(set(pids)) < len(pids)  # some child ran several: its connection was not reused

    # And `chard call` / `chard result` work in the project too (Django set up first)
    sent = run_cli(
        ["-A", "config", "call", "notes.tasks.count_words", f"--args=[{ran['id']}]"], env, site
    )
    assert sent.returncode == 0, sent.stderr
    shown = run_cli(["-A", "config", "result", sent.stdout.strip(), "--wait", "30"], env, site)
    assert shown.stdout.strip() == "4", shown.stderr

    # And the task logger's lines name the task and its id in the worker log
    worker.wait_for_log(f"]: note {ran['id']} has 4 words")
    assert "notes.tasks.count_words[" in worker.output()


def test_beat_sends_from_the_django_settings_schedule(
    site: Path, sqlite_transport: dict[str, str], tmp_path: Path
) -> None:
    # Given the site's CELERY_BEAT_SCHEDULE every half second, and a worker
    env = _env(sqlite_transport, COUNT_ALL_EVERY="0.5")
    workers = WorkerFactory(site, env)
    log = tmp_path / "beat.log"
    full = {**os.environ, **env, "PYTHONPATH": child_pythonpath(str(site))}
    with open(log, "wb") as out:
        beat = subprocess.Popen(
            [CHARD, "-A", "config", "beat", "-l", "INFO"], cwd=site, env=full, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        worker = workers.start("-c", "1", app="config")

        # Then beat sends count_all and the worker runs it against the ORM
        wait_for(lambda: "Sending due task count-all-notes" in log.read_text(), timeout=30)
        worker.wait_for_log("Task notes.tasks.count_all[", timeout=30)
        worker.wait_for_log("succeeded", timeout=30)
    finally:
        beat.terminate()
        beat.wait(timeout=15)
        workers.cleanup()
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    ("settings_module", "expected"),
    [
        ("config.nosuch", "cannot read configuration 'django.conf:settings' "
         "(DJANGO_SETTINGS_MODULE is 'config.nosuch'): ModuleNotFoundError: No module named "
         "'config.nosuch'"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", [["worker"], ["beat"], ["call", "notes.tasks.count_all"]])
def test_a_wrong_settings_module_is_one_line(
    site: Path, sqlite_transport: dict[str, str], settings_module: str, expected: str,
    command: list[str],
) -> None:  # fmt: skip
    env = {**_env(sqlite_transport), "DJANGO_SETTINGS_MODULE": settings_module}

    done = run_cli(["-A", "config", *command], env, site)

    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]


def test_django_not_installed_is_one_clear_error(tmp_path: Path) -> None:
    # Given DJANGO_SETTINGS_MODULE set in a process where Django cannot be imported
    code = (
        "import sys; sys.modules['django'] = None\n"
        "from chard import Celery\n"
        "from chard.contrib import django\n"
        "app = Celery('nodj', broker='memory://')\n"
        "try:\n"
        "    django.setup(app)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "proj.settings"}

    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == (
        "ImproperlyConfigured DJANGO_SETTINGS_MODULE is 'proj.settings' but Django is not "
        "installed; pip install django, or unset DJANGO_SETTINGS_MODULE"
    )


def test_settings_configured_by_hand_are_set_up_before_the_tasks_import(site: Path) -> None:
    # Given no DJANGO_SETTINGS_MODULE: Django's settings configured in code, read by the app
    code = textwrap.dedent(
        """
        import json
        from django.conf import settings
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "notes"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            CELERY_BROKER_URL="memory://",
        )
        from chard import Celery
        app = Celery("by_hand")
        app.config_from_object(settings, namespace="CELERY")
        app.autodiscover_tasks()
        from django.apps import apps
        before = apps.ready
        app.finalize()  # what the worker and beat do first
        print(json.dumps({"before": before, "after": apps.ready, "broker": app.broker_url,
                          "tasks": sorted(n for n in app.tasks if n.startswith("notes."))}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = child_pythonpath(str(site))

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=site, env=env, capture_output=True, text=True, timeout=60
    )

    # Then finalize() set Django up, and autodiscovery imported the app's tasks after it
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "before": False,
        "after": True,
        "broker": "memory://",
        "tasks": [
            "notes.tasks.connection_state",
            "notes.tasks.count_all",
            "notes.tasks.count_words",
        ],
    }
