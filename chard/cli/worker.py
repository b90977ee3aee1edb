"""``chard worker``: start a worker node."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from chard._utils.nodenames import node_format
from chard.cli.beat import start_embedded_beat
from chard.cli.context import AppContext
from chard.cli.process import notify_ready_on, setup_logging, write_pidfile
from chard.cli.purge import purge_queues
from chard.exceptions import ChardError

if TYPE_CHECKING:
    from chard.app import Celery


@click.command("worker")
@click.option("-l", "-L", "--loglevel", default="WARNING", show_default=True, help="Log level.")
@click.option("-c", "--concurrency", type=int, help="Pool size (default: number of CPUs).")
@click.option("-P", "--pool", help="Execution pool: prefork (default), threads, solo, gevent.")
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default: celery).")
@click.option("-n", "--hostname", help="Node name; %h expands to the host name.")
@click.option("--prefetch-multiplier", type=int, help="Messages leased ahead per pool slot.")
@click.option("--max-tasks-per-child", type=int, help="Replace a child after N tasks.")
@click.option(
    "--max-memory-per-child",
    type=int,
    help="Replace a child whose resident memory is over N KiB after a task.",
)
@click.option("--autoscale", help="max,min: grow the prefork pool while tasks wait, shrink idle.")
@click.option("-f", "--logfile", help="Log to this file instead of stderr.")
@click.option("--pidfile", help="Write the worker's PID here.")
@click.option(
    "-E",
    "--task-events",
    "--events",
    "task_events",
    is_flag=True,
    default=None,
    help="Send task and worker events, for monitors (worker_send_task_events).",
)
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
@click.option(
    "--without-heartbeat",
    is_flag=True,
    help="Send no worker events (online, heartbeats, offline): monitors will not see the node.",
)
@click.option(
    "--without-gossip",
    "--without-mingle",
    "without_peer_sync",
    is_flag=True,
    help="Accepted for Celery: chard has neither (revokes are durable in the broker instead).",
)
@click.option(
    "-O",
    "optimization",
    type=click.Choice(["default", "fair"]),
    help="fair: each child leases only the task it runs (--prefetch-multiplier 1).",
)
@click.option(
    "--purge", "--discard", "purge", is_flag=True, help="Purge the consumed queues before starting."
)
@click.option("--time-limit", type=float, help="Hard time limit for every task (task_time_limit).")
@click.option(
    "--soft-time-limit", type=float, help="Soft time limit for every task (task_soft_time_limit)."
)
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
    max_memory_per_child: int | None,
    autoscale: str | None,
    logfile: str | None,
    pidfile: str | None,
    task_events: bool | None,
    burst: bool,
    beat: bool,
    schedule_filename: str | None,
    scheduler: str | None,
    quiet: bool,
    without_heartbeat: bool,
    without_peer_sync: bool,
    optimization: str | None,
    purge: bool,
    time_limit: float | None,
    soft_time_limit: float | None,
) -> None:
    """Start a worker that runs the app's tasks.

    The banner is printed at every log level, as Celery's is (``-q`` hides it); "ready."
    is logged once the broker and result backend have answered.
    """
    from chard.worker.autoscale import parse_autoscale
    from chard.worker.pools import GEVENT, pool_kind
    from chard.worker.worker import Worker, expand_hostname

    try:  # bad options fail before the app is loaded (and before any patching)
        kind = pool_kind(pool) if pool else None
        if autoscale is not None:
            parse_autoscale(autoscale)
        nodename = expand_hostname(hostname or "chard@%h")
        logfile = node_format(logfile, nodename, index=0) if logfile else None
        pidfile = node_format(pidfile, nodename, index=0) if pidfile else None
        if kind == GEVENT:  # before the app opens a socket or the worker starts a thread
            from chard.worker.pools.green import monkey_patch

            monkey_patch()
    except (ChardError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    setup_logging(loglevel, logfile)
    app = ctx.app
    _set_time_limits(app, time_limit, soft_time_limit)
    if optimization == "fair" and prefetch_multiplier is None:
        prefetch_multiplier = 1
    pid_path = write_pidfile(pidfile) if pidfile else None
    stop_beat = None
    try:
        try:
            worker = Worker(
                app,
                hostname=nodename,
                concurrency=concurrency,
                pool=kind,
                queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
                prefetch_multiplier=prefetch_multiplier,
                max_tasks_per_child=max_tasks_per_child,
                max_memory_per_child=max_memory_per_child,
                autoscale=autoscale,
                burst=burst,
                send_events=task_events or None,
                heartbeat=not without_heartbeat,
                on_banner=_no_banner if quiet or ctx.quiet else _print_banner,
            )
        except ChardError as exc:
            raise click.ClickException(str(exc)) from None
        if purge:
            purge_queues(app, worker.queues)  # Celery's --purge: then start
        notify_ready_on(worker)  # chard multi waits for this
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


def _set_time_limits(app: Celery, hard: float | None, soft: float | None) -> None:
    """``--time-limit``/``--soft-time-limit``: this node's defaults, as Celery's worker sets."""
    if hard is not None:
        app.conf.task_time_limit = hard
    if soft is not None:
        app.conf.task_soft_time_limit = soft


def _print_banner(text: str) -> None:
    click.echo(text)  # stdout, flushed: before the log lines that follow on stderr


def _no_banner(text: str) -> None:
    """``-q``: the banner is neither printed nor logged."""
