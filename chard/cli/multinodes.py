"""``chard multi``'s arguments: node names, ranges and per-node options, to command lines.

Pure (no process, no file is touched), so every rule is unit-tested. It follows
Celery's ``celery multi`` syntax so init scripts written for it work unchanged:

* nodes are names (``w1 w2``, ``w1@%h``) or one count (``3``: ``celery1``..``celery3``,
  prefix ``--range-prefix``), on host ``-n``/``--hostname`` (default: this machine);
* an option applies to every node, ``-c:2 5`` to the second only, ``-Q:1-3 a,b`` and
  ``-Q:4,5 b`` to ranges and lists, ``-c:w1 5`` to a node by name; a node's own
  value overrides the shared one;
* long options take their value after ``=`` (``--pidfile=%n.pid``), short ones as
  the next word; what follows ``--`` is passed to every node as it is;
* every value is expanded per node: ``%n`` its name (``w1``), ``%h`` its node name
  (``w1@host``), ``%d`` its host, ``%%`` a percent sign; ``%i`` and ``%I`` (the process
  index) are left to the worker, which expands them in ``--logfile`` and ``--pidfile``.

Default pid and log files are ``%n.pid`` and ``%n%I.log`` in the current directory.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field

from chard._utils.nodenames import expand, gethostname, host_format, nodesplit

#: ``celery multi start 3`` names its nodes celery1..celery3; chard keeps the names, so
#: the pid and log files of an existing deployment are found where they were.
RANGE_PREFIX = "celery"
DEFAULT_PIDFILE = "%n.pid"
DEFAULT_LOGFILE = "%n%I.log"
#: Options of ``chard`` itself (before the ``worker`` command), not of the worker.
GLOBAL_OPTIONS = ("-A", "--app", "-b", "--broker", "--result-backend")
#: Output flags that ``chard multi`` accepts anywhere (Celery's reserved options).
RESERVED_FLAGS = ("--nosplash", "--quiet", "-q", "--verbose", "--no-color")


class MultiArgsError(ValueError):
    """The arguments do not describe a set of nodes; the message says which value and why."""


@dataclass
class ParsedArgs:
    """What the command line holds, before it is laid out per node."""

    #: The positional words: node names, or one count.
    names: list[str] = field(default_factory=list)
    #: Shared options, in order (``None``: a flag without a value).
    options: dict[str, str | None] = field(default_factory=dict)
    #: Per-node options, by the namespace after ``:`` (``"1-3"``, ``"w1"``, ``"4,5"``).
    namespaces: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: Everything after ``--``, for every node.
    passthrough: list[str] = field(default_factory=list)
    #: Every word after the names (where ``stop`` looks for a signal, like ``-KILL``).
    tail: list[str] = field(default_factory=list)


def parse_args(argv: Sequence[str]) -> ParsedArgs:
    """Split ``argv`` (after ``start``, ``stop``, ...) into names and options, as Celery does."""
    parsed = ParsedArgs()
    args = [a for a in argv if a]
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if arg == "--":
            parsed.passthrough = args[pos + 1 :]
            break
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            _add(parsed, "--", name, value if sep else None)
        elif arg.startswith("-") and len(arg) > 1:
            value = None
            if pos + 1 < len(args) and not args[pos + 1].startswith("-"):
                value = args[pos + 1]
                pos += 1
            _add(parsed, "-", arg[1:], value)
        else:
            parsed.names.append(arg)
        pos += 1
    first_option = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    parsed.tail = args[first_option:]
    return parsed


def _add(parsed: ParsedArgs, prefix: str, name: str, value: str | None) -> None:
    name, sep, namespace = name.partition(":")
    dest = parsed.namespaces.setdefault(namespace, {}) if sep else parsed.options
    dest[prefix + name] = value


def find_signal(parsed: ParsedArgs, default: int = signal.SIGTERM) -> int:
    """Return the signal named in the options (``-KILL``, ``-9``, ``-INT``), else ``default``."""
    for arg in reversed(parsed.tail):
        if not arg.startswith("-") or arg.startswith("--"):
            continue
        name = arg[1:]
        if name.isdigit():
            return int(name)
        if name.isalpha() and name.isupper():
            try:
                return int(signal.Signals["SIG" + name.removeprefix("SIG")])
            except KeyError:
                continue
    return default


def format_option(option: str, value: str | None) -> list[str]:
    """Return the words of one option: ``--x=v``, ``-x v``, or the flag alone."""
    if value is None or value == "":
        return [option]
    return [f"{option}={value}"] if option.startswith("--") else [option, value]


@dataclass(frozen=True)
class Node:
    """One worker node: its names, files, and the command line that starts it."""

    #: The node name, ``name@host`` (the worker's ``-n``).
    name: str
    #: Options of ``chard`` itself, then of ``chard worker``, in order, values expanded.
    global_options: tuple[tuple[str, str | None], ...]
    options: tuple[tuple[str, str | None], ...]
    executable: str
    extra_args: tuple[str, ...] = ()

    @property
    def shortname(self) -> str:
        return nodesplit(self.name)[0] or ""

    def expand(self, template: str) -> str:
        """Expand ``template`` for this node (Celery's multi abbreviations).

        Raises:
            MultiArgsError: an unknown ``%`` abbreviation.
        """
        host = nodesplit(self.name)[1]
        short = self.shortname
        keys = {"h": self.name, "n": short, "N": short, "d": host, "p": self.name}
        keys |= {"i": "%i", "I": "%I"}
        try:
            return expand(template, keys)
        except ValueError as exc:
            raise MultiArgsError(f"node {self.name}: {exc}") from None

    def option(self, *names: str) -> str | None:
        """Return the value of the first of ``names`` this node has."""
        options = dict(self.options)
        return next((options[n] for n in names if options.get(n) is not None), None)

    @property
    def pidfile(self) -> str:
        return self.option("--pidfile") or DEFAULT_PIDFILE

    @property
    def logfile(self) -> str:
        """The log file, ``%i``/``%I`` as given (see :func:`node_format` for the main one)."""
        return self.option("--logfile") or DEFAULT_LOGFILE

    @property
    def argv(self) -> list[str]:
        """The command line that starts this node (run as it is: no shell)."""
        words = [self.executable, "-m", "chard"]
        for option, value in self.global_options:
            words += format_option(option, value)
        words.append("worker")
        for option, value in self.options:
            words += format_option(option, value)
        return words + list(self.extra_args)

    def command_line(self) -> str:
        """The command line as ``show`` prints it (quoted where a shell would need it)."""
        return shlex.join(self.argv)


def nodes_from_args(
    parsed: ParsedArgs, *, executable: str, hostname: str | None = None
) -> list[Node]:
    """Lay the parsed arguments out per node (see the module docstring).

    Raises:
        MultiArgsError: no node, a count that gives none, an index past the last node,
            or an unknown ``%`` abbreviation.
    """
    options = dict(parsed.options)
    for flag in RESERVED_FLAGS:
        options.pop(flag, None)
    host = options.pop("--hostname", None) or options.pop("-n", None) or hostname
    host = host or gethostname()
    prefix = options.pop("--prefix", None) or ""
    suffix = options.pop("--suffix", None) or host
    suffix = "" if suffix in ('""', "''") else suffix
    range_prefix = options.pop("--range-prefix", None) or RANGE_PREFIX
    executable = options.pop("--executable", None) or executable
    append = options.pop("--append", None)
    names = list(parsed.names)
    if not names:
        raise MultiArgsError("no nodes given; name them (w1 w2) or give a count (3)")
    is_range = len(names) == 1 and names[0].isdigit()
    if is_range:
        count = int(names[0])
        if count < 1:
            raise MultiArgsError(
                f"node range {names[0]!r} expands to no nodes; give a count of 1 or more"
            )
        names, prefix = [str(n) for n in range(1, count + 1)], range_prefix
    namespaces = _per_node_options(parsed.namespaces, names)
    extra = tuple(parsed.passthrough) + ((append,) if append else ())
    return [_node(name, prefix, suffix, options, namespaces, executable, extra) for name in names]


def _per_node_options(
    namespaces: dict[str, dict[str, str | None]], names: list[str]
) -> dict[str, dict[str, str | None]]:
    """Resolve ``1-3``, ``4,5``, ``w1,w2`` and indexes to the options of each node name."""
    resolved: dict[str, dict[str, str | None]] = {}
    for namespace, values in namespaces.items():
        for key in _expand_namespace(namespace):
            if key.isdigit() and key not in names:
                index = int(key)
                if index < 1 or index > len(names):
                    raise MultiArgsError(
                        f"no node at index {key!r} in option namespace {namespace!r}; "
                        f"indexes run from 1 to {len(names)}"
                    )
                key = names[index - 1]
            resolved.setdefault(key, {}).update(values)
    return resolved


def _expand_namespace(namespace: str) -> list[str]:
    keys: list[str] = []
    for part in namespace.split(","):
        start, dash, stop = part.partition("-")
        if dash and start.isdigit() and stop.isdigit():
            if int(stop) < int(start):
                raise MultiArgsError(f"node range {part!r} expands to no nodes; write low-high")
            keys += [str(n) for n in range(int(start), int(stop) + 1)]
        else:
            keys.append(part)
    return keys


def _node(
    name: str,
    prefix: str,
    suffix: str,
    shared: dict[str, str | None],
    namespaces: dict[str, dict[str, str | None]],
    executable: str,
    extra: tuple[str, ...],
) -> Node:
    try:
        if "@" in name:
            nodename = host_format(name)
            short = nodesplit(nodename)[0] or name
        else:
            short = prefix + name
            nodename = host_format(f"{short}@{suffix}") if suffix else short
    except ValueError as exc:
        raise MultiArgsError(str(exc)) from None
    own = namespaces.get(nodename, namespaces.get(name, namespaces.get(short, {})))
    merged = {**shared, **own}
    for short_name, long_name in (("-p", "--pidfile"), ("-f", "--logfile")):
        if short_name in merged:  # one spelling of each: the long one
            merged[long_name] = merged.pop(short_name)
    merged["-n"] = nodename
    merged.setdefault("--pidfile", DEFAULT_PIDFILE)
    merged.setdefault("--logfile", DEFAULT_LOGFILE)
    probe = Node(nodename, (), (), executable)
    expanded = [(k, None if v is None else probe.expand(v)) for k, v in merged.items()]
    global_options = tuple((k, v) for k, v in expanded if k in GLOBAL_OPTIONS)
    options = tuple((k, v) for k, v in expanded if k not in GLOBAL_OPTIONS)
    return Node(nodename, global_options, options, executable, extra)
