"""SQLite URLs: one parser for the broker, the result backend and beat's store."""

from __future__ import annotations

from pathlib import Path

import pytest

from chard._sqlite import parse_sqlite_url
from chard.backends.sqlite import SQLiteResultBackend
from chard.brokers.sqlite import SQLiteBroker
from chard.exceptions import ImproperlyConfigured


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative.sqlite3", Path("relative.sqlite3").resolve()),
        ("sqlite:////abs/path.sqlite3", Path("/abs/path.sqlite3")),
        ("SQLITE:////abs/path.sqlite3", Path("/abs/path.sqlite3")),
    ],
)
def test_parse_sqlite_url(url: str, expected: Path) -> None:
    assert parse_sqlite_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", "no file path"),
        ("sqlite:///", "no file path"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///file::memory:", "memory://"),
        ("redis://localhost", "not a sqlite URL"),
        ("chard.sqlite3", "not a sqlite URL"),
        ("sqlite:////abs/path.sqlite3?timeout=5", "query string"),
    ],
)
def test_parse_sqlite_url_refuses_with_a_hint(url: str, expected: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=expected) as raised:
        parse_sqlite_url(url)

    assert "; " in str(raised.value)


def test_the_result_backend_ignores_a_query_string_and_the_broker_refuses_it(
    tmp_path: Path,
) -> None:
    # Given: one file named with options after "?"
    url = f"sqlite:///{tmp_path / 'chard.sqlite3'}?mode=x"

    # Then: the backend opens the file (as it always has), the broker names the fix
    backend = SQLiteResultBackend(url)
    assert backend.path == tmp_path / "chard.sqlite3"
    backend.close()
    with pytest.raises(ImproperlyConfigured, match="pass settings as broker options"):
        SQLiteBroker(url)
