"""The app: URLs and defaults, task registration, and what send_task puts on the broker."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import chard
from chard import Celery, Task, shared_task
from chard.app import DEFAULT_SQLITE_URL
from chard.brokers.base import Delivery
from chard.exceptions import ImproperlyConfigured, NoCurrentApp, NotRegistered
from chard.protocol.message import TaskMessage
from chard.result import ResultsDisabled
from tests.unit.conftest import WriteModules

pytestmark = pytest.mark.usefixtures("no_broker_env")


def fetch(app: Celery, queue: str = "celery") -> tuple[TaskMessage, dict[str, Any]]:
    """Take the one due message from ``queue``; return it decoded, and its raw envelope."""
    deliveries = app.broker.fetch([queue], limit=2, timeout=0)
    assert len(deliveries) == 1, f"expected one message in {queue!r}, got {len(deliveries)}"
    delivery: Delivery = deliveries[0]
    delivery.ack()
    accept = app.accept_content | {"application/x-msgpack", "application/x-yaml"}
    return TaskMessage.from_wire(delivery.body, accept), json.loads(delivery.body)


# -- URLs and defaults --------------------------------------------------------------------


def test_nothing_configured_means_the_embedded_sqlite_file() -> None:
    app = Celery("t")

    assert app.broker_url == DEFAULT_SQLITE_URL == "sqlite:///chard.sqlite3"
    assert app.backend_url == DEFAULT_SQLITE_URL
    assert app.uses_embedded_default is True


def test_a_broker_without_backend_disables_results() -> None:
    app = Celery("t", broker="memory://")

    assert app.uses_embedded_default is False
    assert app.backend_url is None
    assert app.backend is None


def test_get_without_a_backend_says_results_are_disabled() -> None:
    app = Celery("t", broker="memory://")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 2)

    with pytest.raises(NotImplementedError) as info:
        result.get(timeout=1)
    assert isinstance(info.value, ResultsDisabled)
    assert isinstance(info.value, ImproperlyConfigured)
    assert "result_backend" in str(info.value)
    with pytest.raises(ResultsDisabled):
        _ = result.state


def test_broker_and_backend_given() -> None:
    app = Celery("t", broker="memory://", backend="memory://")

    assert (app.broker_url, app.backend_url) == ("memory://", "memory://")


@pytest.mark.parametrize("url", ["kafka://x", "nonsense"])
def test_unknown_broker_scheme_lists_the_supported_ones(url: str) -> None:
    app = Celery("t", broker=url, backend="memory://")

    with pytest.raises(ImproperlyConfigured) as info:
        _ = app.broker

    message = str(info.value)
    assert "unknown broker URL scheme" in message
    for scheme in ("sqlite://", "memory://", "redis://", "amqp://"):
        assert scheme in message


@pytest.mark.parametrize(
    ("broker", "backend", "expected"),
    [
        ("sqs://key:pw@localhost//", "memory://", "broker 'sqs://key:**@localhost//' uses "
         "sqs:// (Amazon SQS), which chard does not support yet"),
        ("memory://", "amqp://", "result backend 'amqp://' uses amqp:// (Celery 4's AMQP "
         "backend, removed in Celery 5: use rpc://), which chard does not support yet"),
        ("memory://", "db+mysql://u:pw@db/app", "result backend "
         "'db+mysql://u:**@db/app' uses db+mysql:// (Celery's SQLAlchemy database "
         "backend; chard reads db+postgresql and db+sqlite), which chard does not support yet"),
    ],
)  # fmt: skip
def test_a_known_but_unbuilt_scheme_fails_at_the_client_naming_what_is_supported(
    broker: str, backend: str, expected: str
) -> None:
    # Issue 14: refused by name at the first send, not "unknown", not sent to a dead end
    app = Celery("t", broker=broker, backend=backend)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ImproperlyConfigured) as info:
        add.delay(2, 2)

    message = str(info.value)
    assert expected in message
    assert "use one of sqlite://, memory://, redis://, rediss://, unix://" in message
    assert "pw" not in message


def test_unknown_backend_scheme_lists_the_supported_ones() -> None:
    app = Celery("t", broker="memory://", backend="cassandra://x")

    with pytest.raises(ImproperlyConfigured, match="unknown result backend URL scheme"):
        _ = app.backend


def test_a_database_url_chard_cannot_read_names_the_ones_it_can() -> None:
    app = Celery("t", broker="memory://", backend="db+mysql://scott:tiger@localhost/foo")

    with pytest.raises(
        ImproperlyConfigured, match=r"chard reads db\+postgresql and db\+sqlite"
    ) as info:
        _ = app.backend
    assert "tiger" not in str(info.value)


def test_connections_are_opened_once(app: Celery) -> None:
    assert app.broker is app.broker
    assert app.backend is app.backend


def test_timezone(app: Celery) -> None:
    assert app.timezone is UTC
    assert app.now().tzinfo is UTC

    app.conf.timezone = "Europe/Moscow"
    assert app.timezone == ZoneInfo("Europe/Moscow")
    assert app.now().utcoffset() == timedelta(hours=3)

    app.conf.timezone = "Mars/Olympus_Mons"
    with pytest.raises(ImproperlyConfigured, match="unknown timezone 'Mars/Olympus_Mons'"):
        _ = app.timezone


def test_repr_names_the_app(app: Celery) -> None:
    assert repr(app).startswith("<Celery t at 0x")


def test_chard_is_celery() -> None:
    assert chard.Chard is chard.Celery


# -- task registration --------------------------------------------------------------------


def test_task_name_is_module_and_qualname(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.test_task_name_is_module_and_qualname.<locals>.add"
    assert app.tasks[add.name] is add


def test_tasks_defined_in_main_are_named_after_the_app() -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec("def job():\n    return 1\n", namespace)

    named = Celery("proj", broker="memory://").task(namespace["job"])
    unnamed = Celery(broker="memory://").task(namespace["job"])

    assert named.name == "proj.job"
    assert unnamed.name == "__main__.job"


def test_bare_decorator_keeps_the_function_usable(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        """Add two numbers."""
        return x + y

    assert isinstance(add, Task)
    assert add(2, 3) == 5
    assert add.__doc__ == "Add two numbers."
    assert add.__wrapped__(1, 1) == 2
    assert add.app is app


def test_decorator_options_become_task_attributes(app: Celery) -> None:
    @app.task(
        name="custom.name",
        bind=True,
        queue="q1",
        max_retries=7,
        default_retry_delay=1.5,
        autoretry_for=(KeyError,),
        retry_kwargs={"max_retries": 2},
        retry_backoff=3,
        retry_backoff_max=100,
        retry_jitter=False,
        ignore_result=True,
        track_started=True,
        acks_late=False,
        time_limit=30,
        soft_time_limit=20,
        serializer="msgpack",
        priority=4,
        rate_limit="10/m",
    )
    def work(self: Task[Any, Any]) -> str:
        return self.name

    assert work.name == "custom.name"
    assert app.tasks["custom.name"] is work
    assert work.bind is True
    assert work.queue == "q1"
    assert work.max_retries == 7
    assert work.default_retry_delay == 1.5
    assert work.autoretry_for == (KeyError,)
    assert work.retry_kwargs == {"max_retries": 2}
    assert work.retry_backoff == 3
    assert work.retry_backoff_max == 100
    assert work.retry_jitter is False
    assert work.ignore_result is True
    assert work.track_started is True
    assert work.acks_late is False
    assert work.time_limit == 30
    assert work.soft_time_limit == 20
    assert work.serializer == "msgpack"
    assert work.priority == 4
    assert work.rate_limit == "10/m"
    assert work() == "custom.name"  # bound: self is passed


def test_an_unknown_task_option_is_kept_as_an_attribute_as_celery_does(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 14: an option chard does not know (a library's own) no longer fails the import.
    with caplog.at_level(logging.WARNING, logger="chard.task"):

        @app.task(my_library_flag="on")
        def flagged() -> None:
            """Registered, with the attribute."""

    assert flagged.my_library_flag == "on"  # type: ignore[attr-defined]
    assert flagged.name in app.tasks
    assert caplog.records == []  # nothing like a known option: no warning


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("auto_retry", "autoretry_for"),
        ("retires", "max_retries"),
        ("soft_timelimit", "soft_time_limit"),
    ],
)
def test_a_likely_misspelt_task_option_logs_what_was_meant(
    app: Celery, caplog: pytest.LogCaptureFixture, typo: str, meant: str
) -> None:
    # seed 002: @celery.task(auto_retry=[ValueError, TypeError], max_retries=5)
    with caplog.at_level(logging.WARNING, logger="chard.task"):
        task = app.task(**{typo: [ValueError]})(lambda: None)

    assert getattr(task, typo) == [ValueError]
    assert task.autoretry_for == () or typo != "auto_retry"  # the typo does not enable it
    [record] = caplog.records
    assert f"unknown option {typo!r}" in record.getMessage()
    assert f"did you mean {meant!r}?" in record.getMessage()


def test_task_annotations_override_attributes(app: Celery) -> None:
    app.conf.task_annotations = {"annotated": {"max_retries": 99}}

    @app.task(name="annotated")
    def job() -> None:
        """Annotated."""

    assert job.max_retries == 99


def test_base_class_tasks(app: Celery) -> None:
    calls: list[str] = []

    class Recorded(Task[Any, Any]):
        max_retries = 1

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            calls.append(f"ok {retval}")

    @app.task(base=Recorded)
    def double(x: int) -> int:
        return x * 2

    assert isinstance(double, Recorded)
    assert double.max_retries == 1
    assert double.apply((4,)).get() == 8
    assert calls == ["ok 8"]


def test_register_task_with_a_class_or_an_instance(app: Celery) -> None:
    class Hello(Task[Any, Any]):
        name = "greet.hello"

        def run(self, who: str) -> str:
            return f"hello {who}"

    class Bye(Task[Any, Any]):
        def run(self) -> str:
            return "bye"

    hello = app.register_task(Hello)
    bye = app.register_task(Bye())

    assert app.tasks["greet.hello"] is hello
    assert hello("you") == "hello you"
    assert hello.app is app
    assert bye.name == f"{__name__}.{Bye.__qualname__}"
    assert app.tasks[bye.name] is bye
    assert bye.apply().get() == "bye"


def test_a_class_task_without_run_says_so(app: Celery) -> None:
    class Empty(Task[Any, Any]):
        name = "empty"

    task = app.register_task(Empty)

    with pytest.raises(NotImplementedError, match="'empty' defines no run"):
        task()


def test_unknown_task_name_hints_at_imports(app: Celery) -> None:
    with pytest.raises(NotRegistered, match="is the module that defines it imported") as info:
        app.tasks["nope.task"]

    assert isinstance(info.value, KeyError)


# -- shared_task and the current app --------------------------------------------------------


def test_shared_task_binds_to_the_current_app() -> None:
    app = Celery("shared", broker="memory://", backend="memory://")

    @shared_task
    def shout(word: str) -> str:
        return word.upper()

    @shared_task(name="shared.named", ignore_result=True)
    def quiet() -> None:
        """With options."""

    assert app.tasks[shout.name] is shout
    assert app.tasks["shared.named"] is quiet
    assert quiet.ignore_result is True
    assert shout.app is app
    assert shout.apply(("hi",)).get() == "HI"
    # An app created later gets the shared tasks too.
    later = Celery("later", broker="memory://")
    assert later.tasks[shout.name] is shout
    assert shout.app is later  # it follows the current app


def test_shared_task_sends_through_the_current_app() -> None:
    app = Celery("shared", broker="memory://", backend="memory://")

    @shared_task
    def ping() -> str:
        return "pong"

    ping.delay()

    message, _ = fetch(app)
    assert message.task == ping.name


def test_no_current_app_is_an_explicit_error(no_current_app: contextvars.Context) -> None:
    def body() -> None:
        @shared_task
        def orphan() -> None:
            """Declared before any app exists."""

        with pytest.raises(NoCurrentApp, match="no current app; create one with Celery"):
            _ = orphan.app
        current_app = chard.current_app  # importable before any app exists, as in Celery
        with pytest.raises(NoCurrentApp):
            _ = current_app.conf
        with pytest.raises(NoCurrentApp):
            orphan.delay()

    no_current_app.run(body)


def test_current_app_is_the_last_app_created() -> None:
    app = Celery("current", broker="memory://")

    assert chard.current_app == app
    assert chard.current_app._get_current_object() is app  # type: ignore[attr-defined]


def test_set_as_current_false_leaves_the_current_app_alone() -> None:
    current = Celery("current", broker="memory://")

    Celery("side", broker="memory://", set_as_current=False)

    assert chard.current_app._get_current_object() is current  # type: ignore[attr-defined]


# -- send_task: what reaches the broker --------------------------------------------------------


def test_send_task_by_name_publishes_a_celery_message(app: Celery) -> None:
    result = app.send_task("remote.add", (2, 2), {"z": 1})

    message, raw = fetch(app)
    assert message.task == "remote.add"
    assert message.id == result.id
    assert message.root_id == result.id
    assert message.args == (2, 2)
    assert message.kwargs == {"z": 1}
    assert message.eta is None
    assert message.expires is None
    assert raw["properties"]["delivery_info"] == {"exchange": "", "routing_key": "celery"}
    assert result.task_name == "remote.add"


def test_delay_and_apply_async_send_the_same_message(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.delay(1, y=2)
    first, _ = fetch(app)
    add.apply_async((1,), {"y": 2})
    second, _ = fetch(app)

    assert (first.task, first.args, first.kwargs) == (add.name, (1,), {"y": 2})
    assert (second.task, second.args, second.kwargs) == (first.task, first.args, first.kwargs)


def test_queue_defaults_to_task_default_queue(app: Celery) -> None:
    app.conf.task_default_queue = "default-q"

    app.send_task("x")

    assert fetch(app, "default-q")[0].task == "x"


def test_queue_precedence_apply_async_then_routes_then_task_then_default(app: Celery) -> None:
    @app.task(queue="task-q")
    def job() -> None:
        """Routed."""

    job.delay()
    assert fetch(app, "task-q")[0].task == job.name

    app.conf.task_routes = {job.name: {"queue": "route-q"}}
    job.delay()
    assert fetch(app, "route-q")[0].task == job.name

    job.apply_async(queue="explicit-q")
    _, raw = fetch(app, "explicit-q")
    assert raw["properties"]["delivery_info"]["routing_key"] == "explicit-q"
    assert app.broker.queue_size("task-q") == app.broker.queue_size("route-q") == 0


def test_routes_apply_to_send_task_by_name(app: Celery) -> None:
    app.conf.task_routes = [{"video.*": "media"}]

    app.send_task("video.encode")

    assert fetch(app, "media")[0].task == "video.encode"


def test_countdown_becomes_an_eta_the_broker_holds(app: Celery) -> None:
    app.send_task("later", countdown=30)

    assert app.broker.fetch(["celery"], limit=1, timeout=0) == []  # not due yet
    assert app.broker.queue_size("celery") == 1  # but stored by the broker


def test_a_past_eta_is_due_at_once(app: Celery) -> None:
    eta = datetime.now(UTC) - timedelta(seconds=1)

    app.send_task("earlier", eta=eta)

    assert fetch(app)[0].eta == eta


def test_countdown_eta_is_now_plus_countdown(app: Celery) -> None:
    captured: list[dict[str, Any]] = []

    def on_publish(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        captured.append(headers)

    before = datetime.now(UTC)
    chard.signals.before_task_publish.connect(on_publish)
    try:
        app.send_task("later", countdown=30)
    finally:
        chard.signals.before_task_publish.disconnect(on_publish)
    after = datetime.now(UTC)

    eta = datetime.fromisoformat(captured[0]["eta"])
    assert before + timedelta(seconds=30) <= eta <= after + timedelta(seconds=30)
    assert eta.tzinfo is not None


def test_expires_in_seconds_becomes_an_absolute_time(app: Celery) -> None:
    before = datetime.now(UTC)

    app.send_task("x", expires=120)
    app.send_task("x", expires=timedelta(minutes=1))
    at = datetime(2030, 1, 1, tzinfo=UTC)
    app.send_task("x", expires=at)

    after = datetime.now(UTC)
    deliveries = app.broker.fetch(["celery"], limit=3, timeout=0)
    expires = [TaskMessage.from_wire(d.body, app.accept_content).expires for d in deliveries]
    assert len(expires) == 3
    in_two_minutes, in_one_minute, fixed = expires
    assert in_two_minutes is not None
    assert before + timedelta(seconds=120) <= in_two_minutes <= after + timedelta(seconds=120)
    assert in_one_minute is not None
    assert before + timedelta(seconds=60) <= in_one_minute <= after + timedelta(seconds=60)
    assert fixed == at


def test_priority_task_id_headers_and_ignore_result(app: Celery) -> None:
    app.send_task(
        "x",
        priority=6,
        task_id="my-id",
        headers={"x-tenant": "acme"},
        ignore_result=True,
    )

    message, raw = fetch(app)
    assert message.priority == raw["properties"]["priority"] == 6
    assert message.id == "my-id"
    assert raw["headers"]["x-tenant"] == "acme"
    assert message.extra_headers == {"x-tenant": "acme"}
    assert message.ignore_result is True
    assert raw["headers"]["ignore_result"] is True


def test_send_task_takes_celerys_positional_order(app: Celery) -> None:
    # Celery: send_task(name, args, kwargs, countdown, eta, task_id, ...)
    eta = datetime.now(UTC) - timedelta(seconds=1)  # due now, so it can be fetched
    result = app.send_task("x", (1,), {"k": 2}, None, eta, "positional-id")

    message, _raw = fetch(app)
    assert (message.id, message.args, message.kwargs, message.eta) == (
        "positional-id",
        (1,),
        {"k": 2},
        eta,
    )
    assert result.id == "positional-id"


def test_options_chard_does_not_read_reach_the_router_and_are_not_lost(app: Celery) -> None:
    seen: list[dict[str, Any]] = []

    def router(name: str, args: Any, kwargs: Any, options: dict[str, Any], **kw: Any) -> Any:
        seen.append(dict(options))
        return {"queue": options["exchange"]}

    app.conf.task_routes = [router]
    app.send_task("x", exchange="media", routing_key="media.video", retry=False)

    assert seen == [{"exchange": "media", "routing_key": "media.video", "retry": False}]
    message, _raw = fetch(app, queue="media")
    assert message.task == "x"


def test_task_level_priority_ignore_result_and_time_limits(app: Celery) -> None:
    @app.task(priority=2, ignore_result=True, time_limit=30, soft_time_limit=20)
    def job() -> None:
        """Limited."""

    job.delay()

    message, raw = fetch(app)
    assert message.priority == 2
    assert message.ignore_result is True
    assert message.timelimit == (30, 20)
    assert raw["headers"]["timelimit"] == [30, 20]


def test_task_default_priority(app: Celery) -> None:
    app.conf.task_default_priority = 5

    app.send_task("x")

    assert fetch(app)[0].priority == 5


def test_serializer_option_and_task_serializer(app: Celery) -> None:
    @app.task(serializer="msgpack")
    def packed(x: int) -> int:
        return x

    packed.delay(1)
    assert fetch(app)[1]["content-type"] == "application/x-msgpack"

    app.send_task("x", (1,), serializer="msgpack")
    message, raw = fetch(app)
    assert raw["content-type"] == "application/x-msgpack"
    assert message.args == (1,)

    app.conf.task_serializer = "yaml"
    app.send_task("x")
    assert fetch(app)[1]["content-type"] == "application/x-yaml"


def test_publish_signals_fire_around_sending(app: Celery) -> None:
    seen: list[tuple[str, Any, Any]] = []

    def before(sender: Any = None, routing_key: Any = None, **kwargs: Any) -> None:
        seen.append(("before", sender, routing_key))

    def after(sender: Any = None, routing_key: Any = None, **kwargs: Any) -> None:
        seen.append(("after", sender, routing_key))

    chard.signals.before_task_publish.connect(before)
    chard.signals.after_task_publish.connect(after)
    try:
        app.send_task("x", queue="q")
    finally:
        chard.signals.before_task_publish.disconnect(before)
        chard.signals.after_task_publish.disconnect(after)

    assert seen == [("before", "x", "q"), ("after", "x", "q")]


def test_tasks_sent_from_a_running_task_inherit_parent_and_root(app: Celery) -> None:
    from chard.execution.trace import trace_task
    from chard.task import Context

    @app.task
    def child() -> None:
        """Sent by the parent."""

    @app.task
    def parent() -> None:
        child.delay()

    # Given a parent running as a worker runs it (not eagerly), itself part of a workflow
    request = Context(id="parent-id", root_id="root-id", is_eager=False, called_directly=False)

    # When it sends a child
    trace_task(parent, request)

    # Then the child points at its parent and keeps the workflow's root
    message, _ = fetch(app)
    assert message.task == child.name
    assert message.parent_id == "parent-id"
    assert message.root_id == "root-id"


# -- beat, finalize, autodiscovery --------------------------------------------------------------


def test_add_periodic_task_adds_a_beat_schedule_entry(app: Celery) -> None:
    @app.task
    def tick(n: int) -> int:
        return n

    key = app.add_periodic_task(10.0, tick.s(1), name="tick every 10s", queue="beat")
    by_task = app.add_periodic_task(60.0, tick, args=(2,))

    assert key == "tick every 10s"
    entry = app.conf.beat_schedule[key]
    assert entry == {
        "task": tick.name,
        "schedule": 10.0,
        "args": (1,),
        "kwargs": {},
        "options": {"queue": "beat"},
    }
    assert app.conf.beat_schedule[by_task]["task"] == tick.name
    assert app.conf.beat_schedule[by_task]["args"] == (2,)


def test_finalize_imports_include_and_runs_on_after_configure_once(
    write_modules: WriteModules,
) -> None:
    write_modules({"fin_tasks.py": "IMPORTED = True\n"})
    app = Celery("t", broker="memory://", include=["fin_tasks"])
    calls: list[Any] = []

    @app.on_after_configure.connect
    def configured(sender: Any = None, source: Any = None, **kwargs: Any) -> None:
        calls.append((sender, source))

    app.finalize()
    app.finalize()

    import sys

    assert "fin_tasks" in sys.modules
    assert calls == [(app, app.conf)]


def test_autodiscover_imports_each_packages_tasks(write_modules: WriteModules) -> None:
    write_modules(
        {
            "shop/__init__.py": "",
            "shop/tasks.py": """
                from chard import shared_task

                @shared_task(name="shop.checkout")
                def checkout():
                    return "paid"
            """,
            "blog/__init__.py": "",  # no tasks module: skipped
            "blog/jobs.py": """
                from chard import shared_task

                @shared_task(name="blog.publish")
                def publish():
                    return "published"
            """,
        }
    )
    app = Celery("t", broker="memory://", backend="memory://")

    app.autodiscover_tasks(["shop", "blog"])
    app.autodiscover_tasks(lambda: ["blog"], related_name="jobs")
    app.finalize()  # discovery waits for it, as in Celery

    assert "shop.checkout" in app.tasks
    assert "blog.publish" in app.tasks


def test_autodiscover_does_not_mask_import_errors_inside_tasks(
    write_modules: WriteModules,
) -> None:
    write_modules(
        {
            "broken/__init__.py": "",
            "broken/tasks.py": "import a_dependency_that_is_not_installed\n",
        }
    )
    app = Celery("t", broker="memory://")

    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed"):
        app.autodiscover_tasks(["broken"], force=True)


def test_autodiscover_does_not_mask_other_errors_inside_tasks(
    write_modules: WriteModules,
) -> None:
    write_modules({"buggy/__init__.py": "", "buggy/tasks.py": "1 / 0\n"})
    app = Celery("t", broker="memory://")

    with pytest.raises(ZeroDivisionError):
        app.autodiscover_tasks(["buggy"], force=True)


# -- results from the app ----------------------------------------------------------------------


def test_app_result_handles(app: Celery) -> None:
    result = app.AsyncResult("some-id")
    group = app.GroupResult("g", [result])

    assert result.id == "some-id"
    assert result.app is app
    assert result.state == "PENDING"
    assert group.results == [result]
    assert group.app is app


def test_autodiscover_waits_for_finalize_unless_forced(write_modules: WriteModules) -> None:
    # Given a package whose tasks module records that it was imported (Django's order:
    # proj/celery.py calls autodiscover_tasks() before the apps are ready)
    write_modules({"late/__init__.py": "", "late/tasks.py": "IMPORTED = True\n"})
    app = Celery("t", broker="memory://", backend="memory://", set_as_current=False)

    app.autodiscover_tasks(["late"])
    assert "late.tasks" not in sys.modules

    app.finalize()
    assert "late.tasks" in sys.modules


def test_autodiscover_force_imports_now(write_modules: WriteModules) -> None:
    write_modules({"now_pkg/__init__.py": "", "now_pkg/tasks.py": ""})
    app = Celery("t", broker="memory://", backend="memory://", set_as_current=False)
    app.autodiscover_tasks(["now_pkg"], force=True)
    assert "now_pkg.tasks" in sys.modules
