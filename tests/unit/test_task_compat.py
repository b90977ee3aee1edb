"""Task-level Celery API (issue 14): shared=, Retry.humanize(), AsyncResult.ignored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chard import Celery
from chard.exceptions import Retry


def test_the_shared_option_is_accepted(app: Celery) -> None:
    task = app.task(name="private", shared=False)(lambda: 1)
    assert task.shared is False
    assert app.task(name="public")(lambda: 1).shared is True


def test_retry_humanize_says_when_as_celery() -> None:
    eta = datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert Retry(when=5).humanize() == "in 5s"
    assert Retry(when=eta).humanize() == f"at {eta}"
    assert str(Retry(exc=KeyError("k"), when=5)) == "Retry in 5s: KeyError('k')"
    assert str(Retry("custom", when=5)) == "custom"


def test_retry_with_an_eta_carries_the_instant(app: Celery) -> None:
    eta = datetime(2030, 1, 1, tzinfo=UTC)

    @app.task(name="again", bind=True)
    def again(self: Any) -> str:
        retry: Retry = self.retry(eta=eta, throw=False)
        return retry.humanize()

    assert again.apply().get() == f"at {eta}"


def test_ignored_says_whether_get_has_anything_to_wait_for(app: Celery) -> None:
    quiet = app.task(name="quiet", ignore_result=True)(lambda: None)
    loud = app.task(name="loud")(lambda: None)
    assert quiet.delay().ignored is True
    assert loud.delay().ignored is False
    result = app.AsyncResult("x")
    result.ignored = True  # settable, as Celery's
    assert result.get(timeout=0.01) is None
