"""``chard events``: watch the cluster's events, live (``--dump``: one line per event)."""

from __future__ import annotations

import sys
import time

import click

from chard.cli.context import AppContext
from chard.events.dumper import Dumper
from chard.exceptions import BrokerConnectionError

#: Longest pause between two attempts to reach a broker that is down (seconds).
MAX_BACKOFF = 30.0


@click.command("events")
@click.option("-d", "--dump", is_flag=True, help="Print each event as one line, as it happens.")
@click.option("-c", "--camera", help="Celery's snapshot camera: not supported by chard.")
@click.option("--from-start", is_flag=True, help="Begin with the events the broker still keeps.")
@click.pass_obj
def command(ctx: AppContext, dump: bool, camera: str | None, from_start: bool) -> None:
    """Watch the workers' events: a live view of workers and tasks, or a dump.

    Workers send events when started with -E (or worker_send_task_events = True, or
    after `control enable_events`); clients send task-sent with task_send_sent_event.
    """
    if camera:
        raise click.UsageError(
            f"--camera {camera!r}: snapshot cameras are not supported by chard; use "
            "--dump, or app.events.Receiver and app.events.State from code"
        )
    app = ctx.app
    if dump:
        _dump(ctx, from_start)
        return
    if not sys.stdout.isatty():
        raise click.UsageError(
            "the live view needs a terminal; use --dump to print events to a pipe or file"
        )
    from chard.cli.eventview import Monitor  # curses is loaded for this view alone

    Monitor(app).run()


def _dump(ctx: AppContext, from_start: bool) -> None:
    """Print events until Ctrl-C; reconnect with back-off when the broker drops.

    The receiver is in place before the first line is printed: whatever is sent after
    ``starting capture`` shows up.
    """
    app = ctx.app
    dumper = Dumper()
    pause = 1.0
    receiver = None
    while True:
        try:
            if receiver is None:
                receiver = app.events.Receiver(
                    handlers={"*": dumper.on_event}, from_start=from_start
                )
                dumper.say("-> evdump: starting capture...")
            receiver.capture()
            return
        except KeyboardInterrupt:
            return
        except BrokerConnectionError as exc:
            dumper.say(f"-> Cannot connect to the broker: {exc}. Trying again in {pause:.0f}s")
            time.sleep(pause)
            pause = min(pause * 2, MAX_BACKOFF)
