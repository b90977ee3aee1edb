"""``chard beat``: run the periodic-task scheduler, and edit its schedule while it runs.

``chard -A proj beat -l INFO`` runs beat as its own process. Several may run against one broker,
on any hosts: a leader lease in the broker picks the one that sends, and idempotent firing claims
(also in the broker) make sure no run is sent twice even if two briefly overlap. ``-s`` is
Celery's local state file: checked, never used, and it never decides who leads (see
:mod:`chard.beat.compat`). ``chard -A proj worker -B`` embeds beat in a worker (for development;
it is safe with several workers, since the lease still picks one).

``chard -A proj beat schedule add|list|remove|enable|disable`` edits the schedule store; running
beats pick the change up within a second or two.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import click

from chard import __version__
from chard._utils.log import redact_url
from chard.app import Celery
from chard.beat.scheduler import entry_from_config
from chard.beat.service import DEFAULT_LEASE_TIMEOUT, Beat, PlannedRun
from chard.beat.store import ScheduleStore
from chard.beat.stores import open_schedule_store
from chard.cli.context import AppContext
from chard.cli.process import setup_logging, write_pidfile
from chard.exceptions import ChardError
from chard.schedules import BaseSchedule, crontab

logger = logging.getLogger(__name__)


def _when(dt: datetime | None, app: Celery, now: datetime) -> str:
    if dt is None:
        return "disabled"
    local = dt.astimezone(app.timezone)
    return f"{local:%Y-%m-%d %H:%M:%S %Z} (in {max(0.0, (dt - now).total_seconds()):.1f}s)"


def summary_lines(beat: Beat) -> list[str]:
    """Return the schedule table and the problems: what beat will send, and when."""
    now = datetime.now(UTC)
    plan: list[PlannedRun] = beat.planned()
    lines = ["[schedule]"] if plan else ["[schedule] (empty: nothing will be sent)"]
    for run in plan:
        unknown = "" if run.is_task_known else "  (task not registered here: sent by name)"
        lines.append(
            f"  . {run.name}: {run.task} {run.schedule} "
            f"next {_when(run.next_run, beat.app, now)}{unknown}"
        )
    if beat.errors:
        lines += ["[problems] (these entries are skipped; the others run)"]
        lines += [f"  ! {error}" for error in beat.errors]
    return lines


def leader_line(beat: Beat) -> str:
    """Say which process leads: this beat, another one (this one stands by), or none yet."""
    holder = beat.leader()
    if holder is None:
        return "nobody yet (this beat takes the lease on its next loop)"
    if holder.owner == beat.owner:
        return f"this beat ({beat.owner}) sends the due tasks"
    return (
        f"{holder.owner}; this beat stands by and takes over within "
        f"{beat.lease_timeout:.1f}s of it stopping"
    )


def banner(beat: Beat) -> str:
    """Return Celery-shaped start-up text: configuration, who leads, every entry's next run."""
    app = beat.app
    lines = [
        f"chard beat v{__version__} is starting.",
        f"LocalTime -> {datetime.now(app.timezone):%Y-%m-%d %H:%M:%S %Z}",
        "Configuration ->",
        f"    . broker -> {redact_url(app.broker_url)}",
        f"    . store -> {beat.store!r} (schedule, run state, leader lease, firing claims)",
        f"    . state file -> {beat.state_file} (checked, not used: run state is in the broker)",
        f"    . timezone -> {app.timezone}",
        f"    . maxinterval -> {beat.max_interval:.2f} seconds",
        f"    . lease -> {beat.lease_timeout:.1f}s as {beat.owner}",
        f"    . leader -> {leader_line(beat)}",
        "    . HA -> run more 'chard beat' processes against this broker, on any host: one "
        "sends, the others stand by",
        *summary_lines(beat),
    ]
    return "\n".join(lines) + "\n"


