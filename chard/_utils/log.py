"""Logging helpers: short reprs for log lines and password redaction for URLs."""

from __future__ import annotations

import reprlib
import urllib.parse
from typing import Any

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = 20
_repr.maxdict = 20
_repr.maxlevel = 4


def saferepr(value: Any, limit: int = 256) -> str:
    """Return a repr of ``value`` cut to ``limit`` characters; never raises."""
    try:
        text = _repr.repr(value)
    except Exception:  # a user's __repr__ may raise; a log line must not
        text = f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``**``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:**@{netloc}"))
