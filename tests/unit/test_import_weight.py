"""What ``import chard`` (and a worker's modules) load: heavy modules only where used.

asyncio (~10 MiB of RSS with its ssl and concurrent.futures), importlib.metadata, yaml,
msgpack and curses are loaded where they are needed (an ``async def`` task, ``aget()``,
``app.start()``, a yaml or msgpack message, ``chard events``), not in every process. On the
embedded SQLite default that is about 10 MiB less per worker process; redis-py loads
asyncio itself, so a Redis worker keeps it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["asyncio", "importlib.metadata", "yaml", "msgpack", "curses"]


def loaded_after(statement: str) -> list[str]:
    report = f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    code = f"import sys, json\n{statement}\n{report}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import chard",
        "import chard.cli.main, chard.worker.child, chard.worker.supervisor",
        "import chard.brokers.sqlite, chard.backends.sqlite",
    ],
)
def test_the_library_and_the_worker_load_no_heavy_module(statement: str) -> None:
    assert loaded_after(statement) == []


def test_yaml_and_msgpack_load_at_their_first_use() -> None:
    # Given the extras installed (the dev extras carry both), a message in each format
    statement = (
        "from chard.protocol import serializers as s\n"
        "for name in ('yaml', 'application/x-msgpack'):\n"
        "    payload, kind, _ = s.dumps({'a': [1, 2]}, s.get_serializer(name).name)\n"
        "    assert s.loads(payload, kind, frozenset([kind])) == {'a': [1, 2]}"
    )
    assert set(loaded_after(statement)) == {"yaml", "msgpack"}
