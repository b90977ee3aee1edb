"""The secondary indexes of the Redis history: one sorted set per value a filter reads.

Redis has no secondary index of its own, so the store keeps them: under the
backend's key prefix, ``chard.dashboard.by.<field>:<value>`` is a sorted set of the
task ids whose record has that value, scored like ``chard.dashboard.changed`` by the
time of the task's last change. Fields: ``state``, ``name`` and ``worker`` (the
list's filters) and ``root``, ``parent``, ``group``, ``body`` (a workflow's links,
for :meth:`~chard.dashboard.history_redis.RedisHistory.neighbours`). The sets
``chard.dashboard.states`` and ``chard.dashboard.names`` list the values seen, for
the list's totals and its name filter (a substring, matched over the names).

Each task's index entry (hash ``chard.dashboard.index``) says which sets hold it,
so that a change of state, or a trim, removes it from the sets it left.
"""

from __future__ import annotations

import json
from typing import Any

#: The index entry's fields, in its order: the filtered fields, then the links.
ENTRY = ("state", "name", "worker", "args", "kwargs", "root_id", "parent_id", "group_id",
         "chord_body_id")  # fmt: skip
#: Entry field -> the sorted sets' kind (``by.<kind>:<value>``).
KINDS = {"state": "state", "name": "name", "worker": "worker", "root_id": "root",
         "parent_id": "parent", "group_id": "group", "chord_body_id": "body"}  # fmt: skip
#: Bumped when what is indexed changes: a store without it backfills once on open.
VERSION = "1"


def entry(text: str) -> list[Any]:
    """The index entry of a record (its JSON text): the fields of :data:`ENTRY`."""
    try:
        fields = json.loads(text)
    except ValueError:
        return [None] * len(ENTRY)
    extra = fields.get("extra") or {}
    found = [fields.get(name) for name in ENTRY[:7]]
    found += [extra.get(name) for name in ENTRY[7:]]
    found[0] = found[0] or "PENDING"
    return found


def dump(fields: list[Any]) -> str:
    """An index entry as stored (a JSON list)."""
    return json.dumps(fields)


def parse(text: str | bytes | None) -> list[Any] | None:
    """An index entry as stored; entries of the first release (5 fields) padded."""
    if text is None:
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    if not isinstance(found, list):
        return None
    return (found + [None] * len(ENTRY))[: len(ENTRY)]


def needle(search: str | None) -> bytes | None:
    """``search`` as it appears in a stored entry, to skip entries without it unparsed;
    None when there is none, or when JSON would escape it (the entries are parsed)."""
    if search is None or dump([search]) != f'["{search}"]':
        return None
    return search.encode()


def memberships(prefix: str, fields: list[Any] | None) -> set[str]:
    """The sorted sets (full key names) a task with index entry ``fields`` belongs to."""
    if fields is None:
        return set()
    return {
        by(prefix, KINDS[name], value)
        for name, value in zip(ENTRY, fields, strict=True)
        if name in KINDS and isinstance(value, str) and value
    }


def by(prefix: str, kind: str, value: str) -> str:
    """The key of the sorted set of the tasks whose ``kind`` is ``value``."""
    return f"{prefix}chard.dashboard.by.{kind}:{value}"
