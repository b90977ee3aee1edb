"""``chard multi``: start, stop and restart worker nodes in the background, Celery's way.

.. code-block:: console

    $ chard multi start w1 -A proj -l INFO
    $ chard multi start 10 -A proj -l INFO -Q:1-3 images,video -Q:4,5 data -Q default
    $ chard multi show 3 -A proj -c 3 -c:1 10
    $ chard multi stopwait w1 -A proj --pidfile=/var/run/chard/%n.pid

The syntax and output are ``celery multi``'s (see :mod:`chard.cli.multinodes` for the
arguments, :mod:`chard.cli.multiproc` for the processes): ``start`` returns once every
node is up or has failed; ``stop`` sends TERM (a warm shutdown) and returns;
``stopwait`` also waits until each node has finished its running tasks and exited;
``restart`` is ``stopwait`` then ``start``; ``kill`` sends KILL. Give ``stop`` the same
``--pidfile`` as ``start``: a node is found only by the PID its pidfile holds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

import click

from chard import __version__
from chard.cli import multiproc
from chard.cli.context import AppContext
from chard.cli.multinodes import (
    RESERVED_FLAGS,
    MultiArgsError,
    Node,
    find_signal,
    nodes_from_args,
    parse_args,
)

USAGE = """\
usage: chard multi start <node1 node2 nodeN|range> [worker options]
       chard multi stop <n1 n2 nN|range> [-SIG (default: -TERM)] [--pidfile=...]
       chard multi stopwait <n1 n2 nN|range> [-SIG (default: -TERM)] [--pidfile=...]
       chard multi restart <n1 n2 nN|range> [-SIG] [worker options]
       chard multi kill <n1 n2 nN|range> [--pidfile=...]

       chard multi show <n1 n2 nN|range> [worker options]
       chard multi get hostname <n1 n2 nN|range> [worker options]
       chard multi names <n1 n2 nN|range>
       chard multi expand template <n1 n2 nN|range>
       chard multi help

