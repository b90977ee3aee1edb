"""Start real ``chard`` worker processes through the CLI, and stop them by PID."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

APPS_DIR = Path(__file__).parent / "apps"
CHARD = str(Path(sys.executable).with_name("chard"))

#: Logs of the processes the running test started (workers, dashboards), oldest first:
#: a failed test shows their tails (see ``pytest_runtest_makereport`` in conftest.py).
STARTED_LOGS: list[Path] = []
#: How much of each log a failed test shows.
LOG_TAIL_LINES = 60


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of ``log`` (or say it is missing)."""
    if not log.exists():
        return f"({log} was never written)"
    text = log.read_text(errors="replace").splitlines()
    skipped = f"... ({len(text) - lines} earlier lines in {log})\n" if len(text) > lines else ""
    return skipped + "\n".join(text[-lines:])


def child_pythonpath(*first: str) -> str:
    """Return the PYTHONPATH of a child process: the test apps, ``first``, then ours.

    Every entry is made absolute: children run in ``tmp_path``, where a relative entry
    (``PYTHONPATH=.``) would miss the code under test and import the installed chard.
    Our own entries are always kept, whatever ``first`` holds, for the same reason.
    """
    ours = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    entries = [str(APPS_DIR), *first, *ours]
    return os.pathsep.join(dict.fromkeys(os.path.abspath(e) for e in entries if e))


@dataclass
class WorkerProcess:
    """A worker subprocess with its log file."""

    proc: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        """Poll the log until ``text`` appears; fail with the log if the process dies first."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"worker exited ({self.proc.returncode}) before {text!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not in worker log after {timeout}s:\n{self.output()}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill_group(self) -> None:
        """SIGKILL the worker and its children (a node lost without warning)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """Warm-stop (SIGTERM) and wait; SIGKILL the group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


class WorkerFactory:
    """Start workers for one test with the given environment; clean them all up."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.started: list[WorkerProcess] = []

    def start(
        self,
        *args: str,
        app: str = "itproj",
        ready: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        log = self.tmp_path / f"worker-{len(self.started)}.log"
        argv = [CHARD, "-A", app, "worker", "-l", "INFO", *args]
        env = {**os.environ, **self.env, **(extra_env or {})}
        env["PYTHONPATH"] = child_pythonpath(*env.get("PYTHONPATH", "").split(os.pathsep))
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so kill_group hits only it
            )
        worker = WorkerProcess(proc, log, argv)
        self.started.append(worker)
        STARTED_LOGS.append(log)
        if ready:
            worker.wait_for_log("ready.")
        return worker

    def cleanup(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait(timeout=10)


def run_cli(
    args: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``chard <args>`` to completion and return its output."""
    full_env = {**os.environ, **env}
    full_env["PYTHONPATH"] = child_pythonpath(*full_env.get("PYTHONPATH", "").split(os.pathsep))
    return subprocess.run(
        [CHARD, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def iter_lines(path: Path) -> Iterator[str]:
    return iter(path.read_text().splitlines()) if path.exists() else iter(())


def project_tasks(
    package: str, transport: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """Yield test project ``package``'s tasks module, its app pointed at ``transport``."""
    for key, value in transport.items():
        monkeypatch.setenv(key, value)
    tasks = importlib.import_module(f"{package}.tasks")
    app = importlib.import_module(f"{package}.celery").app
    app.close()
    # The module (and its app) outlives this test: put back what the app had, or a later
    # test using the same project would still talk to this test's (maybe stopped) server.
    keys = ("broker_url", "result_backend")
    before = {key: app.conf.changes()[key] for key in keys if key in app.conf.changes()}
    app.conf.broker_url = transport["CHARD_BROKER_URL"]
    app.conf.result_backend = transport["CHARD_RESULT_BACKEND"]
    try:
        yield tasks
    finally:
        app.close()
        for key in keys:
            if key in before:
                app.conf[key] = before[key]
            else:
                with contextlib.suppress(KeyError):
                    del app.conf[key]
