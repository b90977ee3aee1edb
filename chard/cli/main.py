"""``chard [-A app] <command>``: the entry point, global options and logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from chard import __version__
from chard.app import Celery
from chard.cli.appfinder import find_app
from chard.exceptions import ChardError

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def setup_logging(loglevel: str, logfile: str | None = None) -> None:
    """Configure the root logger the way Celery's worker does (the library never does)."""
    level = logging.getLevelName(loglevel.upper())
    if not isinstance(level, int):
        raise click.BadParameter(f"unknown log level {loglevel!r}; use DEBUG, INFO, WARNING, ...")
    handler: logging.Handler = (
        logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class AppContext:
    """What every command gets: the app, found lazily from ``-A``."""

    def __init__(self, spec: str | None, broker: str | None, backend: str | None) -> None:
        self.spec = spec
        self.broker = broker
        self.backend = backend
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            if self.spec is None:
                raise click.UsageError("no app given; pass -A/--app, e.g. chard -A proj worker")
            try:
                self._app = find_app(self.spec)
            except ChardError as exc:
                raise click.ClickException(str(exc)) from exc
            self._apply_overrides(self._app)
        return self._app

    def use(self, app: Celery) -> None:
        self._app = app
        self._apply_overrides(app)

    def _apply_overrides(self, app: Celery) -> None:
        if self.broker:
            app.conf.broker_url = self.broker
        if self.backend:
            app.conf.result_backend = self.backend


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="chard")
@click.option("-A", "--app", "app_spec", help="The app: module, package or module:attribute.")
@click.option("-b", "--broker", help="Broker URL (overrides broker_url).")
@click.option("--result-backend", help="Result backend URL (overrides result_backend).")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None, broker: str | None, result_backend: str | None):  # type: ignore[no-untyped-def]
    """chard: a distributed task queue that speaks Celery."""
    if ctx.obj is None:
        ctx.obj = AppContext(app_spec, broker, result_backend)


def _register_commands() -> None:
    from chard.cli import beat, call, deadletters, purge, result, settings, worker

    for module in (worker, beat, call, result, purge, settings, deadletters):
        cli.add_command(module.command)


_register_commands()


def main(argv: Sequence[str] | None = None) -> Any:
    """Console entry point."""
    return cli.main(args=list(argv) if argv is not None else None, prog_name="chard")


def run_with_app(app: Celery, argv: list[str] | None) -> Any:
    """Run the command line for an app already in hand (``app.start()``)."""
    context = AppContext(None, None, None)
    context.use(app)
    args = argv if argv is not None else sys.argv[1:]
    return cli.main(args=args, prog_name="chard", obj=context)
