"""The result backend: task states and results, stored in Celery's shape.

Policy lives here (meta encoding, state precedence, waiting with a deadline,
exception round-trips, group bookkeeping); a subclass implements only the storage
primitives :meth:`_get`, :meth:`_set`, :meth:`_delete` and :meth:`_incr`, and may
override :meth:`_wait_for_change` to be woken by the store instead of polling.

Stored values are the JSON meta Celery writes under ``celery-task-meta-<id>``
(``status``, ``result``, ``traceback``, ``children``, ``date_done``, ``task_id``
…), so a Celery client can read chard's results and the reverse.
"""

from __future__ import annotations

import builtins
import logging
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from chard import states
from chard._utils.log import saferepr
from chard.exceptions import (
    BackendConnectionError,
    EncodeError,
    ImproperlyConfigured,
    RemoteTaskError,
    ResultTimeout,
)
from chard.protocol import serializers

logger = logging.getLogger(__name__)

TASK_KEY_PREFIX = "celery-task-meta-"
GROUP_KEY_PREFIX = "celery-taskset-meta-"

Meta = dict[str, Any]

#: Longest repr kept for an exception argument JSON cannot carry.
_MAX_ARG_REPR = 1024


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Return Celery's JSON form of an exception: type, module and args."""
    exc_type = type(exc)
    return {
        "exc_type": exc_type.__qualname__,
        "exc_message": [_json_safe(arg) for arg in exc.args],
        "exc_module": exc_type.__module__,
    }


def _json_safe(value: Any) -> Any:
    """Return ``value`` if JSON can carry it, else its repr (as Celery's ``ensure_serializable``).

    Per argument, so the others survive intact; never ``str(exc)``, which runs user
    code that may raise and would then lose the failure being stored.
    """
    try:
        serializers.json_dumps(value)
    except Exception:  # any encoder failure (TypeError, ValueError, recursion) means "not JSON"
        return saferepr(value, limit=_MAX_ARG_REPR)
    return value


def decode_exception(value: Any, traceback: str | None = None) -> BaseException:
    """Rebuild an exception from its stored form.

    The original type is used only when its module is already imported in this
    process (never import a module named by remote data); otherwise the result is a
    :class:`RemoteTaskError` carrying the remote type name and traceback.
    """
    if isinstance(value, BaseException):
        return value
    if not isinstance(value, dict) or "exc_type" not in value:
        return RemoteTaskError("builtins", "Exception", str(value), traceback)
    module_name = value.get("exc_module") or "builtins"
    type_name = str(value["exc_type"])
    raw_args = value.get("exc_message")
    args = tuple(raw_args) if isinstance(raw_args, (list, tuple)) else (raw_args,)
    module = builtins if module_name == "builtins" else sys.modules.get(module_name)
    cls: Any = module
    for part in type_name.split("."):
        cls = getattr(cls, part, None) if cls is not None else None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            return cls(*args)
        except Exception:  # a constructor with other arguments: fall through to a carrier
            pass
    message = ", ".join(str(a) for a in args)
    return RemoteTaskError(module_name, type_name, message, traceback)


@dataclass(frozen=True)
class CeleryChordJoin:
    """A chord completed under Celery's bookkeeping, claimed by this process.

    ``members`` are the header's ``(task_id, state, result)`` in ``group_index`` order,
    results as stored (an exception in its encoded form).
    """

    group_id: str
    claim: str
    members: list[tuple[str, str, Any]]


def _encoded(meta: Meta) -> bytes:
    """Return ``meta`` as JSON; a result the encoder cannot take is an :class:`EncodeError`."""
    try:
        return serializers.json_dumps(meta)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        kind = type(meta.get("result")).__name__
        raise EncodeError(f"cannot encode a result of type {kind!r} as JSON: {exc}") from exc


