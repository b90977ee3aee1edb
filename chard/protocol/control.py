"""Records on the broker's broadcast channels: the revocation, and remote control.

A revocation is one entry on the ``revoke`` channel (see
:meth:`chard.brokers.base.Broker.broadcast`), a JSON object::

    {"ids": ["<task id>", ...], "terminate": false, "signal": "SIGTERM", "expires": 1.7e9}

``expires`` is a Unix timestamp: workers honour the revocation until then, including
workers started after it was sent (Celery keeps revocations only in the memory of
the workers running at the time). A worker discards a revoked task instead of
running it; with ``terminate`` it also sends ``signal`` to the process running it.

Remote control (``app.control``, ``chard inspect``/``control``) is a request on the
``control`` channel and the nodes' replies on the ``control.reply`` channel::

    {"v": 1, "ticket": "<uuid>", "command": "ping", "arguments": {},
     "destination": ["w1@host"] | null, "reply": true, "expires": 1.7e9}
    {"v": 1, "ticket": "<uuid>", "node": "w1@host", "reply": {"ok": "pong"}}

A worker answers a request once per node, under its node name, unless ``destination``
names other nodes or ``expires`` has passed. A client reads the reply channel from its
tail, taken before it sends, and keeps the replies that carry its ticket. ``v`` is the
record version: a worker or client ignores (and logs) a record of another version.
"""

from __future__ import annotations

import json
import re
import signal as _signal
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chard.exceptions import DecodeError

#: The broadcast channel revocations travel on.
REVOKE_CHANNEL = "revoke"
#: Seconds a revocation is honoured after it was sent (Celery's ``REVOKE_EXPIRES``).
REVOKE_EXPIRES = 10800.0
#: The signal ``terminate=True`` sends unless told otherwise (Celery's ``TERM``).
DEFAULT_TERMINATE_SIGNAL = "SIGTERM"
#: The broadcast channel control requests travel on, and the one every node replies on.
CONTROL_CHANNEL = "control"
REPLY_CHANNEL = "control.reply"
#: Entries each control channel keeps: requests and replies are read within seconds, so
#: a short log bounds what they cost the broker (a Redis stream, SQLite rows).
CONTROL_MAXLEN = 1000
#: The version of the control records this code writes and reads.
CONTROL_VERSION = 1
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


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


def parse_rate(rate: str | float | int | None) -> float:
    """Return tasks per second for Celery's rate limit: ``"10/m"``, ``"5/s"``, ``"2/h"``, ``5``.

    A number alone is per second; ``None``, ``0`` and ``""`` mean no limit (0.0).

    Raises:
        ValueError: any other shape (the message shows the accepted ones).
    """
    if rate is None or rate == "":
        return 0.0
    if isinstance(rate, bool):
        raise ValueError(f"invalid rate limit {rate!r}; use e.g. '10/s', '10/m' or '10/h'")
    if isinstance(rate, (int, float)):
        per_second = float(rate)
    else:
        match = _RATE.fullmatch(str(rate))
        if match is None:
            raise ValueError(f"invalid rate limit {rate!r}; use e.g. '10/s', '10/m' or '10/h'")
        per_second = float(match.group(1)) / _PER[match.group(2) or "s"]
    if per_second < 0:
        raise ValueError(f"invalid rate limit {rate!r}: it must not be negative")
    return per_second


def _decode_object(payload: bytes, what: str) -> dict[str, Any]:
    """Decode a control record's JSON object, checking its version."""
    try:
        fields: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"{what} is not JSON: {exc}", payload) from exc
    if not isinstance(fields, dict):
        raise DecodeError(f"{what} is not a JSON object: {fields!r}", payload)
    version = fields.get("v")
    if version != CONTROL_VERSION:
        raise DecodeError(
            f"{what} has version {version!r}, this chard reads version {CONTROL_VERSION}; "
            "is another chard version sending to this broker?",
            payload,
        )
    return fields


def _string(fields: Mapping[str, Any], name: str, what: str, payload: bytes) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"{what} {name!r} is not a non-empty string: {value!r}", payload)
    return value


