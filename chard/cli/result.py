"""``chard result``: print a task's state and result."""

from __future__ import annotations

import click

from chard import states
from chard.cli.context import AppContext
from chard.exceptions import ChardError


@click.command("result")
@click.argument("task_id")
@click.option("--traceback", "show_traceback", is_flag=True, help="Print the traceback.")
@click.option("--wait", type=float, help="Wait up to this many seconds for the result.")
@click.pass_obj
def command(ctx: AppContext, task_id: str, show_traceback: bool, wait: float | None) -> None:
    """Print the result of TASK_ID (its state on stderr if not ready)."""
    result = ctx.app.AsyncResult(task_id)
    try:
        if wait:
            result.get(timeout=wait, propagate=False)
        state = result.state
    except ChardError as exc:
        raise click.ClickException(str(exc)) from exc
    if state not in states.READY_STATES:
        click.echo(state, err=True)
        raise SystemExit(1)
    if show_traceback and result.traceback:
        click.echo(result.traceback)
    else:
        click.echo(repr(result.result) if state != states.SUCCESS else result.result)
