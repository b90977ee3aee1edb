"""Broadcast channels on RabbitMQ: one stream per channel, read from an offset.

A stream (``x-queue-type: stream``, RabbitMQ 3.9+) is a durable append-only log that
every reader reads whole from any offset, which is what a broadcast channel is. The
cursor of an entry is its stream offset plus one (so ``"0"`` stays "before everything").

Two things a stream does not give over AMQP 0-9-1, and how they are made:

* *Where the end is.* A consumer is never told it caught up, so a reader that must
  return "everything up to now" first appends a *marker* (a message readers skip) and
  reads until it meets it. A blocked read (``timeout > 0``) after a cursor needs none:
  it returns what arrives first, and the next read gets the rest.
* *A bound in entries.* Streams are trimmed by size (whole segments), not by count. Each
  entry carries its writer's ``broadcast_maxlen``; a reader replays the trimming a Redis
  ``XADD MAXLEN`` would have done at each write, so it sees the newest entries only. The
  stream itself is capped at :data:`MAX_BYTES`.

A writer learns its entry's offset by reading the stream from just before it published
(a stream can be read from a timestamp) until it meets its own entry.
"""

from __future__ import annotations

import uuid
from collections import deque
from datetime import UTC, datetime, timedelta

from chard._amqp.client import AmqpClient, consume_stream
from chard._amqp.frames import Frame
from chard.brokers.base import BROADCAST_START, parse_sequence_cursor
from chard.exceptions import BrokerError

#: Bytes a channel's stream keeps at most (RabbitMQ drops whole old segments past it).
MAX_BYTES = 50_000_000
SEGMENT_BYTES = 5_000_000
_ID = "x-chard-entry"
_MAXLEN = "x-chard-maxlen"
_MARKER = "x-chard-marker"
#: How long a scan for a message this process just appended may take before it is an error.
_SCAN_TIMEOUT = 30.0
#: How far before its publish a writer starts reading to find its own message (RabbitMQ
#: stamps a stream's chunks with its own clock, which may run a little behind ours).
_CLOCK_SLACK = timedelta(seconds=2)
#: How far :meth:`StreamLog.tail` first looks back from its marker (then 16 times further).
_TAIL_WINDOW = 64


def stream_name(channel: str) -> str:
    return f"chard.broadcast.{channel}"


