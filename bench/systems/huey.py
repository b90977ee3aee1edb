"""Huey 3 (``RedisHuey`` with result notification, or ``SqliteHuey``): 2 worker processes."""

from __future__ import annotations

from dataclasses import dataclass

from bench.systems import BIN, Settings, System, in_tmpdir, on_redis


@dataclass
class Huey(System):
    """``huey_consumer benchapp_huey.huey -k process -w 2`` (plus its scheduler thread)."""

    def worker_argv(self, node: int, events: bool) -> list[str]:
        argv = [str(BIN / "huey_consumer"), f"{self.app_module}.huey", "-k", "process", "-w", "2"]
        argv += ["-q"]
        if self.family == "sqlite":  # it polls: 5 ms at first, at most 50 ms when idle
            argv += ["-d", "0.005", "-m", "0.05"]
        return argv


def _huey(settings: Settings) -> System:
    return on_redis(Huey, "huey", "benchapp_huey", settings)


def _huey_sqlite(settings: Settings) -> System:
    variables = {"BENCH_BROKER_URL": "sqlite:///{tmp}/huey.sqlite3", "BENCH_POLL": "0.005"}
    return in_tmpdir(Huey, "huey-sqlite", "benchapp_huey", settings, variables)


FACTORIES = {"huey": _huey, "huey-sqlite": _huey_sqlite}
