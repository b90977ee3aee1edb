"""``chard dead-letters list|redrive``: see the messages set aside, and run them again.

A message is dead-lettered when it cannot be decoded, names an unknown task, or killed
its worker process ``task_max_deliveries`` times (a poison pill). ``list`` shows each
with its reason; ``redrive`` puts it back on its queue once the cause is fixed, with a
fresh delivery count (the worker's death count in the message is reset too).
"""

from __future__ import annotations

import json

import click

from chard.brokers import deadletters
from chard.brokers.base import DeadLetter
from chard.cli.context import AppContext
from chard.exceptions import ChardError


@click.group("dead-letters")
def command() -> None:
    """List the dead-letter store, or re-drive its messages to their queues."""


@command.command("list")
@click.option("--limit", type=int, default=100, show_default=True, help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.pass_obj
def list_command(ctx: AppContext, limit: int, as_json: bool) -> None:
    """Show dead letters, oldest first: id, queue, task, reason, age, deliveries."""
    letters = _read(ctx, limit)
    rows = [deadletters.describe(letter) for letter in letters]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No dead letters.")
        return
    columns = ("id", "queue", "task", "task_id", "age", "deliveries", "reason")
    table = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns[:-1])]
    header = [c.upper().replace("_", " ") for c in columns]
    for cells in [header, *table]:
        click.echo(
            "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=False))
            + "  "
            + cells[-1]
        )
    click.echo(f"{len(rows)} dead letter(s).")


@command.command("redrive")
@click.argument("ids", nargs=-1)
@click.option("--all", "redrive_all", is_flag=True, help="Re-drive every dead letter.")
@click.pass_obj
def redrive_command(ctx: AppContext, ids: tuple[str, ...], redrive_all: bool) -> None:
    """Put dead letters IDS (or --all) back on their queues, with fresh delivery counts."""
    if bool(ids) == redrive_all:
        raise click.UsageError("give dead letter ids or --all (see `dead-letters list`)")
    try:
        moved, unknown = deadletters.redrive(ctx.app.broker, None if redrive_all else ids)
    except ChardError as exc:
        raise click.ClickException(str(exc)) from exc
    for letter in moved:
        info = deadletters.describe(letter)
        click.echo(f"{letter.id}: {info['task']}[{info['task_id']}] -> queue {letter.queue!r}")
    click.echo(f"Re-drove {len(moved)} dead letter(s).")
    if unknown:
        raise click.ClickException(
            f"no dead letter with id {', '.join(unknown)}; see `dead-letters list` "
            "(already re-driven, or never set aside)"
        )


def _read(ctx: AppContext, limit: int) -> list[DeadLetter]:
    try:
        return ctx.app.broker.dead_letters(limit)
    except ChardError as exc:
        raise click.ClickException(str(exc)) from exc
