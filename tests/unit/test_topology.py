"""task_queues and the task_default_* settings resolve to what Celery 5.7 declares and publishes.

Each case is written once, as Celery code; it runs with ``from kombu import ...`` in a Celery
app and with ``from chard import ...`` in chard's, and the declarations must agree (so the
two never declare one queue differently: no PRECONDITION_FAILED on a shared RabbitMQ).
"""

from __future__ import annotations

from typing import Any

import pytest

import chard
from chard.config import topology
from chard.exceptions import ImproperlyConfigured
from chard.protocol.topology import Exchange, Queue, Topology, binding, describe

CASES: dict[str, str] = {
    "default": "",
    "routing guide, direct and topic": """
conf.task_default_queue = 'default'
conf.task_queues = (
    Queue('default', Exchange('default'), routing_key='default'),
    Queue('videos', Exchange('media', type='topic'), routing_key='media.video'),
    Queue('images', Exchange('media', type='topic'), routing_key='media.image'),
)
""",
    "default topic exchange": """
conf.task_queues = (
    Queue('default', routing_key='task.#'),
    Queue('feed_tasks', routing_key='feed.#'),
)
conf.task_default_exchange = 'tasks'
conf.task_default_exchange_type = 'topic'
conf.task_default_routing_key = 'task.default'
conf.task_queue_max_priority = 10
""",
    "fanout, options and bindings": """
conf.task_queues = [
    Queue('a', Exchange('bcast', type='fanout', durable=False)),
    Queue('b', Exchange('bcast', type='fanout', durable=False), max_priority=5, message_ttl=60),
    Queue('c', [binding(Exchange('logs', type='topic'), 'x.*'), binding(Exchange('plain'), 'c')]),
]
""",
    "quorum default and dict form": """
conf.task_default_queue_type = 'quorum'
conf.task_queues = {'hipri': {'exchange': 'hipri', 'routing_key': 'hipri'}}
""",
}


def _conf(source: str, package: str) -> Any:
    namespace: dict[str, Any] = {}
    imports = (
        "from kombu import Exchange, Queue, binding"
        if package == "celery"
        else ("from chard import Exchange, Queue, binding")
    )
    exec(f"{imports}\nfrom {package} import Celery\napp = Celery('t')\nconf = app.conf\n{source}",
         namespace)  # fmt: skip
    return namespace["app"]


def _celery_view(app: Any, names: list[str]) -> dict[str, Any]:
    view = {}
    for name in names:
        q = app.amqp.queues[name]
        bindings = [(q.exchange.name, q.exchange.type, q.exchange.durable, q.routing_key)]
        if not q.exchange or not q.exchange.name:
            bindings = []
        bindings += sorted((b.exchange.name, b.exchange.type, b.exchange.durable, b.routing_key)
                           for b in q.bindings)  # fmt: skip
        args = dict(q.queue_arguments or {})
        for attr, key in (("max_priority", "x-max-priority"), ("message_ttl", "x-message-ttl")):
            if getattr(q, attr, None) is not None:
                args[key] = int(getattr(q, attr) * (1000 if attr == "message_ttl" else 1))
        view[name] = (bindings, args, q.durable, q.auto_delete)
    return view


def _chard_view(table: Topology, names: list[str]) -> dict[str, Any]:
    view = {}
    for name in names:
        spec = table.queue(name)
        first = [(b.exchange.name, b.exchange.type, b.exchange.durable, b.routing_key)
                 for b in spec.bindings[:1]]  # fmt: skip
        rest = sorted((b.exchange.name, b.exchange.type, b.exchange.durable, b.routing_key)
                      for b in spec.bindings[1:])  # fmt: skip
        view[name] = (first + rest, spec.argument_dict, spec.durable, spec.auto_delete)
    return view


@pytest.mark.parametrize("case", list(CASES))
def test_chard_declares_what_celery_declares(case: str) -> None:
    pytest.importorskip("celery")
    celery_app = _conf(CASES[case], "celery")
    chard_app = _conf(CASES[case], "chard")
    names = [*celery_app.amqp.queues, "lopri"]  # and a queue no setting names

    assert _chard_view(topology(chard_app.conf), names) == _celery_view(celery_app, names)


@pytest.mark.parametrize(
    ("case", "queue", "exchange", "routing_key", "expected"),
    [
        ("default", "celery", None, None, ("", "celery")),
        ("routing guide, direct and topic", "videos", None, None, ("media", "media.video")),
        ("routing guide, direct and topic", "videos", None, "media.x", ("media", "media.x")),
        ("routing guide, direct and topic", "default", "media", "media.i", ("media", "media.i")),
        ("default topic exchange", "feed_tasks", None, "feed.import", ("tasks", "feed.import")),
        ("default topic exchange", "default", None, None, ("tasks", "task.#")),
        ("fanout, options and bindings", "a", None, None, ("bcast", "celery")),
        ("fanout, options and bindings", "c", None, None, ("", "c")),
    ],
)  # fmt: skip
def test_a_message_goes_where_celery_publishes_it(
    case: str, queue: str, exchange: str | None, routing_key: str | None, expected: tuple[str, str]
) -> None:
    table = topology(_conf(CASES[case], "chard").conf)

    assert table.destination(queue, exchange, routing_key) == expected


def test_kombu_names_are_importable_from_chard_and_describe_like_celerys_banner() -> None:
    assert (chard.Queue, chard.Exchange, chard.binding) == (Queue, Exchange, binding)
    table = Topology.from_settings([Queue("videos", Exchange("media", "topic"), "media.video")])

    assert describe(table.queue("videos")) == "exchange:media(topic) binding:media.video"
    assert describe(Topology.from_settings().queue("celery")) == (
        "exchange:celery(direct) binding:celery"
    )


def test_bad_declarations_say_what_to_fix() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'x-delayed-message'; RabbitMQ's types"):
        Topology.from_settings([Queue("q", Exchange("e", "x-delayed-message"))])
    with pytest.raises(ImproperlyConfigured, match="has no name"):
        Topology.from_settings([Queue("")])
    with pytest.raises(TypeError, match="unknown options"):
        Queue("q", durible=False)
    strict = Topology.from_settings([Queue("only")], create_missing=False)
    with pytest.raises(ImproperlyConfigured, match=r"'other' is not in task_queues"):
        strict.queue("other")


def test_a_worker_without_q_consumes_every_declared_queue_and_shows_their_exchanges() -> None:
    from chard.worker.worker import Worker

    app = chard.Celery("t", broker="memory://", set_as_current=False)
    app.conf.task_queues = [Queue("videos", Exchange("media", "topic"), "media.#"), Queue("b")]

    worker = Worker(app, pool="solo")

    assert worker.queues == ["videos", "b"]  # Celery's rule; -Q picks among them
    assert ".> videos           exchange:media(topic) binding:media.# prefetch=" in (
        worker.banner()
    )
    assert Worker(app, pool="solo", queues=["b"]).queues == ["b"]
