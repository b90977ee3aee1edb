"""Celery's small app methods (issue 14): a settable timezone, set_current/set_default."""

from __future__ import annotations

import contextvars
from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from chard import Celery, _context
from chard.exceptions import ImproperlyConfigured


def test_the_timezone_is_settable_by_name_or_tzinfo(app: Celery) -> None:
    assert app.timezone is UTC
    app.timezone = "Europe/Moscow"
    assert app.timezone == ZoneInfo("Europe/Moscow")
    assert app.conf.timezone == "Europe/Moscow"
    assert app.now().utcoffset() == ZoneInfo("Europe/Moscow").utcoffset(app.now())
    app.timezone = ZoneInfo("Asia/Tokyo")
    assert app.timezone == ZoneInfo("Asia/Tokyo")


def test_an_unknown_timezone_names_the_value(app: Celery) -> None:
    app.timezone = "Mars/Olympus"
    with pytest.raises(ImproperlyConfigured, match="unknown timezone 'Mars/Olympus'"):
        _ = app.timezone


@pytest.mark.parametrize("method", ["set_current", "set_default"])
def test_set_current_and_set_default_make_the_app_current(method: str) -> None:
    def run() -> None:
        first = Celery("first", broker="memory://")
        second = Celery("second", broker="memory://", set_as_current=False)
        assert _context.get_current_app() is first
        getattr(second, method)()
        assert _context.get_current_app() is second

    contextvars.copy_context().run(run)
