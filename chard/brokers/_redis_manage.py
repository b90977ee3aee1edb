"""The Redis broker's work off the task path: broadcast channels and management.

Broadcast channels are streams (``chard.bcast.<channel>``: ``XADD``, ``XREAD BLOCK``);
management is what operators and remote control ask (purge, queue sizes, the delayed
set, dead letters and their redrive). Kept apart from :mod:`chard.brokers.redis`, which
holds the path every task takes (publish, lease, settle); the key layout is drawn there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from chard._redis.client import RedisErrors
from chard.brokers._kombu import PRIORITY_STEPS, ready_key
from chard.brokers.base import DeadLetter, DelayedMessage

#: Most members of the delayed set :meth:`RedisManagement.delayed` looks at.
DELAYED_SCAN = 10_000


#: A stream id as XADD makes them ("<ms>-<seq>"), or a bare number such as "0".
_STREAM_ID = re.compile(r"\d+(-\d+)?")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


class RedisManagement:
    """Broadcast and management for :class:`~chard.brokers.redis.RedisBroker` (a mixin)."""

    _client: Any  # redis.Redis (the redis package is imported only in chard._redis)
    _prefix: str
    _errors: RedisErrors
    _redrive_script: Any
    broadcast_maxlen: int

    if TYPE_CHECKING:  # KombuInterop's, ahead in the broker's bases

        def _key(self, name: str) -> str: ...

    # -- broadcast channels ---------------------------------------------------
    def broadcast(self, channel: str, payload: bytes, *, maxlen: int | None = None) -> str:
        """``XADD`` to the channel's stream, trimming it to about ``maxlen``."""
        with self._errors():
            entry = self._client.xadd(
                self._key(f"chard.bcast.{channel}"),
                {"p": payload},
                maxlen=maxlen or self.broadcast_maxlen,
                approximate=True,
            )
        return cast(bytes, entry).decode()

    def broadcast_read(self, channel: str, after: str, timeout: float) -> list[tuple[str, bytes]]:
        """``XREAD`` the channel's stream after ``after``, blocking up to ``timeout``."""
        if not isinstance(after, str) or not _STREAM_ID.fullmatch(after):
            raise ValueError(
                f"not a broadcast cursor of this broker: {after!r}; pass '0' or a cursor it "
                "returned"
            )
        # BLOCK 0 would wait forever: a positive timeout blocks at least 1 ms.
        block = max(int(timeout * 1000), 1) if timeout > 0 else None
        with self._errors():
            reply = self._client.xread({self._key(f"chard.bcast.{channel}"): after}, block=block)
        if not reply:
            return []
        # RESP2 shape: [[stream key, [(entry id, {field: value}), ...]]]
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], cast(Any, reply)[0][1])
        return [(entry_id.decode(), fields[b"p"]) for entry_id, fields in entries]

    def broadcast_tail(self, channel: str) -> str:
        with self._errors():
            newest = self._client.xrevrange(self._key(f"chard.bcast.{channel}"), count=1)
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], newest)
        return entries[0][0].decode() if entries else "0"

    # -- management -----------------------------------------------------------
    def purge(self, queue: str) -> int:
        """Delete ``queue``'s ready and delayed messages (leased ones are untouched)."""
        keys = [self._key(ready_key(queue, step)) for step in PRIORITY_STEPS]
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            total = sum(cast(list[int], pipe.execute())[: len(keys)])
            # ZSCAN, not one script: a huge delayed set must not block Redis.
            pattern = b"?" + _glob_escape(queue).encode() + b"\0*"
            scan = self._client.zscan_iter(self._key("chard.delayed"), match=pattern, count=500)
            members = [cast(bytes, member) for member, _score in scan]
            for i in range(0, len(members), 500):
                chunk = members[i : i + 500]
                removed = int(self._client.zrem(self._key("chard.delayed"), *chunk))
                self._client.hincrby(self._key("chard.delayed.counts"), queue, -removed)
                total += removed
        return total

    def queue_size(self, queue: str) -> int:
        """Return ready plus delayed messages of ``queue``, in one round-trip."""
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for step in PRIORITY_STEPS:
                pipe.llen(self._key(ready_key(queue, step)))
            pipe.hget(self._key("chard.delayed.counts"), queue)
            *lengths, delayed = pipe.execute()
        return sum(cast(list[int], lengths)) + int(delayed or 0)

    def delayed(self, queues: Sequence[str], limit: int = 100) -> list[DelayedMessage]:
        """Page through ``chard.delayed`` soonest first (its first 10,000 members at most)."""
        wanted, found = {q.encode() for q in queues}, []
        with self._errors():
            for start in range(0, DELAYED_SCAN, 500):
                page = self._client.zrange(
                    self._key("chard.delayed"), start, start + 499, withscores=True
                )
                for member, due in cast(list[tuple[bytes, float]], page):
                    spec, _, rest = member.partition(b"\0")
                    if spec[1:] in wanted:
                        body = rest.partition(b"\0")[2]
                        found.append(DelayedMessage(spec[1:].decode(), body, due, int(spec[:1])))
                if len(found) >= limit or len(page) < 500:
                    break
        return found[:limit]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._errors():
            ids = cast(list[bytes], self._client.zrange(self._key("chard.dead"), 0, limit - 1))
            pipe = self._client.pipeline(transaction=False)
            for dead_id in ids:
                pipe.hgetall(self._key(f"chard.dead.{dead_id.decode()}"))
            records = cast(list[dict[bytes, bytes]], pipe.execute())
        return [
            DeadLetter(
                id=dead_id.decode(),
                queue=f[b"queue"].decode(),
                body=f[b"body"],
                reason=f[b"reason"].decode(),
                failed_at=float(f[b"failed_at"]),
                delivery_count=int(f[b"delivery_count"]),
            )
            for dead_id, f in zip(ids, records, strict=True)
            if f  # empty: redriven between the two reads
        ]

    def redrive(self, dead_letter_id: str, body: bytes | None = None) -> bool:
        with self._errors():
            args: list[str | bytes] = [self._prefix, dead_letter_id, body or b""]
            return bool(self._redrive_script(args=args))
