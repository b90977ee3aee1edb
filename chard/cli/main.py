"""``chard [-A app] <command>``: the entry point and global options; it registers the commands.

The top of the CLI: it imports every command module, and none of them imports it (what
they share is in :mod:`chard.cli.context` and :mod:`chard.cli.process`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from chard import __version__
from chard.app import Celery
from chard.cli import beat, call, db, deadletters, multi, purge, result, settings, worker
from chard.cli.context import AppContext


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


for _module in (worker, multi, beat, call, result, purge, settings, deadletters, db):
    cli.add_command(_module.command)


def main(argv: Sequence[str] | None = None) -> Any:
    """Console entry point."""
    return cli.main(args=list(argv) if argv is not None else None, prog_name="chard")


def run_with_app(app: Celery, argv: list[str] | None) -> Any:
    """Run the command line for an app already in hand (``app.start()``)."""
    context = AppContext(None, None, None)
    context.use(app)
    args = argv if argv is not None else sys.argv[1:]
    return cli.main(args=args, prog_name="chard", obj=context)
