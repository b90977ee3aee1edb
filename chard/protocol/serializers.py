"""Serializer registry: json (default), msgpack and yaml (optional), pickle (opt-in only).

Payloads are refused unless their content type is in ``accept_content``: a worker
that would unpickle anything is a remote-code-execution hole (RQ, Huey and arq
default to pickle; chard never does).
"""

from __future__ import annotations

import base64
import decimal
import json
import pickle
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from chard.exceptions import ContentDisallowed, SerializationError


@dataclass(frozen=True)
class Serializer:
    """One registered serializer."""

    name: str
    content_type: str
    content_encoding: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _json_default(value: Any) -> Any:
    """Encode the types kombu's JSON encoder knows, in kombu's envelope shape."""
    if isinstance(value, datetime):
        return {"__type__": "datetime", "__value__": value.isoformat()}
    if isinstance(value, date):
        return {"__type__": "date", "__value__": value.isoformat()}
    if isinstance(value, time):
        return {"__type__": "time", "__value__": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"__type__": "decimal", "__value__": str(value)}
    if isinstance(value, uuid.UUID):
        return {"__type__": "uuid", "__value__": {"hex": value.hex}}  # kombu >= 5.3.1
    if isinstance(value, bytes):
        try:
            return {"__type__": "bytes", "__value__": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"__type__": "base64", "__value__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        return list(value)
    reduce = getattr(value, "__json__", None)
    if callable(reduce):
        return reduce()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_JSON_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "decimal": decimal.Decimal,
    # kombu >= 5.3.1 writes {"hex": ...}; 5.3.0 wrote the bare hex string.
    "uuid": lambda v: uuid.UUID(hex=v["hex"] if isinstance(v, dict) else v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": base64.b64decode,
}


def _json_object_hook(obj: dict[str, Any]) -> Any:
    kind = obj.get("__type__")
    if kind is not None and "__value__" in obj and len(obj) == 2:
        decoder = _JSON_DECODERS.get(kind)
        if decoder is not None:
            return decoder(obj["__value__"])
    return obj


_encode_str = json.encoder.encode_basestring  # ensure_ascii=False's string encoder
#: The JSON text of a ``str`` (what :func:`json_text` returns for one), a C function: for
#: the send path, which writes several strings into every envelope.
json_string_text: Callable[[str], str] = _encode_str
_encoder = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))
_decoder = json.JSONDecoder(object_hook=_json_object_hook)
# (set by JSONDecoder's __init__; typeshed leaves it out)
_scan_once: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


def json_dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON, with kombu's type envelopes."""
    return _encoder.encode(value).encode("utf-8")


def json_text(value: Any) -> str:
    """Return the JSON text :func:`json_dumps` encodes (a ``str``, for composing documents).

    The encoder writes a list or object as its members' texts joined by ``,`` (and
    ``:``), so a document put together from :func:`json_text` pieces is byte for byte
    what :func:`json_dumps` writes for the whole.
    """
    if type(value) is str:  # what the encoder does for a str, without its checks first
        return _encode_str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:  # what the encoder writes for an int, without building one
        return int.__repr__(value)
    if _encode_chunks is not None:
        return "".join(_encode_chunks(value, 0))
    return _encoder.encode(value)


#: The C encoder ``_encoder.encode`` builds on every call, built once. Without the
#: circular-reference check (its marker dict would be shared between threads): a cycle
#: raises RecursionError here, and ``json_dumps`` still names it.
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # None without the C module
_encode_chunks = (
    _make_encoder(None, _json_default, _encode_str, None, ":", ",", False, False, True)
    if _make_encoder is not None
    else None
)


def json_loads(data: bytes | str) -> Any:
    """Decode JSON produced by chard or kombu, restoring enveloped types.

    A document chard or kombu wrote (no whitespace around it) is read by the decoder's
    scanner alone, without the two frames and two regular-expression matches of
    ``JSONDecoder.decode`` around it (a worker decodes two documents per message);
    anything else (whitespace around, extra data, an error to report) takes the whole
    ``decode``, so the result and the errors are its own.
    """
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        value, end = _scan_once(text, 0)
    except (StopIteration, ValueError):
        end = -1
    if end == len(text):
        return value
    return _decoder.decode(text)


