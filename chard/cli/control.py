"""``chard inspect``, ``chard control`` and ``chard status``: remote control from a shell.

Thin shells over ``app.control`` (:mod:`chard.control`). The commands, their help
lines and their command-line arguments come from the worker's registry
(:mod:`chard.worker.commands`), so a command added there is listed and parsed here
too. Output is Celery's: ``-> node: OK`` then the reply, indented, as each node
answers; then ``N nodes online.``. With no reply (no worker, or a ``--destination``
that names none) a one-line error on stderr and exit code 69 (``EX_UNAVAILABLE``),
as Celery.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from chard.cli.context import AppContext
from chard.exceptions import ChardError
from chard.worker.commands import Command, Kind, commands_of

#: Exit code when no node replied (Celery's ``EX_UNAVAILABLE``).
EX_UNAVAILABLE = 69


class NoReplies(click.ClickException):
    """No node answered within the timeout."""

    exit_code = EX_UNAVAILABLE


def _pretty(reply: Any) -> tuple[str, str]:
    """Return ``(status, body)`` for one node's reply, as Celery's ``pretty``."""
    if isinstance(reply, list):
        return "OK", "\n".join(f"* {item}" for item in reply) if reply else "- empty -"
    if isinstance(reply, dict):
        if "ok" in reply:
            return "OK", textwrap.indent(_pretty(reply["ok"])[1], "    ")
        if "error" in reply:
            return "ERROR", textwrap.indent(_pretty(reply["error"])[1], "    ")
        return "OK", json.dumps(reply, sort_keys=True, indent=4, default=repr)
    return "OK", str(reply)


def _say(replies: dict[str, Any], show_reply: bool) -> None:
    """Print one node's reply: ``-> node: OK`` and, when asked, the reply indented."""
    for node, reply in replies.items():
        status, body = _pretty(reply)
        click.echo(f"-> {node}: {status}")
        if show_reply and body:
            click.echo(textwrap.indent(body, "    "))


def _arguments(command: Command, args: list[str]) -> dict[str, Any]:
    """Turn the words after the command name into its keyword arguments (typed)."""
    arguments: dict[str, Any] = {}
    rest = list(args)
    for name, parse in command.args:
        if not rest:
            break
        word = rest.pop(0)
        try:
            arguments[name] = parse(word)
        except ValueError as exc:
            raise click.ClickException(f"{command.name}: bad {name} {word!r}: {exc}") from exc
    if command.variadic:
        arguments[command.variadic] = rest
    elif rest:
        usage = f"{command.name} {command.signature}".strip()
        raise click.ClickException(f"too many arguments {rest!r}; usage: {usage}")
    return arguments


def _no_replies(destination: list[str] | None, timeout: float) -> NoReplies:
    if destination:
        names = ", ".join(destination)
        return NoReplies(
            f"no node named {names} replied within {timeout:g}s; "
            "`chard -A <app> status` lists the nodes online"
        )
    return NoReplies(
        f"no nodes replied within {timeout:g}s; is a worker running on this broker? "
        "(raise --timeout for a busy one)"
    )


def _destination(value: str | None) -> list[str] | None:
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    return names or None


class _RemoteCommand(click.Command):
    """A click command whose ``--help`` ends with the list of remote commands of one kind."""

    def __init__(self, *args: Any, kind: Kind, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (f"{name} {c.signature}".strip(), c.help) for name, c in commands_of(self.kind).items()
        ]
        with formatter.section(f"{self.kind.capitalize()} commands"):
            formatter.write_dl(rows)


def _options(fn: Any) -> Any:
    fn = click.option("-j", "--json", "as_json", is_flag=True, help="Print the replies as JSON.")(
        fn
    )
    fn = click.option(
        "-d", "--destination", help="Comma-separated node names (default: every node)."
    )(fn)
    return click.option(
        "-t", "--timeout", type=float, default=1.0, show_default=True,
        help="Seconds to wait for replies.",
    )(fn)  # fmt: skip


def _remote(kind: Kind) -> click.Command:
    @click.pass_obj
    def run(
        ctx: AppContext,
        command: str,
        args: tuple[str, ...],
        timeout: float,
        destination: str | None,
        as_json: bool,
    ) -> None:
        known = commands_of(kind)
        if command not in known:
            raise click.ClickException(
                f"unknown {kind} command {command!r}; available: {', '.join(known)}"
            )
        spec = known[command]
        arguments = _arguments(spec, list(args))
        nodes = _destination(destination)
        callback = None if as_json else (lambda reply: _say(reply, show_reply=True))
        try:
            replies = ctx.app.control.broadcast(
                command,
                arguments,
                nodes,
                reply=True,
                timeout=timeout,
                callback=callback,
            )
        except (ChardError, NotImplementedError) as exc:
            raise click.ClickException(f"{kind} {command}: {exc}") from exc
        if not replies:
            raise _no_replies(nodes, timeout)
        if as_json:
            merged = {node: reply for item in replies for node, reply in item.items()}
            click.echo(json.dumps(merged if kind == "inspect" else replies, default=repr))
            return
        count = len({node for item in replies for node in item})
        click.echo(f"\n{count} {'node' if count == 1 else 'nodes'} online.")

    helps = {
        "inspect": "Ask the workers about their state: COMMAND is one listed below.",
        "control": "Change the workers at run time: COMMAND is one listed below.",
    }
    run = _options(run)
    run = click.argument("args", nargs=-1, type=click.UNPROCESSED)(run)
    run = click.argument("command")(run)
    make = click.command(
        kind,
        cls=_RemoteCommand,
        kind=kind,
        help=helps[kind],
        context_settings={"ignore_unknown_options": True},
    )
    command: click.Command = make(run)
    return command


inspect_command = _remote("inspect")
control_command = _remote("control")


@click.command("status")
@_options
@click.pass_obj
def status_command(ctx: AppContext, timeout: float, destination: str | None, as_json: bool) -> None:
    """List the worker nodes online (those that answer a ping)."""
    nodes = _destination(destination)
    callback = None if as_json else (lambda reply: _say(reply, show_reply=False))
    try:
        replies = ctx.app.control.inspect(nodes, timeout, callback)._request("ping")
    except (ChardError, NotImplementedError) as exc:
        raise click.ClickException(f"status: {exc}") from exc
    if not replies:
        raise _no_replies(nodes, timeout)
    if as_json:
        click.echo(json.dumps(replies))
        return
    count = len(replies)
    click.echo(f"\n{count} {'node' if count == 1 else 'nodes'} online.")
