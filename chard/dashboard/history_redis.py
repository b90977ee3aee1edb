"""The dashboard's history in the Redis result backend, under its key prefix.

``chard.dashboard.tasks`` (hash: task id -> JSON record) and
``chard.dashboard.changed`` (sorted set: task id scored by its last change), so
the newest are a ``ZREVRANGE`` and trimming is a range of the sorted set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from chard._redis.client import RedisErrors, open_client
from chard._redis.url import parse_redis_url
from chard.dashboard.history import History, Record
from chard.exceptions import BackendConnectionError, BackendError

#: Records fetched per HMGET when loading.
CHUNK = 1_000


class RedisHistory(History):
    """Task records in Redis, shared by every dashboard on the same backend."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        target = parse_redis_url(url, options)
        self._errors = RedisErrors(
            "dashboard history",
            target.redacted,
            unreachable=BackendConnectionError,
            failed=BackendError,
            url_name="result backend URL",
        )
        self._client = open_client(target)
        self._records = f"{target.keyprefix}chard.dashboard.tasks"
        self._changed = f"{target.keyprefix}chard.dashboard.changed"

    def save(self, records: Sequence[Record]) -> None:
        if not records:
            return
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._records, mapping={uuid: text for uuid, _, text in records})
            pipe.zadd(self._changed, {uuid: changed for uuid, changed, _ in records})
            pipe.execute()

    def load(self, limit: int) -> list[tuple[str, str]]:
        with self._errors():
            ids = [_text(i) for i in self._client.zrevrange(self._changed, 0, limit - 1)]
            found: list[tuple[str, str]] = []
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                values = self._client.hmget(self._records, chunk)
                found.extend((i, _text(v)) for i, v in zip(chunk, values, strict=True) if v)
        found.reverse()
        return found

    def get(self, uuid: str) -> str | None:
        with self._errors():
            value = self._client.hget(self._records, uuid)
        return None if value is None else _text(value)

    def scan(self) -> Iterator[tuple[str, str]]:
        """Newest first, :data:`CHUNK` ids (one ZREVRANGE and one HMGET) at a time."""
        start = 0
        while True:
            with self._errors():
                newest = self._client.zrevrange(self._changed, start, start + CHUNK - 1)
                ids = [_text(i) for i in newest]
                values = self._client.hmget(self._records, ids) if ids else []
            yield from ((i, _text(v)) for i, v in zip(ids, values, strict=True) if v)
            if len(ids) < CHUNK:
                return
            start += CHUNK

    def trim(self, max_count: int, older_than: float | None) -> int:
        with self._errors():
            gone: list[str] = []
            if older_than is not None:
                old = self._client.zrangebyscore(self._changed, "-inf", f"({older_than}")
                gone.extend(_text(i) for i in old)
            extra = self._client.zcard(self._changed) - max_count
            if extra > 0:
                gone.extend(_text(i) for i in self._client.zrange(self._changed, 0, extra - 1))
            gone = list(dict.fromkeys(gone))
            if gone:
                pipe = self._client.pipeline(transaction=True)
                pipe.zrem(self._changed, *gone)
                pipe.hdel(self._records, *gone)
                pipe.execute()
        return len(gone)

    def close(self) -> None:
        self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
