"""mypy rejects the wrong calls: proof that the ``check_*.py`` types can fail.

The ``check_*.py`` modules only show that the right calls type-check; a signature
typed ``Any`` would pass them too. Here one mypy run checks a module of wrong calls,
each marked with the error code mypy must report on its line; any other error, or a
marked line mypy accepts, fails the test.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is a dev dependency (scripts/install)")

ROOT = Path(__file__).resolve().parents[2]

WRONG_CALLS = """
from typing import Any

from chard import AsyncResult, Celery, Task, chord, group, shared_task

app = Celery("rejections", broker="memory://")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(ignore_result=True)
def mul(x: int, y: int) -> int:
    return x * y


@shared_task
def shout(word: str) -> str:
    return word.upper()


@app.task(bind=True)
def job(self: Task[Any, Any], x: int) -> str:
    return str(x)


@shared_task(bind=True, max_retries=1)
def shared_job(self: Any, x: int) -> str:
    return str(x)


@app.task
def xsum(values: list[int]) -> int:
    return sum(values)


add.delay("x", 2)  # E: arg-type
add.delay(1)  # E: call-arg
add.delay(1, 2, 3)  # E: call-arg
add.delay(1, z=2)  # E: call-arg
add(1, "2")  # E: arg-type
mul.delay("x", 2)  # E: arg-type
shout.delay(1)  # E: arg-type
shout()  # E: call-arg
text: str = add(1, 2)  # E: assignment
also_text: str = add.delay(1, 2).get()  # E: assignment
sent: AsyncResult[str] = add.apply_async((1, 2))  # E: assignment

job.delay()  # E: call-arg
job.delay("x")  # E: arg-type
job.delay(1, 2)  # E: call-arg
job(1) + 1  # E: operator
shared_job.delay()  # E: call-arg
shared_job.delay("x")  # E: arg-type

from_sig: str = add.s(1, 2).delay().get()  # E: assignment
sig_call: str = add.s(1, 2)()  # E: assignment
applied: AsyncResult[str] = add.s(1, 2).apply_async()  # E: assignment
members: AsyncResult[Any] = group(add.s(1, 2)).apply_async()  # E: assignment
group(add.s(1, 2))().state  # E: attr-defined
chunked: AsyncResult[Any] = add.chunks([(1, 2)], 1).apply_async()  # E: assignment
joined: str = chord([add.s(1, 2)], xsum.s())().get()  # E: assignment
chord([add.s(1, 2)])(xsum.s()).get() + "s"  # E: operator
"""

_MARK = re.compile(r"#\s*E:\s*([\w-]+)\s*$")
_ERROR = re.compile(r"^[^:]+:(\d+): error: .*\[([\w-]+)\]$")


def _expected(source: str) -> set[tuple[int, str]]:
    return {
        (number, mark.group(1))
        for number, line in enumerate(source.splitlines(), start=1)
        if (mark := _MARK.search(line))
    }


def test_mypy_rejects_each_wrong_call_with_the_expected_error(tmp_path: Path) -> None:
    # Given a module of wrong calls, each marked with the error it must cause
    source = textwrap.dedent(WRONG_CALLS).lstrip()
    module = tmp_path / "wrong_calls.py"
    module.write_text(source)

    # When mypy checks it with the project's settings (strict)
    config = ["--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary"]
    run = subprocess.run(
        [sys.executable, "-m", "mypy", str(module), *config, "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )

    # Then exactly the marked lines fail, each with its code
    found = {
        (int(match.group(1)), match.group(2))
        for line in run.stdout.splitlines()
        if (match := _ERROR.match(line))
    }
    assert found == _expected(source), run.stdout + run.stderr
    assert run.returncode == 1, run.stdout + run.stderr
