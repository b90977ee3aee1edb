"""``chard [-A app] <command>``: the entry point and global options; it registers the commands.

The top of the CLI: it imports every command module, and none of them imports it (what
they share is in :mod:`chard.cli.context` and :mod:`chard.cli.process`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from chard import __version__
from chard.app import Celery
from chard.cli import (
    beat,
    call,
    control,
    dashboard,
    db,
    deadletters,
    events,
    multi,
    purge,
    result,
    settings,
    worker,
)
from chard.cli.context import AppContext
from chard.exceptions import ChardError


class ChardGroup(click.Group):
    """The ``chard`` group: a chard error in any command is one line on stderr, exit 1.

    A configuration error (``ImproperlyConfigured``: a bad setting, an unknown or unbuilt
    URL scheme) or a broker still down after the start-up retries is something to fix, not
    a bug to debug, so it is shown as ``Error: <message>`` without the traceback. The
    traceback is shown with ``chard --traceback ...`` or at log level DEBUG.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ChardError as exc:
            if ctx.params.get("show_traceback") or logging.getLogger().isEnabledFor(logging.DEBUG):
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise click.ClickException(message) from exc


@click.group(cls=ChardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="chard")
@click.option("-A", "--app", "app_spec", help="The app: module, package or module:attribute.")
@click.option("-b", "--broker", help="Broker URL (overrides broker_url).")
@click.option("--result-backend", help="Result backend URL (overrides result_backend).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the start-up banner.")
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="Show tracebacks of chard's errors."
)
@click.pass_context
def cli(  # type: ignore[no-untyped-def]
    ctx: click.Context,
    app_spec: str | None,
    broker: str | None,
    result_backend: str | None,
    quiet: bool,
    show_traceback: bool,
):
    """chard: a distributed task queue that speaks Celery."""
    if ctx.obj is None:
        ctx.obj = AppContext(app_spec, broker, result_backend)
    ctx.obj.quiet = ctx.obj.quiet or quiet


for _module in (
    worker, multi, beat, call, result, purge, settings, deadletters, events, db, dashboard
):  # fmt: skip
    cli.add_command(_module.command)
for _command in (control.inspect_command, control.control_command, control.status_command):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> Any:
    """Console entry point."""
    return cli.main(args=list(argv) if argv is not None else None, prog_name="chard")


def run_with_app(app: Celery, argv: list[str] | None) -> Any:
    """Run the command line for an app already in hand (``app.start()``)."""
    context = AppContext(None, None, None)
    context.use(app)
    args = argv if argv is not None else sys.argv[1:]
    return cli.main(args=args, prog_name="chard", obj=context)