additional options (must appear after the command name):

    * --nosplash:   Don't display program info.
    * --quiet:      Don't show as much output.
    * --verbose:    Show more output."""


class MultiTool:
    """The ``chard multi`` program: one method per subcommand, printing Celery's lines."""

    def __init__(self, global_args: Sequence[str], *, quiet: bool, nosplash: bool, verbose: bool):
        self.global_args = list(global_args)
        self.quiet = quiet
        self.nosplash = nosplash
        self.verbose = verbose
        self.commands: dict[str, Callable[..., int]] = {
            "start": self.start,
            "stop": self.stop,
            "stopwait": self.stopwait,
            "stop_verify": self.stopwait,  # Celery's old name
            "restart": self.restart,
            "kill": self.kill,
            "show": self.show,
            "get": self.get,
            "names": self.names,
            "expand": self.expand,
            "help": self.help,
        }

    # -- output -------------------------------------------------------------------------------
    def say(self, text: str, newline: bool = True) -> None:
        click.echo(text, nl=newline)

    def note(self, text: str, newline: bool = True) -> None:
        if not self.quiet:
            self.say(text, newline)

    def splash(self) -> None:
        if not self.nosplash:
            self.note(f"chard multi v{__version__}")

    # -- dispatch -----------------------------------------------------------------------------
    def run(self, argv: Sequence[str]) -> int:
        if not argv or argv[0].startswith("-"):
            self.say(USAGE, newline=True)
            return 1
        command = self.commands.get(argv[0])
        if command is None:
            click.echo(f"Invalid command: {argv[0]}", err=True)
            self.say(USAGE)
            return 1
        try:
            return command(*argv[1:])
        except MultiArgsError as exc:
            click.echo(f"Error: {exc}", err=True)
            return 2

    def _nodes(self, argv: Sequence[str]) -> tuple[list[Node], int]:
        parsed = parse_args([*argv, *self._missing_globals(argv)])
        return nodes_from_args(parsed, executable=sys.executable), find_signal(parsed)

    def _missing_globals(self, argv: Sequence[str]) -> list[str]:
        """``chard -A proj multi ...``: pass the global options on unless repeated here."""
        given = {a.split("=", 1)[0] for a in argv}
        given |= {_SPELLINGS.get(a, a) for a in given}
        extra: list[str] = []
        pairs = zip(self.global_args[::2], self.global_args[1::2], strict=True)
        for option, value in pairs:
            if option not in given:
                extra += [option, value]
        return extra

    # -- commands -----------------------------------------------------------------------------
    def start(self, *argv: str) -> int:
        nodes, _ = self._nodes(argv)
        self.splash()
        self.note("> Starting nodes...")
        return int(not all([self._start_node(node) for node in nodes]))

    def _start_node(self, node: Node, label: str | None = None) -> bool:
        self.note(label or f"\t> {node.name}: ", newline=False)
        if self.verbose:
            self.note(f"\n\t  {node.command_line()}\n\t  ", newline=False)
        result = multiproc.start(node, dict(os.environ))
        if result.ok:
            self.note("OK")
            return True
        self.note("FAILED")
        self.say(f"\t  {result.reason}")
        if result.log_tail:
            self.say(f"\t  last lines of {multiproc.logfile(node)}:")
            for line in result.log_tail:
                self.say(f"\t  | {line}")
        return False

    def _running(self, nodes: list[Node]) -> list[tuple[Node, int]]:
        """Return the nodes whose pidfile names a PID; say DOWN for the others."""
        running = []
        for node in nodes:
            pid = multiproc.read_pid(multiproc.pidfile(node))
            if pid is None:
                self.note(f"> {node.name}: DOWN")
            else:
                running.append((node, pid))
        return running

    def _signal_all(self, nodes: list[Node], signum: int) -> list[tuple[Node, int]]:
        """Send ``signum`` to each running node; return those that received it."""
        running = self._running(nodes)
        if not running:
            return []
        self.note("> Stopping nodes...")
        sent = []
        for node, pid in running:
            self.note(f"\t> {node.name}: {_signal_name(signum)} -> {pid}")
            if multiproc.send(pid, signum):
                sent.append((node, pid))
            else:
                self.note(f"Could not signal {node.name} ({pid}): No such process")
        return sent

    def stop(self, *argv: str) -> int:
        nodes, signum = self._nodes(argv)
        self.splash()
        self._signal_all(nodes, signum)
        return 0

    def stopwait(self, *argv: str) -> int:
        nodes, signum = self._nodes(argv)
        self.splash()
        self._stop_and_wait(nodes, signum)
        return 0

    def _stop_and_wait(self, nodes: list[Node], signum: int) -> None:
        waiting = self._signal_all(nodes, signum)
        if not waiting:
            return
        pids = ", ".join(str(pid) for _, pid in waiting)
        count = len(waiting)
        self.note(f"> Waiting for {count} {'node' if count == 1 else 'nodes'} -> {pids}...", False)
        last_dot = time.monotonic()
        while waiting:  # warm shutdown: as long as the running tasks take
            for node, pid in list(waiting):
                if not multiproc.is_alive(pid):
                    waiting.remove((node, pid))
                    self.note(f"\n\t> {node.name}: OK", newline=False)
            if waiting:
                time.sleep(0.1)  # no event tells us another session's process has exited
                if time.monotonic() - last_dot >= 1.0:
                    self.note(".", newline=False)
                    last_dot = time.monotonic()
        self.note("")

    def restart(self, *argv: str) -> int:
        nodes, signum = self._nodes(argv)
        self.splash()
        self._stop_and_wait(nodes, signum)
        results = [self._start_node(n, f"> Restarting node {n.name}: ") for n in nodes]
        return int(not all(results))

    def kill(self, *argv: str) -> int:
        nodes, _ = self._nodes(argv)
        self.splash()
        for node, pid in self._running(nodes):
            self.note(f"Sending KILL to node {node.name} ({pid})")
            if not multiproc.send(pid, signal.SIGKILL):
                self.note(f"Could not signal {node.name} ({pid}): No such process")
            path = multiproc.pidfile(node)
            if multiproc.read_pid(path) == pid:  # a killed node cannot remove its own
                path.unlink(missing_ok=True)
        return 0

    def show(self, *argv: str) -> int:
        nodes, _ = self._nodes(argv)
        self.say("\n".join(node.command_line() for node in nodes))
        return 0

    def get(self, wanted: str = "", *argv: str) -> int:
        nodes, _ = self._nodes(argv)
        for node in nodes:
            if node.name == wanted:
                self.say(node.command_line())
                return 0
        click.echo(f"Error: no node named {wanted!r} among {[n.name for n in nodes]}", err=True)
        return 1

    def names(self, *argv: str) -> int:
        nodes, _ = self._nodes(argv)
        self.say("\n".join(node.name for node in nodes))
        return 0

    def expand(self, template: str = "", *argv: str) -> int:
        nodes, _ = self._nodes(argv)
        self.say("\n".join(node.expand(template) for node in nodes))
        return 0

    def help(self, *argv: str) -> int:
        self.say(USAGE)
        return 0


#: The long spelling of a global option, to its short one.
_SPELLINGS = {"--app": "-A", "--broker": "-b"}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)


@click.command(
    "multi",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def command(ctx: AppContext, args: tuple[str, ...]) -> None:
    """Start, stop and restart worker nodes in the background (Celery's multi)."""
    if sys.platform == "win32":
        raise click.ClickException("chard multi needs a POSIX system; on Windows run one worker")
    argv = list(args)
    flags = {flag for flag in RESERVED_FLAGS if flag in argv}
    argv = [a for a in argv if a not in RESERVED_FLAGS]
    global_args: list[str] = []
    for option, value in (("-A", ctx.spec), ("-b", ctx.broker), ("--result-backend", ctx.backend)):
        if value:
            global_args += [option, value]
    tool = MultiTool(
        global_args,
        quiet=bool(flags & {"--quiet", "-q"}),
        nosplash="--nosplash" in flags,
        verbose="--verbose" in flags,
    )
    sys.exit(tool.run(argv))