class StreamLog:
    """The broadcast channels of one broker instance (see the module docstring)."""

    def __init__(
        self, writer: AmqpClient, reader: AmqpClient, maxlen: int, declared: set[str]
    ) -> None:
        self.writer = writer
        self.reader = reader
        self.maxlen = maxlen
        #: Names declared by this process (the broker's set, shared).
        self._declared = declared
        #: Per stream, the offset before which it held no entry (only markers) when it
        #: was last read to a marker from the start: a reader with nothing yet read
        #: (cursor ``"0"``) starts there, instead of appending a marker and reading
        #: every marker since the stream began at each poll of an idle channel.
        self._horizon: dict[str, int] = {}

    def _ensure(self, client: AmqpClient, channel: str) -> str:
        name = stream_name(channel)
        if name not in self._declared:
            client.declare_queue(
                name,
                {
                    "x-queue-type": "stream",
                    "x-max-length-bytes": MAX_BYTES,
                    "x-stream-max-segment-size-bytes": SEGMENT_BYTES,
                },
            )
            self._declared.add(name)
        return name

    def append(self, channel: str, payload: bytes, maxlen: int | None = None) -> str:
        """Append ``payload``; return its cursor."""
        name = self._ensure(self.writer, channel)
        entry = uuid.uuid4().hex
        since = datetime.now(UTC) - _CLOCK_SLACK
        self.writer.publish("", name, Frame(payload, {_ID: entry, _MAXLEN: maxlen or self.maxlen}))
        found: list[int] = []

        def visit(offset: int, headers: dict[str, object], body: bytes) -> bool:
            if headers.get(_ID) == entry:
                found.append(offset)
                return True
            return False

        if not consume_stream(self.writer, name, since, visit, _SCAN_TIMEOUT):
            raise BrokerError(f"broadcast to {channel!r} was confirmed but not found in {name!r}")
        return str(found[0] + 1)

    def read(self, channel: str, after: str, timeout: float) -> list[tuple[str, bytes]]:
        start = parse_sequence_cursor(after)
        name = self._ensure(self.reader, channel)
        if (start == 0 and name not in self._horizon) or timeout <= 0:
            entries = self._read_to_marker(name, start)
            if entries or timeout <= 0:
                return entries
        return self._wait(name, start or self._horizon.get(name, 0), timeout)

    def tail(self, channel: str) -> str:
        """The newest entry's cursor, read backwards from a marker appended now.

        Reading the whole stream to the marker took time in proportion to all it kept
        (a remote-control call's reply channel: 80 ms after a few hundred calls, and
        growing); the newest entry is near the end, so the reader looks back from the
        marker in windows that grow, and reads from the start only for a stream that
        holds no entry at all (which then gets a horizon, as in :meth:`_read_to_marker`).
        """
        name = self._ensure(self.reader, channel)
        marker = uuid.uuid4().hex
        since = datetime.now(UTC) - _CLOCK_SLACK
        self.reader.publish("", name, Frame(b"", {_MARKER: marker}))
        end, newest = self._scan_to(name, since, marker)
        back = _TAIL_WINDOW
        start = self._horizon.get(name, 0)
        while newest is None and end - back > start:
            _, newest = self._scan_to(name, end - back, marker)
            back *= 16
        if newest is None:
            _, newest = self._scan_to(name, start if start > 0 else "first", marker)
            if newest is None:
                self._horizon[name] = end + 1  # no entry before our marker
        return BROADCAST_START if newest is None else str(newest + 1)

    def _scan_to(
        self, name: str, begin: int | str | datetime, marker: str
    ) -> tuple[int, int | None]:
        """Read from ``begin`` to ``marker``: its offset, and the newest entry's before it."""
        found: list[int] = []
        newest: int | None = None

        def visit(offset: int, headers: dict[str, object], body: bytes) -> bool:
            nonlocal newest
            if headers.get(_MARKER) is None:
                newest = offset
                return False
            if headers[_MARKER] == marker:
                found.append(offset)
                return True
            return False

        if not consume_stream(self.reader, name, begin, visit, _SCAN_TIMEOUT):
            raise BrokerError(f"reading broadcast stream {name!r} did not reach its end")
        return found[0], newest

    def _read_to_marker(self, name: str, start: int) -> list[tuple[str, bytes]]:
        """Every kept entry after cursor ``start``, up to now (a marker appended first)."""
        marker = uuid.uuid4().hex
        self.reader.publish("", name, Frame(b"", {_MARKER: marker}))
        kept: deque[tuple[str, bytes]] = deque()
        found: list[int] = []
        seen: list[int] = []
        from_start = start == 0
        start = start or self._horizon.get(name, 0)

        def visit(offset: int, headers: dict[str, object], body: bytes) -> bool:
            if headers.get(_MARKER) is not None:
                if headers[_MARKER] == marker:
                    found.append(offset)
                    return True
                return False
            seen.append(offset)
            kept.append((str(offset + 1), body))
            limit = headers.get(_MAXLEN)
            while isinstance(limit, int) and len(kept) > limit:
                kept.popleft()  # what that writer's XADD MAXLEN would have dropped
            return False

        begin: int | str = start if start > 0 else "first"
        if not consume_stream(self.reader, name, begin, visit, _SCAN_TIMEOUT):
            raise BrokerError(f"reading broadcast stream {name!r} did not reach its end")
        if from_start and not seen:
            self._horizon[name] = found[0] + 1  # no entry before our marker
        return list(kept)

    def _wait(self, name: str, start: int, timeout: float) -> list[tuple[str, bytes]]:
        """Block up to ``timeout`` for the entries after cursor ``start``; return the first."""
        found: list[tuple[str, bytes]] = []

        def visit(offset: int, headers: dict[str, object], body: bytes) -> bool:
            if headers.get(_MARKER) is None:
                found.append((str(offset + 1), body))
                return True
            return False

        consume_stream(self.reader, name, start, visit, timeout)
        return found
