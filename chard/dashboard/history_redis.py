"""The dashboard's history in the Redis result backend, under its key prefix.

``chard.dashboard.tasks`` (hash: task id -> JSON record),
``chard.dashboard.changed`` (sorted set: task id scored by its last change), so
the newest are a ``ZREVRANGE`` and trimming is a range of the sorted set,
``chard.dashboard.index`` (hash: task id -> the short JSON list of what the filters
and a workflow's links read), and one sorted set per state, task name, worker and
workflow link (:mod:`.history_redis_index`), kept by :meth:`RedisHistory.save` and
:meth:`RedisHistory.trim`.

A filter on state, name, worker and time is a ``ZINTERSTORE`` of those sets into a
short-lived key, then a ``ZCOUNT`` and a ``ZREVRANGEBYSCORE`` page; a workflow is a
few ranges of its link sets. An argument substring or an id prefix has no index:
those scan the candidates newest first and stop once the page is filled, so their
total is then a lower bound (``Found.exact`` false). A store written before the
indexes is indexed once when opened.
"""

from __future__ import annotations

import uuid as uuids
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from chard._redis.client import RedisErrors, WatchError, open_client
from chard._redis.url import parse_redis_url
from chard.dashboard import history_redis_index as index
from chard.dashboard.history import History, Record, Reused, Summary, decode
from chard.dashboard.query import Brief, Found, Links, TaskFilter
from chard.events.state import TaskState
from chard.exceptions import BackendConnectionError, BackendError