class ResultBackend(ABC):
    """Stores task metas; see the module docstring for the split of work."""

    #: Whether :meth:`_wait_for_change` is woken by the store (no polling needed).
    has_native_wait = False

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.expires = expires
        self.options = dict(options or {})
        self._held = threading.local()  # .metas: this thread's stores held by hold_stores()

    # -- primitives ---------------------------------------------------------
    @abstractmethod
    def _get(self, key: str) -> bytes | None:
        """Return the value at ``key`` or None (missing or expired)."""

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Return the values at ``keys``; override to fetch in one round-trip."""
        return [self._get(key) for key in keys]

    @abstractmethod
    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` at ``key``, expiring after ``ttl`` seconds (None: never)."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove ``key``; missing is fine."""

    @abstractmethod
    def _incr(self, key: str, ttl: float | None) -> int:
        """Atomically add one to the integer at ``key`` (missing = 0) and return the new value."""

    def _wait_for_change(self, keys: Sequence[str], timeout: float) -> None:
        """Block until one of ``keys`` may have changed or ``timeout`` passes.

        The default sleeps (polling); backends with notifications override it.
        """
        time.sleep(timeout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def share_broker(self, broker: Callable[[], object]) -> None:  # noqa: B027 - optional hook
        """Offer the app's broker (``broker()`` opens it) to a backend that rides on it.

        Only ``rpc://`` uses it: it reads replies on the connection that sends the tasks.
        """

    def note_request(  # noqa: B027 - optional hook
        self, task_id: str, reply_to: str, *, acked_first: bool = False
    ) -> None:
        """Hear, in the process about to run it, where task ``task_id``'s sender listens.

        Only ``rpc://`` uses it: its stores go to that reply queue. Others store by task id.
        ``acked_first``: the message is acked as it starts (``acks_late=False``), so no ack
        follows its states on the channel (``rpc://`` then waits for their confirms).
        """

    @property
    def reply_queue(self) -> str:
        """The queue the sender's results come back to (``reply_to``); "" when not used."""
        return ""

    # -- task metas ---------------------------------------------------------
    def task_key(self, task_id: str) -> str:
        """Return the key under which ``task_id``'s meta is stored."""
        return TASK_KEY_PREFIX + task_id

    def encode_meta(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Meta:
        """Build Celery's meta dict for a state change."""
        if isinstance(result, BaseException):
            result = encode_exception(result)
        meta: Meta = {
            "status": state,
            "result": result,
            "traceback": traceback,
            "children": [],
            "date_done": datetime.now(UTC).isoformat() if state in states.READY_STATES else None,
            "task_id": task_id,
        }
        if extra:
            meta.update({k: v for k, v in extra.items() if v is not None})
        return meta

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Meta:
        """Store a state for ``task_id`` unless a later state is already stored.

        A redelivered duplicate or a late ``STARTED`` never overwrites a ready
        state: the meta already there wins and is returned. While this thread holds its
        stores (:meth:`hold_stores`), the meta is only queued and returned as is.
        """
        meta = self.encode_meta(task_id, result, state, traceback, extra)
        item = (meta, _encoded(meta))  # encoded here, so a bad value fails this store alone
        held: list[tuple[Meta, bytes]] | None = getattr(self._held, "metas", None)
        if held is not None:
            held.append(item)
            return meta
        return self._store_metas([item])[0]

    def _store_metas(self, metas: Sequence[tuple[Meta, bytes]]) -> list[Meta]:
        """Store each ``(meta, its JSON)`` in order (see :meth:`store_result`); return what is kept.

        Backends override it to send them all in one round trip.
        """
        kept = []
        for meta, data in metas:
            key = self.task_key(meta["task_id"])
            current = self._load(self._get(key))
            if current is not None and self._is_final_over(current.get("status"), meta["status"]):
                kept.append(current)
                continue
            self._set(key, data, self.expires)
            kept.append(meta)
        return kept

    def hold_stores(self) -> None:
        """Queue this thread's :meth:`store_result` calls until :meth:`flush_stores`.

        The worker runs a batch of plain tasks (no callbacks, chain or chord) this way: their
        results go out in one round trip, before the batch's messages are acked.
        """
        if getattr(self._held, "metas", None) is None:
            self._held.metas = []

    def flush_stores(self) -> int:
        """Store what :meth:`hold_stores` queued, in order, and stop holding; return how many.

        Raises:
            BackendConnectionError: the backend stayed unreachable (its retry policy spent);
                nothing is held any more, and the caller must treat those stores as not done.
        """
        held: list[tuple[Meta, bytes]] | None = getattr(self._held, "metas", None)
        self._held.metas = None
        if held:
            self._store_metas(held)
        return len(held or ())

    def held_stores(self) -> Sequence[bytes]:
        """Return the metas this thread holds (see :meth:`hold_stores`) as JSON, oldest first."""
        held: list[tuple[Meta, bytes]] | None = getattr(self._held, "metas", None)
        return [data for _, data in held or ()]

    def store_metas(self, encoded: Sequence[bytes]) -> list[Meta]:
        """Store metas encoded elsewhere (JSON), in order, as :meth:`store_result` would.

        For results a worker process held when it died (its supervisor stores them). In one
        round trip where the backend can. Returns what is kept.

        Raises:
            BackendConnectionError: the backend stayed unreachable (its retry policy spent).
        """
        items = [(cast(Meta, serializers.json_loads(data)), data) for data in encoded]
        return self._store_metas(items) if items else []

    def get_task_meta(self, task_id: str) -> Meta:
        """Return the stored meta, or a ``PENDING`` meta for an unknown id."""
        meta = self._load(self._get(self.task_key(task_id)))
        return meta if meta is not None else self._pending(task_id)

    def get_many(self, task_ids: Sequence[str]) -> list[Meta]:
        """Return the metas of ``task_ids`` in order, in one round-trip where possible."""
        raw = self._mget([self.task_key(t) for t in task_ids])
        return [self._load(v) or self._pending(t) for t, v in zip(task_ids, raw, strict=True)]

    def exists(self, task_id: str) -> bool:
        """Return whether any state is stored for ``task_id`` (PENDING means unknown)."""
        return self._get(self.task_key(task_id)) is not None

    def forget(self, task_id: str) -> None:
        """Delete the stored meta of ``task_id``."""
        self._delete(self.task_key(task_id))

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5) -> Meta:
        """Block until ``task_id`` is ready and return its meta.

        Args:
            timeout: seconds to wait at most; None waits forever.
            interval: longest sleep between two reads when the store cannot notify.

        Raises:
            ResultTimeout: ``timeout`` passed first.
        """
        return self.wait_for_many([task_id], timeout, interval)[0]

    def wait_for_many(
        self, task_ids: Sequence[str], timeout: float | None = None, interval: float = 0.5
    ) -> list[Meta]:
        """Block until every task in ``task_ids`` is ready; return their metas in order.

        The keys are read first: a result that is already stored costs one read and no
        subscription. Only what is still pending is then watched, and read once more
        after :meth:`_listen` (a store between the first read and the subscription would
        otherwise be missed); from then on only what changed is looked at: a backend that
        reports the new values (Redis) costs O(N) for N results, one that can only say
        "something changed" is read again in full.

        A lost connection (a server restart, a failover) does not end the wait: the
        waiter keeps trying until its deadline, then raises
        :class:`~chard.exceptions.BackendConnectionError`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = min(0.005, interval)
        pending = {self.task_key(t): t for t in task_ids}  # key -> id; shrinks as they finish
        ready: dict[str, Meta] = {}
        lost = False
        watched: list[str] = []  # the ids watched once the first read left them pending
        is_fresh = True  # every pending key must be read: at the start, after a lost connection
        wait = 0.0
        try:
            while True:
                try:
                    if is_fresh:
                        if watched:  # listen, then read: a store after the read is heard
                            self._take(self._listen(list(pending), deadline) or {}, pending, ready)
                        keys = list(pending)
                        self._take(dict(zip(keys, self._mget(keys), strict=True)), pending, ready)
                        if pending and not watched:
                            watched = list(pending.values())
                            self.watch(watched)
                            continue  # still fresh: listen, and read what is pending again
                        is_fresh = False
                    else:
                        changed: Mapping[str, bytes | None] | None
                        changed = self._wait_for_values(pending.keys(), wait)
                        if changed is None:  # the store cannot tell which: read them all
                            keys = list(pending)
                            changed = dict(zip(keys, self._mget(keys), strict=True))
                        self._take(changed, pending, ready)
                except BackendConnectionError as exc:
                    lost = self._ride_out(exc, lost, deadline)
                    is_fresh = True
                    continue
                if lost:
                    logger.warning("Result backend connection restored")
                    lost = False
                if not pending:
                    return [ready[t] for t in task_ids]
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(
                        f"task {next(iter(pending.values()))!r} not ready after {timeout}s "
                        f"({len(pending)} of {len(task_ids)} pending); "
                        "is a worker consuming its queue?"
                    )
                if self.has_native_wait:
                    wait = remaining if remaining is not None else 1.0
                else:  # poll with back-off: fast first answers, few reads when the task is slow
                    wait = pause if remaining is None else min(pause, remaining)
                    pause = min(pause * 2, interval)
                wait = min(wait, 1.0)
        finally:
            if watched:
                self.unwatch(watched)

    def _take(
        self, values: Mapping[str, bytes | None], pending: dict[str, str], ready: dict[str, Meta]
    ) -> None:
        """Move the keys whose value is a ready meta from ``pending`` to ``ready``."""
        for key, raw in values.items():
            task_id = pending.get(key)
            if task_id is None:
                continue
            meta = self._load(raw)
            if meta is not None and meta.get("status") in states.READY_STATES:
                ready[task_id] = meta
                del pending[key]

    # -- listening (backends that are told what changed) ----------------------
    def watch(self, task_ids: Iterable[str]) -> None:  # noqa: B027 - optional hook
        """Start listening for these tasks' results (a wait found them pending).

        A backend that pushes changes (Redis pub/sub) subscribes here without waiting
        for the server; :meth:`_listen` then waits for its confirmation. Every call is
        paired with one :meth:`unwatch`. Never raises for a lost connection (the wait
        sets things up again). The default does nothing.
        """

    def unwatch(self, task_ids: Iterable[str]) -> None:  # noqa: B027 - optional hook
        """Release one :meth:`watch` of each task; never blocks or raises (finalizer-safe)."""

    def _listen(self, keys: Sequence[str], deadline: float | None) -> Mapping[str, bytes] | None:
        """Make every later change of ``keys`` visible to :meth:`_wait_for_values`.

        Called before the keys are read, so that nothing stored between the read and the
        wait is missed. Returns values already known (the caller reads only the rest), or
        None. The default does nothing: :meth:`_wait_for_change` then wakes the caller.
        """
        return None

    def _wait_for_values(self, keys: Collection[str], timeout: float) -> Mapping[str, bytes] | None:
        """Wait up to ``timeout`` for changes of ``keys``; return the new values, or None.

        ``{}`` means nothing changed yet; None means "something may have changed", and
        the caller reads every key. The default waits with :meth:`_wait_for_change`.
        """
        self._wait_for_change(list(keys), timeout)
        return None

    @staticmethod
    def _ride_out(exc: BackendConnectionError, lost: bool, deadline: float | None) -> bool:
        """Pause a waiter whose connection dropped; re-raise once its deadline has passed."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise exc
        if not lost:
            logger.warning("Result backend connection lost while waiting (%s); retrying", exc)
        time.sleep(0.25 if remaining is None else min(0.25, remaining))
        return True

    # -- groups -------------------------------------------------------------
    def group_key(self, group_id: str) -> str:
        """Return the key under which group ``group_id`` is saved."""
        return GROUP_KEY_PREFIX + group_id

    def save_group(self, group_id: str, task_ids: Sequence[str]) -> None:
        """Save a group's member ids in Celery's ``as_tuple`` shape."""
        value = {"result": [[group_id, None], [[[tid, None], None] for tid in task_ids]]}
        self._set(self.group_key(group_id), serializers.json_dumps(value), self.expires)

    def restore_group(self, group_id: str) -> list[str] | None:
        """Return the member ids of a saved group, or None if it was never saved."""
        value = self._load(self._get(self.group_key(group_id)))
        if value is None:
            return None
        return [member[0][0] for member in value["result"][1]]

    def delete_group(self, group_id: str) -> None:
        """Delete a saved group."""
        self._delete(self.group_key(group_id))

    # -- Celery's chord bookkeeping (a mixed fleet: ``chard_celery_compat``) --------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        """Record a chord's header size where Celery's Redis backend reads it (``.s``)."""
        raise self._no_celery_chords()

    def celery_chord_part(
        self, group_id: str, task_id: str, state: str, result: Any, group_index: int | None
    ) -> CeleryChordJoin | None:
        """Add a header task's end to the chord as Celery's Redis backend does.

        Returns the claimed join when this end completed the chord (the caller sends or
        fails the body, then calls :meth:`celery_chord_done`), else None.
        """
        raise self._no_celery_chords()

    def celery_chord_done(self, join: CeleryChordJoin) -> None:
        """Drop the chord's keys and mark it done (a late duplicate then counts for nothing)."""
        raise self._no_celery_chords()

    def _no_celery_chords(self) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"chard_celery_compat chords use Celery's Redis chord keys, which the "
            f"{type(self).__name__} cannot hold; use a redis:// result backend or turn "
            "chard_celery_compat off"
        )

    def incr(self, key: str) -> int:
        """Atomically count one more at ``key`` (chord completion) and return the total."""
        return self._incr(key, self.expires)

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def _is_final_over(stored: Any, incoming: str) -> bool:
        """Return whether the stored state must be kept instead of ``incoming``.

        SUCCESS is final; any ready state beats a non-ready one; a ready state may
        replace FAILURE/REVOKED (a redelivery that then succeeded).
        """
        if stored not in states.READY_STATES:
            return False
        return stored == states.SUCCESS or incoming not in states.READY_STATES

    @staticmethod
    def _load(raw: bytes | None) -> Meta | None:
        if raw is None:
            return None
        value = serializers.json_loads(raw)
        return value if isinstance(value, dict) else None

    @staticmethod
    def _pending(task_id: str) -> Meta:
        return {
            "status": states.PENDING,
            "result": None,
            "traceback": None,
            "children": [],
            "date_done": None,
            "task_id": task_id,
        }
