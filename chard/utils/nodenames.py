"""Celery's ``celery.utils.nodenames``: worker node names, ``name@host``.

The expansion of ``%h``/``%n``/``%d`` lives in :mod:`chard._utils.nodenames` (the worker
and ``chard multi`` use it); this module gives it Celery's import path and adds
``nodename`` and ``default_nodename``. chard's default name part is ``chard`` (Celery's is
``celery``): ``chard@myhost``, the name a worker started without ``-n`` reports.
"""

from __future__ import annotations

from chard._utils.nodenames import DEFAULT_NAME, gethostname, host_format, nodesplit

__all__ = ["default_nodename", "gethostname", "host_format", "nodename", "nodesplit"]

#: The name part of a node started without ``-n`` (``chard@<host>``), Celery's constant name.
NODENAME_DEFAULT = DEFAULT_NAME
NODENAME_SEP = "@"


def nodename(name: str, hostname: str) -> str:
    """Return ``name@hostname``."""
    return f"{name}{NODENAME_SEP}{hostname}"


def default_nodename(hostname: str | None) -> str:
    """Return a full node name: the missing name part is ``chard``, the missing host this one."""
    name, host = nodesplit(hostname or "")
    return nodename(name or NODENAME_DEFAULT, host or gethostname())