def _pickle_dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


_REGISTRY: dict[str, Serializer] = {}


def register(serializer: Serializer) -> None:
    """Add or replace a serializer by name."""
    _REGISTRY[serializer.name] = serializer


register(Serializer("json", "application/json", "utf-8", json_dumps, json_loads))
register(
    Serializer("pickle", "application/x-python-serialize", "binary", _pickle_dumps, pickle.loads)
)


def _msgpack() -> Serializer:
    import msgpack

    return Serializer(
        "msgpack",
        "application/x-msgpack",
        "binary",
        lambda v: msgpack.packb(v, use_bin_type=True),
        lambda b: msgpack.unpackb(b, raw=False),
    )


def _yaml() -> Serializer:
    import yaml

    return Serializer(
        "yaml", "application/x-yaml", "utf-8", lambda v: yaml.safe_dump(v).encode(), yaml.safe_load
    )


#: The serializers of optional extras, by name and content type: imported at their first
#: use, not with chard (yaml and msgpack cost each process memory most never use).
_OPTIONAL: dict[str, Callable[[], Serializer]] = {
    "msgpack": _msgpack,
    "application/x-msgpack": _msgpack,
    "yaml": _yaml,
    "application/x-yaml": _yaml,
}


def _load_optional(name: str) -> Serializer | None:
    """Register the optional serializer called ``name`` if its package is installed."""
    make = _OPTIONAL.get(name)
    if make is None:
        return None
    try:
        serializer = make()
    except ImportError:  # its extra is not installed
        return None
    if serializer.name not in _REGISTRY:  # a register()ed one of the same name wins
        register(serializer)
    return _REGISTRY[serializer.name]


def get_serializer(name: str) -> Serializer:
    """Return the serializer called ``name`` (or registered for that content type).

    Raises:
        SerializationError: no such serializer; the message lists the known ones.
    """
    found = _REGISTRY.get(name)
    if found is not None:
        return found
    for serializer in _REGISTRY.values():
        if serializer.content_type == name:
            return serializer
    found = _load_optional(name)
    if found is not None:
        return found
    for optional in ("msgpack", "yaml"):  # listed below when their extras are installed
        _load_optional(optional)
    known = ", ".join(sorted(_REGISTRY))
    raise SerializationError(
        f"serializer {name!r} is not available; known: {known} "
        "(msgpack and yaml need their extras: pip install 'chard[msgpack]')"
    )


def accepted_content_types(accept: Iterable[str]) -> frozenset[str]:
    """Map ``accept_content`` entries (names or content types) to content types."""
    types = set()
    for entry in accept:
        if "/" in entry:
            types.add(entry)
        else:
            types.add(get_serializer(entry).content_type)
    return frozenset(types)


def dumps(value: Any, serializer: str = "json") -> tuple[bytes, str, str]:
    """Encode ``value``; return ``(payload, content_type, content_encoding)``.

    Raises:
        SerializationError: the value cannot be encoded; the message names its type.
    """
    found = get_serializer(serializer)
    try:
        return found.dumps(value), found.content_type, found.content_encoding
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize with {found.name!r}: {exc}; pass plain data "
            "(str, int, float, bool, None, list, dict) or choose another serializer"
        ) from exc


def loads(payload: bytes, content_type: str, accept: frozenset[str]) -> Any:
    """Decode ``payload`` if ``content_type`` is accepted.

    Raises:
        ContentDisallowed: ``content_type`` is not in ``accept``.
        SerializationError: the payload is malformed for its content type.
    """
    if content_type not in accept:
        raise ContentDisallowed(
            f"refusing to decode content type {content_type!r}; accepted: "
            f"{', '.join(sorted(accept))} (add it to accept_content if you trust the sender)"
        )
    found = get_serializer(content_type)
    try:
        return found.loads(payload)
    except Exception as exc:
        raise SerializationError(f"malformed {found.name} payload: {exc}") from exc
