"""The dashboard's history in the Redis result backend, under its key prefix.

``chard.dashboard.tasks`` (hash: task id -> JSON record),
``chard.dashboard.changed`` (sorted set: task id scored by its last change), so
the newest are a ``ZREVRANGE`` and trimming is a range of the sorted set, and
``chard.dashboard.index`` (hash: task id -> the short JSON list of what the list's
filters read: state, name, worker, args, kwargs).

Redis has no secondary index: a filtered list reads the whole ``index`` hash (small
entries, not the records) newest first and filters in Python, linear in the store's
size; the unfiltered list is a range of the sorted set. A workflow is drawn from memory.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from chard._redis.client import RedisErrors, open_client
from chard._redis.url import parse_redis_url
from chard.dashboard.history import History, Record, Reused, Summary, decode
from chard.dashboard.query import Brief, Found, TaskFilter
from chard.events.state import TaskState
from chard.exceptions import BackendConnectionError, BackendError

#: Records fetched per HMGET when loading, index entries per round trip when searching.
CHUNK = 1_000
SCAN_CHUNK = 10_000
#: The record's fields copied into the index, in its order.
INDEXED = ("state", "name", "worker", "args", "kwargs")
#: Seconds the counts per state and the names are reused (another process may write).
SUMMARY_TTL = 10.0


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
        self._index = f"{target.keyprefix}chard.dashboard.index"
        self._summary: Reused[Summary] = Reused(SUMMARY_TTL)

    def save(self, records: Sequence[Record]) -> None:
        if not records:
            return
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._records, mapping={uuid: text for uuid, _, text in records})
            pipe.hset(self._index, mapping={uuid: _indexed(text) for uuid, _, text in records})
            pipe.zadd(self._changed, {uuid: changed for uuid, changed, _ in records})
            pipe.execute()
        self._summary.forget()

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

    def search(self, where: TaskFilter, offset: int, limit: int) -> Found:
        if where.is_empty():  # a range of the sorted set; the totals reused
            with self._errors():
                total = int(self._client.zcard(self._changed))
                newest = self._client.zrevrange(self._changed, offset, offset + limit - 1)
            counts, names = self._summary.get(lambda: self._scan(where, 0, 0)[1])
            return Found(total, self._tasks([_text(i) for i in newest]), counts, names)
        (total, page), (counts, names) = self._scan(where, offset, limit)
        return Found(total, self._tasks(page), counts, names)

    def _scan(
        self, where: TaskFilter, offset: int, limit: int
    ) -> tuple[tuple[int, list[str]], Summary]:
        """Read the index newest first: (matches, the page's ids), and the totals."""
        total, page = 0, []
        states: Counter[str] = Counter()
        names: set[str] = set()
        for task in self._briefs():
            states[task.state or "PENDING"] += 1
            if task.name:
                names.add(task.name)
            if where.matches_brief(task):
                if offset <= total < offset + limit:
                    page.append(task.uuid)
                total += 1
        summary = (dict(states), sorted(names))
        self._summary.put(summary)
        return (total, page), summary

    def _briefs(self) -> Iterator[Brief]:
        """Every task as its index entry tells it (the filtered fields), newest first."""
        start = 0
        while True:
            with self._errors():
                chunk: list[Any] = self._client.zrevrange(
                    self._changed, start, start + SCAN_CHUNK - 1, withscores=True
                )
                ids = [_text(i) for i, _ in chunk]
                briefs = self._client.hmget(self._index, ids) if ids else []
            for uuid, (_, changed), brief in zip(ids, chunk, briefs, strict=True):
                task = _brief(uuid, float(changed), brief) if brief else self._task(uuid)
                if task is not None:
                    yield task
            if len(ids) < SCAN_CHUNK:
                return
            start += SCAN_CHUNK

    def _task(self, uuid: str) -> Brief | None:
        """A task with no index entry (written by an older dashboard), from its record."""
        text = self.get(uuid)
        task = None if text is None else decode(uuid, text)
        if task is None:
            return None
        return Brief(uuid, task.timestamp or 0.0, task.state, task.name, task.worker,
                     task.args, task.kwargs)  # fmt: skip

    def _tasks(self, ids: list[str]) -> list[TaskState]:
        if not ids:
            return []
        with self._errors():
            values = self._client.hmget(self._records, ids)
        found = (decode(i, _text(v)) for i, v in zip(ids, values, strict=True) if v)
        return [task for task in found if task is not None]

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
                pipe.hdel(self._index, *gone)
                pipe.execute()
        return len(gone)

    def close(self) -> None:
        self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _indexed(text: str) -> str:
    """The index entry of a record: the filtered fields as a short JSON list."""
    try:
        fields = json.loads(text)
    except ValueError:
        return "[]"
    return json.dumps([fields.get(name) for name in INDEXED])


def _brief(uuid: str, changed: float, entry: Any) -> Brief | None:
    """The filtered fields of a task, from its index ``entry``."""
    try:
        state, name, worker, args, kwargs = json.loads(_text(entry))
    except ValueError:
        return None
    return Brief(uuid, changed, state, name, worker, args, kwargs)
