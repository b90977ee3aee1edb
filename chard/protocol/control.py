"""Records on the broker's broadcast channels; for now, the revocation.

A revocation is one entry on the ``revoke`` channel (see
:meth:`chard.brokers.base.Broker.broadcast`), a JSON object::

    {"ids": ["<task id>", ...], "terminate": false, "signal": "SIGTERM", "expires": 1.7e9}

``expires`` is a Unix timestamp: workers honour the revocation until then, including
workers started after it was sent (Celery keeps revocations only in the memory of
the workers running at the time). A worker discards a revoked task instead of
running it; with ``terminate`` it also sends ``signal`` to the process running it.
"""

from __future__ import annotations

import json
import signal as _signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chard.exceptions import DecodeError

#: The broadcast channel revocations travel on.
REVOKE_CHANNEL = "revoke"
#: Seconds a revocation is honoured after it was sent (Celery's ``REVOKE_EXPIRES``).
REVOKE_EXPIRES = 10800.0
#: The signal ``terminate=True`` sends unless told otherwise (Celery's ``TERM``).
DEFAULT_TERMINATE_SIGNAL = "SIGTERM"


def signal_name(sig: str | int | None) -> str:
    """Return the canonical name (``"SIGTERM"``) of ``sig``: a name, ``"TERM"`` or a number.

    None means the default, SIGTERM, as in Celery.

    Raises:
        ValueError: no such signal on this platform.
    """
    if sig is None:
        return DEFAULT_TERMINATE_SIGNAL
    try:
        if isinstance(sig, int):
            return _signal.Signals(sig).name
        name = sig.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        return _signal.Signals[name].name
    except (KeyError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"unknown signal {sig!r}; use a name such as 'SIGTERM', 'TERM' or 'SIGKILL'"
        ) from exc


@dataclass(frozen=True)
class Revocation:
    """Revoke these task ids until ``expires``; see the module docstring."""

    #: The task ids revoked, in the order given.
    ids: tuple[str, ...]
    #: Unix timestamp after which workers forget the revocation.
    expires: float
    #: Also signal the process running one of these tasks.
    terminate: bool = False
    #: The signal ``terminate`` sends, by name (``"SIGTERM"``).
    signal: str = DEFAULT_TERMINATE_SIGNAL

    @classmethod
    def create(
        cls,
        ids: Iterable[str],
        *,
        now: float,
        terminate: bool = False,
        signal: str | int | None = None,
        ttl: float = REVOKE_EXPIRES,
    ) -> Revocation:
        """Return a revocation of ``ids`` sent at ``now``, honoured for ``ttl`` seconds.

        Raises:
            TypeError: an id is not a string.
            ValueError: ``signal`` names no signal.
        """
        ids = tuple(ids)
        for task_id in ids:
            if not isinstance(task_id, str):
                raise TypeError(f"task ids must be strings, got {task_id!r}")
        return cls(ids, now + ttl, bool(terminate), signal_name(signal))

    @property
    def signum(self) -> int:
        """The signal number of :attr:`signal` on this platform."""
        return int(_signal.Signals[self.signal])

    def is_expired(self, now: float) -> bool:
        """Return whether the revocation is no longer honoured at ``now``."""
        return self.expires <= now

    def to_payload(self) -> bytes:
        """Encode as the JSON entry of the ``revoke`` channel."""
        fields = {
            "ids": list(self.ids),
            "terminate": self.terminate,
            "signal": self.signal,
            "expires": self.expires,
        }
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> Revocation:
        """Decode an entry of the ``revoke`` channel.

        Raises:
            DecodeError: not the JSON shape above (names what is wrong).
        """
        try:
            fields: Any = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeError(f"revocation is not JSON: {exc}", payload) from exc
        if not isinstance(fields, dict):
            raise DecodeError(f"revocation is not a JSON object: {fields!r}", payload)
        ids, expires = fields.get("ids"), fields.get("expires")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DecodeError(f"revocation 'ids' is not a list of strings: {ids!r}", payload)
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            raise DecodeError(f"revocation 'expires' is not a timestamp: {expires!r}", payload)
        try:
            sig = signal_name(fields.get("signal"))
        except ValueError as exc:
            raise DecodeError(f"revocation 'signal' is unusable here: {exc}", payload) from exc
        return cls(tuple(ids), float(expires), bool(fields.get("terminate")), sig)