@dataclass(frozen=True)
class ControlRequest:
    """One remote control command for the nodes; see the module docstring."""

    #: The command's name (``"ping"``, ``"rate_limit"``...).
    command: str
    #: Its keyword arguments (JSON values).
    arguments: Mapping[str, Any] = field(default_factory=dict)
    #: The node names that should act on it, or None for every node.
    destination: tuple[str, ...] | None = None
    #: Whether the client waits for replies (a node replies only then).
    reply: bool = False
    #: Unix timestamp after which nodes ignore it.
    expires: float = 0.0
    #: Pairs the replies with the request.
    ticket: str = ""

    @classmethod
    def create(
        cls,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: str | Sequence[str] | None = None,
        reply: bool = False,
        now: float,
        timeout: float,
    ) -> ControlRequest:
        """Return a request sent at ``now``, honoured for ``timeout`` seconds, with a new ticket.

        Raises:
            TypeError: ``destination`` is not a node name or a sequence of them.
        """
        if isinstance(destination, str):
            destination = [destination]
        nodes = None if destination is None else tuple(destination)
        if nodes is not None and not all(isinstance(n, str) for n in nodes):
            raise TypeError(f"destination must be node names, got {destination!r}")
        return cls(
            command,
            dict(arguments or {}),
            nodes or None,
            bool(reply),
            now + timeout,
            uuid.uuid4().hex,
        )

    def is_for(self, node: str) -> bool:
        """Return whether ``node`` should act on this request."""
        return self.destination is None or node in self.destination

    def is_expired(self, now: float) -> bool:
        """Return whether the request is too old to act on at ``now``."""
        return self.expires <= now

    def to_payload(self) -> bytes:
        """Encode as an entry of the ``control`` channel.

        Raises:
            TypeError: an argument is not JSON (names it).
        """
        fields = {
            "v": CONTROL_VERSION,
            "ticket": self.ticket,
            "command": self.command,
            "arguments": dict(self.arguments),
            "destination": list(self.destination) if self.destination is not None else None,
            "reply": self.reply,
            "expires": self.expires,
        }
        try:
            return json.dumps(fields, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"control command {self.command!r} arguments must be JSON values: {exc}"
            ) from exc

    @classmethod
    def from_payload(cls, payload: bytes) -> ControlRequest:
        """Decode an entry of the ``control`` channel.

        Raises:
            DecodeError: not the shape above, or another version (names what is wrong).
        """
        what = "control request"
        fields = _decode_object(payload, what)
        ticket = _string(fields, "ticket", what, payload)
        command = _string(fields, "command", what, payload)
        arguments = fields.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise DecodeError(f"{what} 'arguments' is not an object: {arguments!r}", payload)
        destination = fields.get("destination")
        if destination is not None and (
            not isinstance(destination, list) or not all(isinstance(n, str) for n in destination)
        ):
            raise DecodeError(
                f"{what} 'destination' is not a list of node names: {destination!r}", payload
            )
        expires = fields.get("expires")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            raise DecodeError(f"{what} 'expires' is not a timestamp: {expires!r}", payload)
        nodes = tuple(destination) if destination is not None else None
        reply = bool(fields.get("reply"))
        return cls(command, arguments, nodes, reply, float(expires), ticket)


@dataclass(frozen=True)
class ControlReply:
    """One node's answer to a request: ``{node: reply}`` in Celery's shape."""

    ticket: str
    node: str
    #: The command's answer: ``{"ok": ...}``, ``{"error": ...}`` or the inspected value.
    reply: Any

    def to_payload(self) -> bytes:
        """Encode as an entry of the ``control.reply`` channel; what JSON cannot hold is repr'd."""
        fields = {"v": CONTROL_VERSION, "ticket": self.ticket, "node": self.node}
        return json.dumps({**fields, "reply": self.reply}, default=repr).encode()

    @classmethod
    def from_payload(cls, payload: bytes) -> ControlReply:
        """Decode an entry of the ``control.reply`` channel.

        Raises:
            DecodeError: not the shape above, or another version.
        """
        what = "control reply"
        fields = _decode_object(payload, what)
        ticket = _string(fields, "ticket", what, payload)
        node = _string(fields, "node", what, payload)
        return cls(ticket, node, fields.get("reply"))