def start_embedded_beat(
    app: Celery, *, schedule_filename: str | None = None, scheduler: str | None = None
) -> Callable[[], None]:
    """Start beat in a thread of this process (``worker -B``); return the function that stops it.

    Raises:
        ImproperlyConfigured: a bad ``-s`` path or ``--scheduler`` (before anything starts).
    """
    beat = Beat(app, schedule_filename=schedule_filename, scheduler=scheduler)
    beat.setup()
    logger.info("beat: leader -> %s", leader_line(beat))
    for line in summary_lines(beat):
        logger.info("beat: %s", line)
    logger.warning(
        "beat: running inside the worker (-B) is meant for development; run 'chard beat' as "
        "its own process in production"
    )
    thread = beat.start_thread()

    def stop() -> None:
        beat.stop()
        thread.join(timeout=10.0)

    return stop


@click.group("beat", invoke_without_command=True)
@click.option("-l", "--loglevel", default="WARNING", show_default=True, help="Log level.")
@click.option("-f", "--logfile", help="Log to this file instead of stderr.")
@click.option("--pidfile", help="Write beat's PID here.")
@click.option(
    "-s",
    "--schedule",
    "schedule_path",
    help="Celery's local state file (default: beat_schedule_filename, celerybeat-schedule). "
    "chard checks the path but keeps run state, the lease and the claims in the broker.",
)
@click.option(
    "-S",
    "--scheduler",
    help="Scheduler class: Celery's built-in names (celery.beat:PersistentScheduler) only.",
)
@click.option("--max-interval", type=float, help="Longest sleep between schedule checks (s).")
@click.option(
    "--lease-timeout",
    type=float,
    default=DEFAULT_LEASE_TIMEOUT,
    show_default=True,
    help="Seconds before a standby beat takes over from a dead leader (chard).",
)
@click.pass_context
def command(
    click_ctx: click.Context,
    loglevel: str,
    logfile: str | None,
    pidfile: str | None,
    schedule_path: str | None,
    scheduler: str | None,
    max_interval: float | None,
    lease_timeout: float,
) -> None:
    """Run the periodic task scheduler (or edit its schedule: see 'beat schedule')."""
    if click_ctx.invoked_subcommand is not None:
        return
    setup_logging(loglevel, logfile)
    ctx: AppContext = click_ctx.obj
    app = ctx.app
    pid_path = write_pidfile(pidfile) if pidfile else None
    try:
        beat = Beat(
            app,
            max_interval=max_interval,
            lease_timeout=lease_timeout,
            scheduler=scheduler,
            schedule_filename=schedule_path,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):  # also while waiting for the broker
            signal.signal(sig, lambda signum, frame: beat.stop())
        beat.setup()
        if not beat.is_setup:
            return  # stopped before the broker answered
        if not ctx.quiet:
            click.echo(banner(beat), nl=False)
        logger.info("beat: Starting...")
        beat.run()
    except (ChardError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
        if pid_path is not None:
            pid_path.unlink(missing_ok=True)


# -- beat schedule ... ---------------------------------------------------------------------------
def _store(click_ctx: click.Context) -> tuple[Celery, ScheduleStore]:
    app: Celery = click_ctx.find_object(AppContext).app  # type: ignore[union-attr]
    try:
        return app, open_schedule_store(app)
    except ChardError as exc:
        raise click.ClickException(str(exc)) from exc


def _json_arg(name: str, text: str | None, kind: type, default: Any) -> Any:
    if text is None:
        return default
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not JSON: {exc}", param_hint=name) from exc
    if not isinstance(value, kind):
        raise click.BadParameter(f"{text!r} is not a JSON {kind.__name__}", param_hint=name)
    return value


@command.group("schedule")
def schedule_group() -> None:
    """Add, list, remove, enable or disable entries while beat runs."""


@schedule_group.command("add")
@click.argument("name")
@click.argument("task")
@click.option("--every", type=float, help="Run every N seconds.")
@click.option("--crontab", "cron", help="Cron line: 'minute hour day_of_month month dow'.")
@click.option("--tz", help="Zone of the cron line (default: the app's timezone).")
@click.option("--args", "args_json", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--queue", help="Queue to send to.")
@click.option("--options", "options_json", help="apply_async options as a JSON object.")
@click.option("--disabled", is_flag=True, help="Add it disabled.")
@click.pass_context
def add_command(
    click_ctx: click.Context,
    name: str,
    task: str,
    every: float | None,
    cron: str | None,
    tz: str | None,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    options_json: str | None,
    disabled: bool,
) -> None:
    """Add (or replace) entry NAME sending TASK, on --every seconds or a --crontab line."""
    if (every is None) == (cron is None):
        raise click.UsageError("give exactly one of --every SECONDS or --crontab 'm h dom mon dow'")
    app, store = _store(click_ctx)
    options = _json_arg("--options", options_json, dict, {})
    if queue:
        options["queue"] = queue
    try:
        sched: float | BaseSchedule = (
            every if every is not None else crontab.from_string(cron or "", tz=tz)
        )
    except ValueError as exc:
        raise click.ClickException(f"schedule entry {name!r} has a bad schedule: {exc}") from exc
    item = {
        "task": task,
        "schedule": sched,
        "args": _json_arg("--args", args_json, list, []),
        "kwargs": _json_arg("--kwargs", kwargs_json, dict, {}),
        "options": options,
    }
    app.finalize()
    try:
        entry = replace(entry_from_config(name, item, app=app), enabled=not disabled)
        store.add(entry, app_tz=str(app.conf.timezone) if app.conf.timezone else None)
    except (ValueError, ChardError) as exc:
        raise click.ClickException(str(exc)) from exc
    if task not in app.tasks:
        click.echo(f"warning: task {task!r} is not registered in this app; beat sends it by name")
    click.echo(f"Added {name!r}: {task} {entry.schedule!r}{' (disabled)' if disabled else ''}.")


@schedule_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per entry).")
@click.pass_context
def list_command(click_ctx: click.Context, as_json: bool) -> None:
    """List the entries in the store, with their last and next runs."""
    app, store = _store(click_ctx)
    rows, errors = store.describe(app, datetime.now(UTC))
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        for row in rows:
            state = "enabled" if row["enabled"] else "disabled"
            click.echo(
                f"{row['name']}: {row['task']} {row['schedule']} [{state}, {row['origin']}] "
                f"runs={row['total_run_count']} last={row['last_run_at']} next={row['next_run_at']}"
            )
        if not rows:
            click.echo("(no entries)")
    for error in errors:
        click.echo(f"problem: {error}", err=True)


@schedule_group.command("remove")
@click.argument("name")
@click.pass_context
def remove_command(click_ctx: click.Context, name: str) -> None:
    """Remove store-defined entry NAME (config entries: disable them instead)."""
    _, store = _store(click_ctx)
    try:
        found = store.remove(name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if not found:
        raise click.ClickException(f"no schedule entry {name!r}; see 'chard beat schedule list'")
    click.echo(f"Removed {name!r}.")


def _set_enabled(click_ctx: click.Context, name: str, enabled: bool) -> None:
    _, store = _store(click_ctx)
    if not store.set_enabled(name, enabled):
        raise click.ClickException(f"no schedule entry {name!r}; see 'chard beat schedule list'")
    click.echo(f"{'Enabled' if enabled else 'Disabled'} {name!r}.")


@schedule_group.command("enable")
@click.argument("name")
@click.pass_context
def enable_command(click_ctx: click.Context, name: str) -> None:
    """Enable entry NAME."""
    _set_enabled(click_ctx, name, True)


@schedule_group.command("disable")
@click.argument("name")
@click.pass_context
def disable_command(click_ctx: click.Context, name: str) -> None:
    """Disable entry NAME (it stays in the store; beat stops sending it)."""
    _set_enabled(click_ctx, name, False)
