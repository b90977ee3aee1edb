"""The result backend's policy apart from any store: exceptions, meta, precedence, waiting."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from chard import states
from chard.backends.base import ResultBackend, decode_exception, encode_exception
from chard.exceptions import ChardError, RemoteTaskError, ResultTimeout
from chard.protocol import serializers

#: The keys (and their order) of the meta Celery stores; see celery-protocol.md (c.2).
CELERY_META_KEYS = ["status", "result", "traceback", "children", "date_done", "task_id"]


class DictBackend(ResultBackend):
    """The smallest backend: a dict, no TTL, the base class's polling wait."""

    def __init__(self) -> None:
        super().__init__("dict://")
        self.data: dict[str, bytes] = {}
        self.reads = 0

    def _get(self, key: str) -> bytes | None:
        self.reads += 1
        return self.data.get(key)

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.data[key] = value

    def _delete(self, key: str) -> None:
        self.data.pop(key, None)

    def _incr(self, key: str, ttl: float | None) -> int:
        total = int(self.data.get(key, b"0")) + 1
        self.data[key] = str(total).encode()
        return total


class OddConstructorError(Exception):
    """Takes a keyword-only argument, so ``cls(*args)`` cannot rebuild it."""

    def __init__(self, code: int, *, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


class Outer:
    class NestedError(Exception):
        pass


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def round_trip(exc: BaseException, traceback: str | None = None) -> BaseException:
    """Encode, pass through JSON as a store would, and decode."""
    wire = serializers.json_loads(serializers.json_dumps(encode_exception(exc)))
    return decode_exception(wire, traceback)


# -- encode_exception / decode_exception ---------------------------------------


def test_encode_exception_has_celery_shape() -> None:
    assert encode_exception(ValueError("bad input")) == {
        "exc_type": "ValueError",
        "exc_message": ["bad input"],
        "exc_module": "builtins",
    }


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad", 3),
        KeyError("missing"),
        TypeError(),
        ZeroDivisionError("division by zero"),
        RuntimeError({"nested": [1, 2]}),
    ],
    ids=repr,
)
def test_builtin_exceptions_round_trip(exc: BaseException) -> None:
    rebuilt = round_trip(exc)

    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args


def test_oserror_keeps_its_subclass_and_errno() -> None:
    rebuilt = round_trip(FileNotFoundError(2, "No such file or directory"))

    assert type(rebuilt) is FileNotFoundError
    assert isinstance(rebuilt, OSError)
    assert rebuilt.errno == 2


def test_non_json_args_are_kept_as_reprs_one_by_one() -> None:
    marker = object()

    encoded = encode_exception(ValueError("bad", marker))

    assert encoded["exc_message"] == ["bad", repr(marker)]
    rebuilt = round_trip(ValueError("bad", marker))
    assert type(rebuilt) is ValueError
    assert rebuilt.args == ("bad", repr(marker))


def test_encoding_never_calls_a_broken_str() -> None:
    encoded = encode_exception(UnprintableError(object()))

    assert encoded["exc_type"] == "UnprintableError"
    assert encoded["exc_module"] == __name__


@pytest.mark.parametrize(
    "exc", [Outer.NestedError("deep"), ChardError("root"), ResultTimeout("late")], ids=repr
)
def test_exceptions_of_imported_modules_round_trip(exc: BaseException) -> None:
    # a class reachable from its module, even nested in a class, is rebuilt as itself
    rebuilt = round_trip(exc)

    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args


def test_odd_constructor_gives_a_carrier_with_the_traceback() -> None:
    rebuilt = round_trip(OddConstructorError(7, detail="quota"), traceback="Traceback ...")

    assert isinstance(rebuilt, RemoteTaskError)
    assert rebuilt.exc_module == __name__
    assert rebuilt.exc_type == "OddConstructorError"
    assert rebuilt.remote_traceback == "Traceback ..."
    assert "7: quota" in str(rebuilt)


def test_class_defined_in_a_function_gives_a_carrier() -> None:
    class LocalError(Exception):
        pass

    rebuilt = round_trip(LocalError("x"))

    assert isinstance(rebuilt, RemoteTaskError)
    assert rebuilt.exc_type.endswith("<locals>.LocalError")


def test_module_not_imported_is_never_imported() -> None:
    value = {"exc_type": "Boom", "exc_message": ["x"], "exc_module": "chard_never_imported_mod"}

    rebuilt = decode_exception(value, "tb")

    assert isinstance(rebuilt, RemoteTaskError)
    assert str(rebuilt) == "chard_never_imported_mod.Boom: x"
    assert "chard_never_imported_mod" not in sys.modules


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "print"), ("builtins", "dict"), ("pathlib", "Path"), ("builtins", "Nope")],
)
def test_names_that_are_not_exception_types_are_never_called(module: str, name: str) -> None:
    rebuilt = decode_exception({"exc_type": name, "exc_message": ["x"], "exc_module": module})

    assert isinstance(rebuilt, RemoteTaskError)
    assert rebuilt.exc_type == name


def test_celery_string_message_becomes_one_argument() -> None:
    rebuilt = decode_exception({"exc_type": "ValueError", "exc_message": "old style"})

    assert type(rebuilt) is ValueError
    assert rebuilt.args == ("old style",)


def test_decode_passes_exceptions_through_and_wraps_other_values() -> None:
    exc = KeyError("k")
    assert decode_exception(exc) is exc

    rebuilt = decode_exception("something went wrong", "tb")
    assert isinstance(rebuilt, RemoteTaskError)
    assert rebuilt.remote_traceback == "tb"


