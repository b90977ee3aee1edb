"""``chard purge``: delete waiting messages from the app's queues."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from chard.cli.context import AppContext

if TYPE_CHECKING:
    from chard.app import Celery


def known_queues(ctx: AppContext) -> list[str]:
    """Return the default queue plus every queue named in static ``task_routes``."""
    conf = ctx.app.conf
    queues = {conf.task_default_queue}
    routes = conf.task_routes
    for entry in routes if isinstance(routes, (list, tuple)) else [routes]:
        if isinstance(entry, dict):
            for value in entry.values():
                queue = value if isinstance(value, str) else (value or {}).get("queue")
                if queue:
                    queues.add(queue)
    return sorted(queues)


@click.command("purge")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("-Q", "--queues", help="Comma-separated queues (default: all the app knows).")
@click.pass_obj
def command(ctx: AppContext, force: bool, queues: str | None) -> None:
    """Delete every waiting message in the queues (running tasks are not touched)."""
    names = [q.strip() for q in queues.split(",")] if queues else known_queues(ctx)
    if not force:
        click.confirm(f"Delete all waiting messages in {', '.join(names)}?", abort=True)
    purge_queues(ctx.app, names)


def purge_queues(app: Celery, names: Sequence[str]) -> int:
    """Delete what waits in ``names`` and say how much; ``chard purge`` and ``worker --purge``."""
    total = sum(app.broker.purge(name) for name in names)
    click.echo(f"Purged {total} message{'s' if total != 1 else ''} from {len(names)} queue(s).")
    return total
