"""Node names and Celery's ``%`` abbreviations in them, and in pid and log file paths.

Celery expands ``%h`` (host), ``%n`` (name), ``%d`` (domain), ``%i`` / ``%I`` (the
process index) and ``%%`` in ``-n``, ``--pidfile`` and ``--logfile``; ``chard worker``
and ``chard multi`` expand them the same way, through these two functions. Pure: the
host name is an argument (it defaults to this machine's).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping

_ABBREVIATION = re.compile(r"%(\w|%)")
#: A node name with no ``name@`` part gets this one (Celery's is ``celery``).
DEFAULT_NAME = "chard"


def gethostname() -> str:
    """Return this machine's host name (what ``%h`` stands for by default)."""
    return socket.gethostname()


def nodesplit(nodename: str) -> tuple[str | None, str]:
    """Split ``name@host`` into ``(name, host)``; ``(None, host)`` without an ``@``."""
    name, sep, host = nodename.partition("@")
    return (name, host) if sep else (None, nodename)


def expand(template: str, keys: Mapping[str, str]) -> str:
    """Replace each ``%x`` in ``template`` by ``keys[x]`` (``%%`` is ``%``).

    Raises:
        ValueError: ``template`` holds an abbreviation not in ``keys``.
    """

    def resolve(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "%":
            return "%"
        try:
            return keys[key]
        except KeyError:
            known = ", ".join(f"%{k}" for k in sorted(keys))
            raise ValueError(f"unknown abbreviation %{key} in {template!r}; use {known}") from None

    return _ABBREVIATION.sub(resolve, template)


def host_format(template: str, host: str | None = None, name: str | None = None) -> str:
    """Expand ``%h`` (host), ``%n`` (``name``, else the host's first label), ``%d`` (domain).

    ``%i`` and ``%I`` stay as they are: they belong to the process that opens the file.
    """
    host = host or gethostname()
    first, _, domain = host.partition(".")
    keys = {"h": host, "n": name or first, "d": domain, "i": "%i", "I": "%I"}
    return expand(template, keys)


def node_format(template: str, nodename: str, *, index: int | None = None) -> str:
    """Expand a pid or log file path for node ``nodename`` (``name@host``), as Celery does.

    ``%n`` is the node's name and ``%h``/``%d`` its host's. With ``index`` (the
    process index), ``%i`` becomes it and ``%I`` becomes ``-index``; the main process
    (``index`` 0) gets ``0`` and ``""``, so ``%n%I.log`` is ``w1.log``.
    """
    name, host = nodesplit(nodename)
    domain = host.partition(".")[2]
    keys = {"h": host, "n": name or DEFAULT_NAME, "d": domain, "i": "%i", "I": "%I"}
    if index is not None:
        keys["i"], keys["I"] = str(index), f"-{index}" if index else ""
    return expand(template, keys)
