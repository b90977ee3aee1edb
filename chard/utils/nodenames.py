"""Celery's ``celery.utils.nodenames``: worker node names, ``name@host``.

chard's default name part is ``chard`` (Celery's is ``celery``): ``chard@myhost``, the
name a worker started without ``-n`` reports.
"""

from __future__ import annotations

import socket

__all__ = ["default_nodename", "gethostname", "host_format", "nodename", "nodesplit"]

#: The name part of a node started without ``-n`` (``chard@<host>``).
NODENAME_DEFAULT = "chard"
NODENAME_SEP = "@"


def gethostname() -> str:
    """Return this machine's host name."""
    return socket.gethostname()


def nodename(name: str, hostname: str) -> str:
    """Return ``name@hostname``."""
    return f"{name}{NODENAME_SEP}{hostname}"


def nodesplit(name: str) -> tuple[str | None, str]:
    """Split ``name@host`` into ``(name, host)``; a bare ``host`` gives ``(None, host)``."""
    head, sep, tail = name.partition(NODENAME_SEP)
    return (head, tail) if sep else (None, head)


def default_nodename(hostname: str | None) -> str:
    """Return a full node name: the missing name part is ``chard``, the missing host this one."""
    name, host = nodesplit(hostname or "")
    return nodename(name or NODENAME_DEFAULT, host or gethostname())


def host_format(template: str) -> str:
    """Expand Celery's ``%h`` (host), ``%n`` (name part) and ``%d`` (domain) in a node name."""
    host = gethostname()
    name, _, domain = host.partition(".")
    return template.replace("%h", host).replace("%n", name).replace("%d", domain)
