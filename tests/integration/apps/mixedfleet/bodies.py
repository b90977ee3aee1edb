"""Task bodies shared by both sides (each registers them under the same names)."""

from __future__ import annotations

import os
from typing import Any

from tests.helpers import REDIS_DB, REDIS_HOST, REDIS_PORT

#: Redis without a key prefix; each side adds the test's prefix its own way.
REDIS_BASE = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


class MixedError(Exception):
    """An exception of the project's own, re-raised by either side's AsyncResult.get()."""


def prefix_from_env() -> str:
    return os.environ.get("MIXED_PREFIX", "mixedfleet-unset")


def add(x: int, y: int) -> int:
    return x + y


def tsum(values: list[int]) -> int:
    return sum(values)


def boom(message: str) -> None:
    raise MixedError(message)


def bad_value(message: str) -> None:
    raise ValueError(message)


def on_error(task_id: str) -> str:
    """An errback sent as a message: called with the failed task's id."""
    return f"errback:{task_id}"


def whoami(self: Any) -> dict[str, Any]:
    """What the worker saw: its kind, and the request's retries, eta and priority."""
    info = self.request.delivery_info or {}
    return {
        "side": os.environ.get("MIXED_SIDE", "?"),
        "retries": self.request.retries,
        "eta": str(self.request.eta) if self.request.eta else None,
        "priority": info.get("priority"),
    }


def flaky(self: Any, times: int) -> int:
    """Fail ``times`` times with a 1 s countdown retry, then return the retry count."""
    if self.request.retries < times:
        raise self.retry(exc=MixedError("not yet"), countdown=1, max_retries=5)
    return int(self.request.retries)


def sides(seen: list[dict[str, Any]]) -> list[str]:
    """A chord body over ``whoami`` results: which kinds of worker ran the header."""
    return sorted({one["side"] for one in seen})


NAMES = {
    "mixed.sides": (sides, False),
    "mixed.add": (add, False),
    "mixed.tsum": (tsum, False),
    "mixed.boom": (boom, False),
    "mixed.bad_value": (bad_value, False),
    "mixed.on_error": (on_error, False),
    "mixed.whoami": (whoami, True),
    "mixed.flaky": (flaky, True),
}
