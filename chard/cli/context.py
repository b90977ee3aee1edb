"""What every command gets as its click object: the app, found lazily from ``-A``.

Below every command module and below :mod:`chard.cli.main`, which registers them: the
commands import this, never ``main``.
"""

from __future__ import annotations

import click

from chard.app import Celery
from chard.backends import check_backend_url
from chard.brokers import check_broker_url
from chard.cli.appfinder import find_app
from chard.config import check_settings
from chard.contrib import django
from chard.exceptions import ChardError


class AppContext:
    """What every command gets: the app, found lazily from ``-A``."""

    def __init__(self, spec: str | None, broker: str | None, backend: str | None) -> None:
        self.spec = spec
        self.broker = broker
        self.backend = backend
        self._app: Celery | None = None
        #: ``-q``/``--quiet``: no start-up banner.
        self.quiet = False

    @property
    def app(self) -> Celery:
        if self._app is None:
            if self.spec is None:
                raise click.UsageError("no app given; pass -A/--app, e.g. chard -A proj worker")
            try:
                app = find_app(self.spec)
            except ChardError as exc:
                raise click.ClickException(str(exc)) from exc
            self.use(app)
        assert self._app is not None
        return self._app

    def use(self, app: Celery) -> None:
        """Take ``app``: apply ``-b``/``--result-backend``, check the settings, set Django up.

        Raises:
            ImproperlyConfigured: a setting has a value chard cannot use, or Django cannot
                start (shown as one line by :class:`chard.cli.main.ChardGroup`).
        """
        self._apply_overrides(app)
        check_settings(app.conf)
        check_broker_url(app.broker_url)  # every command: a URL chard cannot use is an error
        if app.backend_url is not None:
            check_backend_url(app.backend_url)
        django.setup(app)  # before any command imports a task module (worker, beat, call)
        self._app = app

    def _apply_overrides(self, app: Celery) -> None:
        if self.broker:
            app.conf.broker_url = self.broker
        if self.backend:
            app.conf.result_backend = self.backend
