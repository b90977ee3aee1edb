"""What the SQL history stores (SQLite, PostgreSQL) share: the columns, indexes, queries.

A task's record is JSON; the columns the list's filters and the workflow graph read
(:data:`COLUMNS`) are copied out of it on write, so a filter is a WHERE clause and a
workflow a query over indexed link columns. Statements are written once, with ``?``
for parameters and ``{t}`` for the table; each store fills both in its own way
(:meth:`SQLHistory._rows`, :meth:`SQLHistory._write`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from chard.dashboard.history import History, Reused, Summary, decode
from chard.dashboard.query import Found, Links, TaskFilter
from chard.events.state import TaskState

#: The columns copied out of a record: name -> its JSON path.
COLUMNS = {
    "state": "$.state", "name": "$.name", "worker": "$.worker", "args": "$.args",
    "kwargs": "$.kwargs", "root_id": "$.root_id", "parent_id": "$.parent_id",
    "group_id": "$.extra.group_id", "chord_body_id": "$.extra.chord_body_id",
}  # fmt: skip
#: ``list`` holds every column a filter reads, in the list's order: a substring filter
#: scans this narrow index, never the records (most of the table's bytes). An equality
#: filter walks one range of the others; counts per state and the names read an index.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_list"
    " ON {t} (changed, state, worker, name, args, kwargs)",
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_state_worker ON {t} (state, worker, changed)",
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_name ON {t} (name, changed)",
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_worker ON {t} (worker, changed)",
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_root ON {t} (root_id)",
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_parent ON {t} (parent_id)"
    " WHERE parent_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_group ON {t} (group_id)"
    " WHERE group_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS chard_dashboard_tasks_body ON {t} (chord_body_id)"
    " WHERE chord_body_id IS NOT NULL",
)
#: Seconds the counts per state and the names are reused (another process may write).
SUMMARY_TTL = 2.0

Row = tuple[Any, ...]


class SQLHistory(History):
    """A history in one SQL table; subclasses connect, create it, and save."""

    #: The SQL function giving a substring's position (0 when absent).
    contains = "instr"

    def __init__(self) -> None:
        self._summary: Reused[Summary] = Reused(SUMMARY_TTL)

    @abstractmethod
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one read statement (``?`` parameters, ``{t}`` the table); return its rows."""

    @abstractmethod
    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run write statements in one transaction; return the rows they changed."""

    def changed(self) -> None:
        """Forget the reused counts and names (this process wrote)."""
        self._summary.forget()

    def load(self, limit: int) -> list[tuple[str, str]]:
        rows = self._rows("SELECT uuid, record FROM {t} ORDER BY changed DESC LIMIT ?", (limit,))
        return [(str(uuid), str(record)) for uuid, record in reversed(rows)]

    def get(self, uuid: str) -> str | None:
        rows = self._rows("SELECT record FROM {t} WHERE uuid = ?", (uuid,))
        return str(rows[0][0]) if rows else None

    def search(self, where: TaskFilter, offset: int, limit: int) -> Found:
        clause, params = self._where(where)
        page = f"SELECT uuid, record FROM {{t}}{clause} ORDER BY changed DESC LIMIT ? OFFSET ?"
        rows = self._rows(page, (*params, limit, offset))
        if offset == 0 and len(rows) < limit:
            total = len(rows)  # the whole answer is on this page
        else:
            total = int(self._rows(f"SELECT COUNT(*) FROM {{t}}{clause}", params)[0][0])
        counts, names = self._summary.get(self._count)
        return Found(total, _decoded(rows), counts, names)

    def neighbours(self, linked: Links, limit: int) -> list[TaskState] | None:
        lists = [
            ("uuid", linked.named), ("root_id", linked.roots), ("group_id", linked.groups),
            ("parent_id", linked.ids), ("chord_body_id", linked.ids),
        ]  # fmt: skip
        terms = [f"{column} IN ({_marks(values)})" for column, values in lists if values]
        if not terms:
            return []
        params = [value for _, values in lists for value in sorted(values)]
        sql = (
            f"SELECT uuid, record FROM {{t}} WHERE ({' OR '.join(terms)}) "
            f"AND uuid NOT IN ({_marks(linked.ids)}) LIMIT ?"
        )
        return _decoded(self._rows(sql, (*params, *sorted(linked.ids), limit)))

    def trim(self, max_count: int, older_than: float | None) -> int:
        statements: list[tuple[str, Sequence[Any]]] = []
        if older_than is not None:
            statements.append(("DELETE FROM {t} WHERE changed < ?", (older_than,)))
        statements.append((
            "DELETE FROM {t} WHERE changed <= "
            "(SELECT changed FROM {t} ORDER BY changed DESC LIMIT 1 OFFSET ?)",
            (max_count,),
        ))  # fmt: skip
        self.changed()
        return self._write(statements)

    def _count(self) -> Summary:
        """Tasks per state and the names over the whole store (each reads an index)."""
        by_state = self._rows("SELECT state, COUNT(*) FROM {t} GROUP BY state")
        counts = {str(s): int(n) for s, n in by_state if s is not None}
        distinct = self._rows("SELECT DISTINCT name FROM {t} WHERE name IS NOT NULL")
        return counts, sorted(str(n) for (n,) in distinct)

    def _where(self, where: TaskFilter) -> tuple[str, list[Any]]:
        """Return ``where`` as a WHERE clause (or "") and its parameters, same meaning."""
        text, prefix, has = where.search, where.id, self.contains
        candidates: list[tuple[Any, str, tuple[Any, ...]]] = [
            (where.state, "state = ?", (where.state,)),
            (where.worker, "worker = ?", (where.worker,)),
            (where.name, f"{has}(name, ?) > 0", (where.name,)),
            (prefix, "substr(uuid, 1, ?) = ?", (len(prefix or ""), prefix)),
            (where.since, "changed >= ?", (where.since,)),
            (where.until, "changed <= ?", (where.until,)),
            (text, f"({has}(args, ?) > 0 OR {has}(kwargs, ?) > 0)", (text, text)),
        ]
        terms = [(sql, params) for value, sql, params in candidates if value is not None]
        clause = " AND ".join(sql for sql, _ in terms)
        return (f" WHERE {clause}" if terms else ""), [p for _, params in terms for p in params]


def _marks(values: Sequence[Any] | frozenset[Any]) -> str:
    return ",".join("?" * len(values))


def _decoded(rows: list[Row]) -> list[TaskState]:
    return [t for t in (decode(str(u), str(r)) for u, r in rows) if t is not None]