# -- meta shape -----------------------------------------------------------------


def test_meta_has_exactly_celerys_keys_in_celerys_order() -> None:
    meta = DictBackend().encode_meta("t1", 4, states.SUCCESS)

    assert list(meta) == CELERY_META_KEYS
    assert meta["children"] == []
    assert meta["traceback"] is None


def test_stored_meta_matches_a_captured_celery_failure() -> None:
    # The meta Celery 5 stored for a failing task (celery-protocol.md c.2), without date_done
    task_id = "bbbbbbbb-0000-0000-0000-000000000002"
    traceback = "Traceback (most recent call last):\n ... ValueError: bad input\n"
    captured = {
        "status": "FAILURE",
        "result": {
            "exc_type": "ValueError",
            "exc_message": ["bad input"],
            "exc_module": "builtins",
        },
        "traceback": traceback,
        "children": [],
        "task_id": task_id,
    }
    backend = DictBackend()

    backend.store_result(task_id, ValueError("bad input"), states.FAILURE, traceback)

    stored = serializers.json_loads(backend.data[backend.task_key(task_id)])
    assert stored.pop("date_done") is not None
    assert stored == captured


@pytest.mark.parametrize("state", sorted(states.ALL_STATES))
def test_date_done_only_for_ready_states(state: str) -> None:
    meta = DictBackend().encode_meta("t1", None, state)

    if state in states.READY_STATES:
        done = datetime.fromisoformat(meta["date_done"])
        assert done.tzinfo is not None
        assert abs((datetime.now(UTC) - done).total_seconds()) < 60
    else:
        assert meta["date_done"] is None


def test_extra_fields_are_added_and_none_dropped() -> None:
    meta = DictBackend().encode_meta(
        "t1", 4, states.SUCCESS, extra={"group_id": "g", "parent_id": None, "retries": 0}
    )

    assert meta["group_id"] == "g"
    assert meta["retries"] == 0
    assert "parent_id" not in meta


def test_reads_metas_and_groups_written_by_celery() -> None:
    backend = DictBackend()
    backend.data["celery-task-meta-c1"] = (
        b'{"status": "SUCCESS", "result": 4, "traceback": null, "children": [],'
        b' "date_done": "2026-11-21T05:26:20.058137+00:00", "name": "tasks.add",'
        b' "task_id": "c1"}'
    )
    backend.data["celery-taskset-meta-g1"] = (
        b'{"result": [["g1", null], [[["a", null], null], [["b", null], null]]]}'
    )

    assert backend.get_task_meta("c1")["result"] == 4
    assert backend.restore_group("g1") == ["a", "b"]


def test_unknown_id_meta_is_pending_with_celery_keys() -> None:
    meta = DictBackend().get_task_meta("nope")

    assert list(meta) == CELERY_META_KEYS
    assert meta["status"] == states.PENDING


# -- state precedence -------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "incoming", "kept"),
    [
        (states.STARTED, states.SUCCESS, states.SUCCESS),
        (states.RETRY, states.STARTED, states.STARTED),
        (states.SUCCESS, states.STARTED, states.SUCCESS),
        (states.SUCCESS, states.FAILURE, states.SUCCESS),
        (states.FAILURE, states.SUCCESS, states.SUCCESS),
        (states.FAILURE, states.STARTED, states.FAILURE),
        (states.REVOKED, states.RETRY, states.REVOKED),
        (states.REVOKED, states.FAILURE, states.FAILURE),
    ],
)
def test_state_precedence(stored: str, incoming: str, kept: str) -> None:
    backend = DictBackend()
    backend.store_result("t1", None, stored)

    returned = backend.store_result("t1", None, incoming)

    assert returned["status"] == kept
    assert backend.get_task_meta("t1")["status"] == kept


# -- waiting ------------------------------------------------------------------------


def test_polling_wait_returns_metas_in_order() -> None:
    backend = DictBackend()
    backend.store_result("b", 2, states.SUCCESS)

    def store_a() -> None:
        time.sleep(0.1)  # the waiter must poll at least once
        backend.store_result("a", 1, states.FAILURE)

    thread = threading.Thread(target=store_a)
    thread.start()
    try:
        metas = backend.wait_for_many(["a", "b"], timeout=5.0, interval=0.05)
    finally:
        thread.join()

    assert [m["task_id"] for m in metas] == ["a", "b"]
    assert [m["status"] for m in metas] == [states.FAILURE, states.SUCCESS]
    assert backend.reads > 2


def test_polling_wait_backs_off_to_the_interval() -> None:
    backend = DictBackend()
    started = time.monotonic()

    with pytest.raises(ResultTimeout, match=r"'never' not ready after 0\.4s"):
        backend.wait_for("never", timeout=0.4, interval=0.1)

    # back-off from 5 ms doubling to 100 ms: about a dozen reads, not hundreds
    assert time.monotonic() - started >= 0.4
    assert 3 < backend.reads < 20


def test_timeout_zero_reads_once() -> None:
    backend = DictBackend()
    backend.store_result("done", 1, states.SUCCESS)

    assert backend.wait_for("done", timeout=0)["result"] == 1
    with pytest.raises(TimeoutError):
        backend.wait_for("never", timeout=0)


def test_wait_for_many_of_nothing_returns_at_once() -> None:
    assert DictBackend().wait_for_many([], timeout=0) == []


def test_incr_counts_from_one() -> None:
    backend = DictBackend()

    assert [backend.incr("k") for _ in range(3)] == [1, 2, 3]
