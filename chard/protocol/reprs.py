"""The ``argsrepr``/``kwargsrepr`` headers: what logs and monitors show of a task's arguments.

Celery writes ``saferepr`` of the arguments, cut at 1,024 characters; so does chard,
with a shortcut for the usual few plain arguments (the builtin ``repr`` gives the same
text without reprlib's walk, on every send).
"""

from __future__ import annotations

from typing import Any

from chard._utils.log import saferepr

#: Types whose ``repr`` is reprlib's (and :func:`saferepr`'s) when it is short.
_FLAT = frozenset({int, str, float, bool, type(None)})
#: No limit of ``saferepr``'s cuts a repr this short (ints are cut past 40 characters).
_SHORT = 40


def args_repr(args: tuple[Any, ...]) -> str:
    """The ``argsrepr`` header: ``saferepr`` of the arguments, cut at 1,024 characters."""
    if not args:
        return "()"
    # The usual few plain arguments: the builtin repr is saferepr's, without reprlib's walk.
    if len(args) <= 6 and _FLAT.issuperset(map(type, args)):
        text = repr(tuple(args))
        if len(text) <= _SHORT:
            return text
    return saferepr(tuple(args), 1024)


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """The ``kwargsrepr`` header: ``saferepr`` of the keyword arguments, cut alike."""
    if not kwargs:
        return "{}"
    if len(kwargs) <= 6 and all(type(k) is str and type(v) in _FLAT for k, v in kwargs.items()):
        text = "{" + ", ".join(f"{k!r}: {kwargs[k]!r}" for k in sorted(kwargs)) + "}"
        if len(text) <= _SHORT:
            return text
    return saferepr(kwargs, 1024)
