"""chard's SQLite URLs: the one parser for the broker, the result backend and beat's store.

``sqlite:///relative/path`` and ``sqlite:////absolute/path`` (the third slash ends the
empty host, as in SQLAlchemy and Celery). All three users keep their data in one file
(chard's default puts broker, results and beat in ``chard.sqlite3``), so they must agree
on which file a URL names; that is why the parsing lives here, below all of them, rather
than in one of them.
"""

from __future__ import annotations

from pathlib import Path

from chard.exceptions import ImproperlyConfigured


def parse_sqlite_url(url: str, *, should_ignore_query: bool = False) -> Path:
    """Return the absolute path of the database file ``url`` names.

    Args:
        url: A ``sqlite:///`` URL.
        should_ignore_query: Drop what follows ``?`` (the result backend always has);
            otherwise a query string is refused, so that an option put there by mistake
            is not silently lost (the broker takes its settings as transport options).

    Raises:
        ImproperlyConfigured: not a sqlite URL, a query string (unless ignored), no file
            path, or an in-memory database, which other connections could not see.
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ImproperlyConfigured(f"not a sqlite URL: {url!r}; use 'sqlite:///chard.sqlite3'")
    rest, has_query, _ = rest.partition("?")
    if has_query and not should_ignore_query:
        raise ImproperlyConfigured(
            f"sqlite URL {url!r} has a query string; pass settings as broker options"
        )
    path = rest[1:] if rest.startswith("/") else ""  # the third slash ends the empty host
    if not path:
        raise ImproperlyConfigured(
            f"sqlite URL {url!r} has no file path; use 'sqlite:///relative.sqlite3' "
            "or 'sqlite:////absolute/path.sqlite3'"
        )
    if path == ":memory:" or path.startswith("file:"):
        raise ImproperlyConfigured(
            f"sqlite URL {url!r} names an in-memory database (or a SQLite URI), which other "
            "connections cannot see; use 'memory://' for an in-process broker or backend"
        )
    return Path(path).resolve()
