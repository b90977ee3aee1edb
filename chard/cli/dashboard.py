"""``chard dashboard``: serve the web UI, JSON API and ``/metrics`` (the ``dashboard`` extra)."""

from __future__ import annotations

import click

from chard.cli.context import AppContext
from chard.cli.process import setup_logging


@click.command("dashboard")
@click.option("--port", type=click.IntRange(0, 65535), default=5555, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; beyond loopback, a login must be configured.",
)
@click.option(
    "--max-tasks",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="Tasks kept in memory (the least recently changed are forgotten first).",
)
@click.option(
    "--inspect-interval",
    type=click.FloatRange(0.5),
    default=5.0,
    show_default=True,
    help="Seconds between two rounds of questions to the workers.",
)
@click.option(
    "--enable-events/--no-enable-events",
    default=True,
    show_default=True,
    help="Switch task events on at workers that send none (as Flower does).",
)
@click.option(
    "--history/--no-history",
    default=True,
    show_default=True,
    help="Keep the tasks in the result backend's database, so a restart loses nothing.",
)
@click.option(
    "--history-days",
    type=click.FloatRange(0, min_open=True),
    default=7.0,
    show_default=True,
    help="Forget tasks unchanged for this many days (and beyond --history-max).",
)
@click.option(
    "--history-max",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="Tasks the history keeps (the list searches them all; memory keeps --max-tasks).",
)
@click.option("-l", "--loglevel", default="WARNING", show_default=True)
@click.pass_obj
def command(
    ctx: AppContext,
    port: int,
    address: str,
    max_tasks: int,
    inspect_interval: float,
    enable_events: bool,
    history: bool,
    history_days: float,
    history_max: int,
    loglevel: str,
) -> None:
    """Serve a web dashboard of workers, tasks and queues (like Flower), with a JSON API.

    Login: set CHARD_DASHBOARD_TOKEN or CHARD_DASHBOARD_BASIC_AUTH=user:password (or the
    settings dashboard_token / dashboard_basic_auth); required beyond 127.0.0.1.
    """
    try:  # the dashboard extra: starlette and uvicorn
        from chard.dashboard.server import serve
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs the dashboard extra ({exc.name} is missing): "
            "pip install 'chard[dashboard]'"
        ) from exc
    app = ctx.app
    setup_logging(loglevel)
    serve(
        app,
        address,
        port,
        max_tasks=max_tasks,
        inspect_interval=inspect_interval,
        enable_events=enable_events,
        keep_history=history,
        history_days=history_days,
        history_max=history_max,
    )
