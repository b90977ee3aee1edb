"""Dramatiq 2 on Redis (a db of its own), results through its Redis results middleware."""

from __future__ import annotations

from dataclasses import dataclass

from bench.systems import BIN, Settings, System, on_redis


@dataclass
class Dramatiq(System):
    """``dramatiq benchapp_dramatiq --processes 2 --threads 8`` (the issue's setup)."""

    def worker_argv(self, node: int, events: bool) -> list[str]:
        return [str(BIN / "dramatiq"), self.app_module, "--processes", "2", "--threads", "8"]


def _dramatiq(settings: Settings) -> System:
    return on_redis(Dramatiq, "dramatiq", "benchapp_dramatiq", settings)


FACTORIES = {"dramatiq": _dramatiq}
