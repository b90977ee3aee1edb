"""Start ``chard dashboard`` as a real process and talk HTTP to it (stdlib only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port
from tests.integration.workers import CHARD, STARTED_LOGS, child_pythonpath


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Dashboard:
    """A running dashboard process: its URL, log, and an HTTP helper."""

    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {**self.headers, **(headers or {})}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data, all_headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return Reply(resp.status, dict(resp.headers), resp.read().decode())
        except urllib.error.HTTPError as err:
            return Reply(err.code, dict(err.headers), err.read().decode())

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, headers=headers)

    def get_json(self, path: str) -> Any:
        reply = self.get(path)
        assert reply.status == 200, (path, reply.status, reply.text)
        return reply.json()

    def act(self, path: str, body: dict[str, Any] | None = None) -> Reply:
        """POST an action with this process's CSRF value."""
        csrf = self.get_json("/api/session")["csrf"]
        return self.request("POST", path, body or {}, {"X-CSRF-Token": csrf})

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until it answers HTTP; fail with its log if it exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"dashboard exited ({self.proc.returncode}):\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/openapi.json", timeout=2):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dashboard not answering after {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


class DashboardFactory:
    """Start dashboards for one test; stop them all at teardown."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.started: list[Dashboard] = []

    def start(
        self, *args: str, extra_env: dict[str, str] | None = None, ready: bool = True
    ) -> Dashboard:
        port = free_port()
        log = self.tmp_path / f"dashboard-{len(self.started)}.log"
        argv = [CHARD, "-A", "itproj", "dashboard", "--port", str(port), *args]
        env = {**os.environ, **self.env, **(extra_env or {})}
        env["PYTHONPATH"] = child_pythonpath(*env.get("PYTHONPATH", "").split(os.pathsep))
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        dashboard = Dashboard(proc, log, f"http://127.0.0.1:{port}")
        self.started.append(dashboard)
        STARTED_LOGS.append(log)
        if ready:
            dashboard.wait_ready()
        return dashboard

    def cleanup(self) -> None:
        for dashboard in self.started:
            dashboard.stop()
