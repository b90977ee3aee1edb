"""The ``file://`` result backend across processes (issue 16): atomic files, shared counters.

Celery's filesystem layout (one file per key, holding the JSON meta), written by renaming a
complete temporary file, so a reader in another process sees a whole value or none; chord
counters that stay exact when several processes count at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chard import states
from chard.backends import open_backend
from chard.backends.filesystem import FilesystemResultBackend
from chard.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parents[2]

COUNTER = r"""
import sys
from chard.backends import open_backend
backend = open_backend(sys.argv[1])
for _ in range(int(sys.argv[2])):
    backend.incr("celery-taskset-meta-g.cn")
"""


def test_a_result_is_a_file_named_by_its_key_holding_celerys_meta(tmp_path: Path) -> None:
    backend = open_backend(f"file://{tmp_path}/results", expires=3600)
    backend.store_result("task-1", {"sum": 3}, states.SUCCESS)

    stored = json.loads((tmp_path / "results" / "celery-task-meta-task-1").read_bytes())

    assert (stored["status"], stored["result"], stored["task_id"]) == (
        "SUCCESS",
        {"sum": 3},
        "task-1",
    )
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["celery-task-meta-task-1"]


def test_another_process_reads_a_result_as_it_is_written(tmp_path: Path) -> None:
    # Given a writer in this process rewriting one large result many times
    url = f"file://{tmp_path}"
    writer = open_backend(url)
    big = "x" * 200_000
    stop = threading.Event()

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            writer.store_result("big", {"n": n, "pad": big}, states.STARTED)
            n += 1

    thread = threading.Thread(target=rewrite)
    thread.start()
    try:
        # When another process reads it over and over meanwhile
        reader = (
            "import sys, json\n"
            "from chard.backends import open_backend\n"
            "b = open_backend(sys.argv[1])\n"
            "seen = set()\n"
            "for _ in range(300):\n"
            "    meta = b.get_task_meta('big')\n"
            "    seen.add(meta['status'])\n"
            "print(json.dumps(sorted(seen)))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", reader, url],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )
    finally:
        stop.set()
        thread.join()

    # Then it only ever saw whole values (a torn one would fail to decode)
    assert json.loads(done.stdout) in (["STARTED"], ["PENDING", "STARTED"])


def test_counters_stay_exact_when_processes_count_at_once(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    children = [
        subprocess.Popen([sys.executable, "-c", COUNTER, url, "200"], env=env) for _ in range(3)
    ]
    assert [child.wait(timeout=60) for child in children] == [0, 0, 0]

    assert open_backend(url).incr("celery-taskset-meta-g.cn") == 601


def test_an_unwritable_directory_names_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(ImproperlyConfigured, match="cannot create the result directory"):
        FilesystemResultBackend(f"file://{blocker}/results")


def test_a_file_url_without_a_path_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="names no directory"):
        open_backend("file://")
