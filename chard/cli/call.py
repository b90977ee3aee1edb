"""``chard call``: send a task by name and print its id."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from chard.cli.context import AppContext


def _json(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} must be JSON ({exc}): {value!r}") from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {kind.__name__}: {value!r}")
    return parsed


@click.command("call")
@click.argument("name")
@click.option("-a", "--args", "args_json", help="Positional arguments as a JSON list.")
@click.option("-k", "--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--countdown", type=float, help="Seconds to wait before running.")
@click.option("--eta", help="ISO 8601 time to run at.")
@click.option("--expires", type=float, help="Seconds after which the task is not run.")
@click.option("-Q", "--queue", help="Queue to send to.")
@click.pass_obj
def command(
    ctx: AppContext,
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    countdown: float | None,
    eta: str | None,
    expires: float | None,
    queue: str | None,
) -> None:
    """Send task NAME (e.g. proj.tasks.add) and print its id."""
    result = ctx.app.send_task(
        name,
        _json(args_json, "--args", list),
        _json(kwargs_json, "--kwargs", dict),
        countdown=countdown,
        eta=datetime.fromisoformat(eta) if eta else None,
        expires=expires,
        queue=queue,
    )
    click.echo(result.id)