#: Records fetched per HMGET when loading or indexing, ids per round trip when scanning.
CHUNK = 1_000
SCAN_CHUNK = 5_000
#: Seconds the counts per state and the names are reused (another process may write).
SUMMARY_TTL = 10.0
#: Seconds a search's temporary intersection lives if its process dies before deleting it.
TEMP_TTL = 60
#: Tries of a watched write before writing unwatched (another dashboard kept writing).
SAVE_TRIES = 10
#: Drops from the set KEYS[1] each value whose sorted set (ARGV[1] .. value) is empty.
#: One script, so no save's MULTI (which adds a value and its set together) runs between
#: the count and the removal.
PRUNE = """
local gone = 0
for _, value in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('ZCARD', ARGV[1] .. value) == 0 then
    redis.call('SREM', KEYS[1], value)
    gone = gone + 1
  end
end
return gone
"""


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
        self._prefix = prefix = target.keyprefix
        self._records = f"{prefix}chard.dashboard.tasks"
        self._changed = f"{prefix}chard.dashboard.changed"
        self._index = f"{prefix}chard.dashboard.index"
        self._states = f"{prefix}chard.dashboard.states"
        self._names = f"{prefix}chard.dashboard.names"
        self._version = f"{prefix}chard.dashboard.indexed"
        self._summary: Reused[Summary] = Reused(SUMMARY_TTL)
        self._backfill()

    # -- writing -------------------------------------------------------------------------
    def save(self, records: Sequence[Record]) -> None:
        if not records:
            return
        latest = {uuid: (changed, text) for uuid, changed, text in records}
        ids = list(latest)

        def write(pipe: Any, old: list[Any]) -> None:
            pipe.hset(self._records, mapping={u: t for u, (_, t) in latest.items()})
            pipe.zadd(self._changed, {u: changed for u, (changed, _) in latest.items()})
            self._index_entries(pipe, latest, dict(zip(ids, old, strict=True)))

        with self._errors():
            self._watched(ids, write)
        self._summary.forget()

    def _index_entries(
        self, pipe: Any, latest: dict[str, tuple[float, str]], old: dict[str, Any]
    ) -> None:
        """Queue the records' index entries and their moves between sorted sets."""
        entries = {uuid: index.entry(text) for uuid, (_, text) in latest.items()}
        pipe.hset(self._index, mapping={u: index.dump(e) for u, e in entries.items()})
        pipe.zadd(self._changed, {u: changed for u, (changed, _) in latest.items()})
        adds: dict[str, dict[str, float]] = {}
        for uuid, fields in entries.items():
            was = index.memberships(self._prefix, index.parse(old.get(uuid)))
            now = index.memberships(self._prefix, fields)
            for key in was - now:
                pipe.zrem(key, uuid)
            for key in now:
                adds.setdefault(key, {})[uuid] = latest[uuid][0]
        for key, members in adds.items():
            pipe.zadd(key, members)
        states = {e[0] for e in entries.values() if e[0]}
        names = {e[1] for e in entries.values() if isinstance(e[1], str) and e[1]}
        if states:
            pipe.sadd(self._states, *states)
        if names:
            pipe.sadd(self._names, *names)

    def _backfill(self) -> None:
        """Index every record once, for a store written before the indexes (idempotent)."""
        with self._errors():
            if self._client.get(self._version) == index.VERSION.encode():
                return
            start = 0
            while True:
                chunk: list[Any] = self._client.zrange(
                    self._changed, start, start + CHUNK - 1, withscores=True
                )
                ids = [_text(i) for i, _ in chunk]
                texts = self._client.hmget(self._records, ids) if ids else []
                latest = {
                    u: (float(c), _text(t))
                    for u, (_, c), t in zip(ids, chunk, texts, strict=True)
                    if t
                }
                if latest:
                    with self._client.pipeline(transaction=False) as pipe:
                        self._index_entries(pipe, latest, {})
                        pipe.execute()
                if len(ids) < CHUNK:
                    break
                start += CHUNK
            self._client.set(self._version, index.VERSION)

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
            for start in range(0, len(gone), CHUNK):
                self._forget(gone[start : start + CHUNK])
            if gone:  # the states and names no task has any more leave the lists
                for kind, values in (("state", self._states), ("name", self._names)):
                    self._client.eval(PRUNE, 1, values, index.by(self._prefix, kind, ""))
        if gone:
            self._summary.forget()
        return len(gone)

    def _forget(self, ids: list[str]) -> None:
        """Delete the records ``ids`` and their every index entry."""

        def write(pipe: Any, entries: list[Any]) -> None:
            for uuid, entry in zip(ids, entries, strict=True):
                for key in self._indexed_in(uuid, entry):
                    pipe.zrem(key, uuid)
            pipe.zrem(self._changed, *ids)
            pipe.hdel(self._records, *ids)
            pipe.hdel(self._index, *ids)

        self._watched(ids, write)

    def _watched(self, ids: list[str], write: Callable[[Any, list[Any]], None]) -> None:
        """Queue ``write`` of the index entries of ``ids`` as read, in a transaction that
        fails if another dashboard changes the index between (then read again), so no task
        is left in a set it left; unwatched after :data:`SAVE_TRIES` such failures."""
        with self._client.pipeline(transaction=True) as pipe:
            for _ in range(SAVE_TRIES):
                try:
                    pipe.watch(self._index)  # type: ignore[no-untyped-call]
                    entries = pipe.hmget(self._index, ids)
                    pipe.multi()
                    write(pipe, entries)
                    pipe.execute()
                    return
                except WatchError:
                    pipe.reset()
            entries = self._client.hmget(self._index, ids)
            pipe.multi()
            write(pipe, entries)
            pipe.execute()

    def _indexed_in(self, uuid: str, entry: Any) -> set[str]:
        """The sorted sets holding ``uuid``; with no entry, as its record tells."""
        fields = index.parse(entry)
        if fields is None:
            record = self._client.hget(self._records, uuid)
            fields = index.entry(_text(record)) if record else None
        return index.memberships(self._prefix, fields)

    # -- reading -------------------------------------------------------------------------
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
        counts, names = self._summary.get(self._count)
        low = "-inf" if where.since is None else repr(float(where.since))
        high = "+inf" if where.until is None else repr(float(where.until))
        temp = f"{self._prefix}chard.dashboard.tmp:{uuids.uuid4().hex}"
        with self._errors():
            try:
                source = self._candidates(where, temp)
                if source is None:
                    return Found(0, [], counts, names)
                if where.search is None and where.id is None:
                    total = int(self._client.zcount(source, low, high))
                    page = self._client.zrevrangebyscore(source, high, low, start=offset, num=limit)
                    found = Found(total, self._tasks([_text(i) for i in page]), counts, names)
                else:
                    found = self._scan(source, (low, high), where, offset, limit)
                    found.counts, found.names = counts, names
            finally:
                self._client.delete(temp, f"{temp}.names")
        return found

    def _candidates(self, where: TaskFilter, temp: str) -> str | None:
        """The sorted set of the tasks passing the indexed fields; None when none can."""
        sets = [index.by(self._prefix, "state", where.state)] if where.state else []
        if where.worker is not None:
            sets.append(index.by(self._prefix, "worker", where.worker))
        pipe = self._client.pipeline(transaction=True)
        if where.name is not None:
            wanted = where.name
            names = sorted(n for n in map(_text, self._client.smembers(self._names)) if wanted in n)
            if not names:
                return None
            keys = [index.by(self._prefix, "name", n) for n in names]
            if len(keys) == 1:
                sets.append(keys[0])
            else:
                pipe.zunionstore(f"{temp}.names", keys, aggregate="MAX")
                pipe.expire(f"{temp}.names", TEMP_TTL)
                sets.append(f"{temp}.names")
        if not sets:
            return self._changed
        if len(sets) == 1 and len(pipe) == 0:
            return sets[0]
        pipe.zinterstore(temp, sets, aggregate="MAX")
        pipe.expire(temp, TEMP_TTL)
        pipe.execute()
        return temp

    def _scan(
        self, source: str, span: tuple[str, str], where: TaskFilter, offset: int, limit: int
    ) -> Found:
        """The unindexed filters (argument substring, id prefix) over ``source``, newest
        first, stopping at the first match past the page: the total is then a lower bound."""
        total, page = 0, list[str]()
        for task in self._briefs(source, span, index.needle(where.search)):
            if not where.matches_brief(task):
                continue
            if total >= offset + limit:
                return Found(total + 1, self._tasks(page), exact=False)
            if total >= offset:
                page.append(task.uuid)
            total += 1
        return Found(total, self._tasks(page))

    def _briefs(self, source: str, span: tuple[str, str], needle: bytes | None) -> Iterator[Brief]:
        """The tasks of ``source`` in ``span`` as their index entries tell, newest first;
        only those whose entry holds ``needle`` (not parsing the others) if given."""
        low, high = span
        start = 0
        while True:
            chunk: list[Any] = self._client.zrevrangebyscore(
                source, high, low, start=start, num=SCAN_CHUNK, withscores=True
            )
            ids = [_text(i) for i, _ in chunk]
            entries = self._client.hmget(self._index, ids) if ids else []
            for uuid, (_, changed), text in zip(ids, chunk, entries, strict=True):
                if needle is not None and (text is None or needle not in text):
                    continue
                fields = index.parse(text)
                if fields is not None:
                    yield Brief(uuid, float(changed), *fields[:5])
            if len(ids) < SCAN_CHUNK:
                return
            start += SCAN_CHUNK

    def _count(self) -> Summary:
        """Tasks per state and the names in use: a ZCARD per set, no scan."""
        with self._errors():
            states = sorted(map(_text, self._client.smembers(self._states)))
            names = sorted(map(_text, self._client.smembers(self._names)))
            pipe = self._client.pipeline(transaction=False)
            for kind, values in (("state", states), ("name", names)):
                for value in values:
                    pipe.zcard(index.by(self._prefix, kind, value))
            sizes = pipe.execute()
        counts = {s: int(n) for s, n in zip(states, sizes, strict=False) if n}
        used = [n for n, size in zip(names, sizes[len(states) :], strict=True) if size]
        return counts, used

    def neighbours(self, linked: Links, limit: int) -> list[TaskState] | None:
        keys = [index.by(self._prefix, "root", r) for r in sorted(linked.roots)]
        keys += [index.by(self._prefix, "group", g) for g in sorted(linked.groups)]
        for uuid in sorted(linked.ids):
            keys += [index.by(self._prefix, "parent", uuid), index.by(self._prefix, "body", uuid)]
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.zrevrange(key, 0, limit + len(linked.ids))
            found = dict.fromkeys(sorted(linked.named))
            for members in pipe.execute() if keys else []:
                found.update(dict.fromkeys(map(_text, members)))
        ids = [uuid for uuid in found if uuid not in linked.ids][:limit]
        return self._tasks(ids)

    def _tasks(self, ids: list[str]) -> list[TaskState]:
        if not ids:
            return []
        with self._errors():
            values = self._client.hmget(self._records, ids)
        found = (decode(i, _text(v)) for i, v in zip(ids, values, strict=True) if v)
        return [task for task in found if task is not None]

    def close(self) -> None:
        self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
