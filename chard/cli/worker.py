"""``chard worker``: start a worker node."""

from __future__ import annotations

import click

from chard.cli.beat import start_embedded_beat
from chard.cli.context import AppContext
from chard.cli.process import setup_logging, write_pidfile
from chard.exceptions import ChardError


@click.command("worker")
@click.option("-l", "--loglevel", default="WARNING", show_default=True, help="Log level.")
@click.option("-c", "--concurrency", type=int, help="Pool size (default: number of CPUs).")
@click.option(
    "-P", "--pool", type=click.Choice(["prefork", "threads", "solo"]), help="Execution pool."
)
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: celery).")
@click.option("-n", "--hostname", help="Node name; %h expands to the host name.")
@click.option("--prefetch-multiplier", type=int, help="Messages leased ahead per pool slot.")
@click.option("--max-tasks-per-child", type=int, help="Replace a child after N tasks.")
@click.option("-f", "--logfile", help="Log to this file instead of stderr.")
@click.option("--pidfile", help="Write the worker's PID here.")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty (chard).")
@click.option("-B", "--beat", is_flag=True, help="Also run beat in this process (development).")
@click.option(
    "-s",
    "--schedule-filename",
    "--schedule",
    "schedule_filename",
    help="With -B: Celery's beat state file (checked; run state is in the broker).",
)
@click.option("-S", "--scheduler", help="With -B: Celery's scheduler name (built-in ones only).")
@click.option("-q", "--quiet", is_flag=True, help="Do not print the start-up banner.")
@click.pass_obj
def command(
    ctx: AppContext,
    loglevel: str,
    concurrency: int | None,
    pool: str | None,
    queues: str | None,
    hostname: str | None,
    prefetch_multiplier: int | None,
    max_tasks_per_child: int | None,
    logfile: str | None,
    pidfile: str | None,
    burst: bool,
    beat: bool,
    schedule_filename: str | None,
    scheduler: str | None,
    quiet: bool,
) -> None:
    """Start a worker that runs the app's tasks.

    The banner is printed at every log level, as Celery's is (``-q`` hides it); "ready."
    is logged once the broker and result backend have answered.
    """
    from chard.worker.worker import Worker

    setup_logging(loglevel, logfile)
    app = ctx.app
    pid_path = write_pidfile(pidfile) if pidfile else None
    stop_beat = None
    try:
        worker = Worker(
            app,
            hostname=hostname,
            concurrency=concurrency,
            pool=pool,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
            prefetch_multiplier=prefetch_multiplier,
            max_tasks_per_child=max_tasks_per_child,
            burst=burst,
            on_banner=_no_banner if quiet or ctx.quiet else _print_banner,
        )
        if beat:  # composed here: chard.worker and chard.beat never import each other
            try:
                stop_beat = start_embedded_beat(
                    app, schedule_filename=schedule_filename, scheduler=scheduler
                )
            except ChardError as exc:
                raise click.ClickException(str(exc)) from exc
        worker.start()  # chard errors (bad URL, broker down for good): one line, by the group
    finally:
        if stop_beat is not None:
            stop_beat()
        if pid_path is not None:
            pid_path.unlink(missing_ok=True)


def _print_banner(text: str) -> None:
    click.echo(text)  # stdout, flushed: before the log lines that follow on stderr


def _no_banner(text: str) -> None:
    """``-q``: the banner is neither printed nor logged."""
