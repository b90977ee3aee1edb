"""``chard dead-letters list|redrive``: see the messages set aside, and run them again.

A message is dead-lettered when it cannot be decoded, names an unknown task, or killed
its worker process ``task_max_deliveries`` times (a poison pill). ``list`` shows each
with its reason; ``redrive`` puts it back on its queue once the cause is fixed, with a
fresh delivery count (the worker's death count in the message is reset too).
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from chard.brokers.base import DeadLetter
from chard.cli.context import AppContext
from chard.exceptions import ChardError
from chard.protocol import serializers
from chard.protocol.message import LOST_HEADER, with_header

#: Dead letters read at most per command.
MAX_LETTERS = 100_000


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
    rows = [_describe(letter) for letter in letters]
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
    letters = {letter.id: letter for letter in _read(ctx, MAX_LETTERS)}
    wanted = list(letters) if redrive_all else list(ids)
    unknown = []
    moved = 0
    for dead_id in wanted:
        letter = letters.get(dead_id)
        body = _reset_deaths(letter.body) if letter is not None else None
        try:
            is_moved = ctx.app.broker.redrive(dead_id, body)
        except ChardError as exc:
            raise click.ClickException(str(exc)) from exc
        if not is_moved:
            unknown.append(dead_id)
            continue
        moved += 1
        if letter is not None:
            info = _describe(letter)
            click.echo(f"{dead_id}: {info['task']}[{info['task_id']}] -> queue {letter.queue!r}")
    click.echo(f"Re-drove {moved} dead letter(s).")
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


def _headers(body: bytes) -> dict[str, Any]:
    try:
        envelope = serializers.json_loads(body)
    except Exception:  # an undecodable message is a reason to be here; show what we can
        return {}
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    return headers if isinstance(headers, dict) else {}


def _describe(letter: DeadLetter) -> dict[str, Any]:
    headers = _headers(letter.body)
    deaths = headers.get(LOST_HEADER)
    return {
        "id": letter.id,
        "queue": letter.queue,
        "task": headers.get("task") or "?",
        "task_id": headers.get("id") or "?",
        "age": _age(time.time() - letter.failed_at),
        "deliveries": letter.delivery_count + (deaths if isinstance(deaths, int) else 0),
        "reason": letter.reason,
        "failed_at": letter.failed_at,
    }


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _reset_deaths(body: bytes) -> bytes | None:
    """Return ``body`` with the worker's death count at zero, or None to keep it as is."""
    if not _headers(body).get(LOST_HEADER):
        return None
    return with_header(body, LOST_HEADER, 0)
