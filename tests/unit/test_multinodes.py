"""``chard multi``'s argument expansion (issue 12): names, ranges, per-node options, files.

Pure: no process is started here (tests/integration/test_multi.py starts real nodes).
The expected command lines are Celery's ``celery multi show`` output, with
``python -m chard`` for ``python -m celery``.
"""

from __future__ import annotations

import signal

import pytest

from chard._utils.nodenames import host_format, node_format
from chard.cli.multinodes import MultiArgsError, Node, find_signal, nodes_from_args, parse_args

PY = "/usr/bin/python3"


def nodes(line: str, host: str = "myhost") -> list[Node]:
    return nodes_from_args(parse_args(line.split()), executable=PY, hostname=host)


def show(line: str, host: str = "myhost") -> list[str]:
    return [node.command_line() for node in nodes(line, host)]


def test_a_named_node_gets_default_files_in_the_current_directory() -> None:
    assert show("w1 -A proj -l INFO") == [
        f"{PY} -m chard -A proj worker -l INFO -n w1@myhost --pidfile=w1.pid --logfile=w1%I.log"
    ]


def test_the_issues_range_example_lays_out_queues_and_levels_per_node() -> None:
    lines = show("10 -A proj -l INFO -Q:1-3 images,video -Q:4,5 data -Q default -L:4,5 debug")

    assert len(lines) == 10
    assert lines[0] == (
        f"{PY} -m chard -A proj worker -l INFO -Q images,video -n celery1@myhost "
        "--pidfile=celery1.pid --logfile=celery1%I.log"
    )
    assert [line.split(" -Q ")[1].split()[0] for line in lines] == [
        "images,video",
        "images,video",
        "images,video",
        "data",
        "data",
        "default",
        "default",
        "default",
        "default",
        "default",
    ]
    assert ["-L debug" in line for line in lines] == [False] * 3 + [True] * 2 + [False] * 5


@pytest.mark.parametrize(
    ("line", "concurrencies"),
    [
        ("3 -c 3 -c:1 10", ["10", "3", "3"]),
        ("5 -c 3 -c:1-3 10", ["10", "10", "10", "3", "3"]),
        ("image video data -c 3 -c:image 10", ["10", "3", "3"]),
        ("foo bar baz xuzzy -c 3 -c:foo,bar,baz 10", ["10", "10", "10", "3"]),
        ("w1 w2 -c 3 -c:2 7", ["3", "7"]),
    ],
)
def test_per_node_options_override_the_shared_ones(line: str, concurrencies: list[str]) -> None:
    assert [n.option("-c") for n in nodes(line)] == concurrencies


def test_range_prefix_hostname_and_full_node_names() -> None:
    assert [n.name for n in nodes("2 --range-prefix=worker")] == [
        "worker1@myhost",
        "worker2@myhost",
    ]
    assert [n.name for n in nodes("2 --hostname=w.example.com")] == [
        "celery1@w.example.com",
        "celery2@w.example.com",
    ]
    assert next(n.name for n in nodes("2 -n w.example.com")) == "celery1@w.example.com"
    assert [n.name for n in nodes("foo@%h bar@box.example.com")] == [
        f"foo@{host_format('%h')}",
        "bar@box.example.com",
    ]


def test_values_are_expanded_per_node_leaving_the_process_index_to_the_worker() -> None:
    (node,) = nodes("w1 --pidfile=/var/run/chard/%n.pid --logfile=/var/log/chard/%n%I.log")

    assert node.pidfile == "/var/run/chard/w1.pid"
    assert node.logfile == "/var/log/chard/w1%I.log"
    assert node.expand("%n|%h|%d|%i|%I|%%") == "w1|w1@myhost|myhost|%i|%I|%"
    # and the worker expands what is left for its main process
    assert node_format(node.logfile, node.name, index=0) == "/var/log/chard/w1.log"
    assert node_format("%n%I-%i.log", "w1@h", index=2) == "w1-2-2.log"


def test_global_options_go_before_the_worker_command_and_passthrough_after() -> None:
    (line,) = show("w1 -b redis://x -c 2 --app=proj -- --extra")
    assert line.startswith(f"{PY} -m chard -b redis://x --app=proj worker -c 2 -n w1@myhost")
    assert line.endswith(" --extra")


def test_executable_is_multis_own_option() -> None:
    (node,) = nodes("w1 --executable=/opt/py/bin/python")
    assert node.argv[:3] == ["/opt/py/bin/python", "-m", "chard"]
    assert "--executable" not in node.command_line()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 -A proj", "node range '0' expands to no nodes"),
        ("-A proj", "no nodes given"),
        ("3 -c:5 2", "no node at index '5'"),
        ("3 -c:3-1 2", "node range '3-1' expands to no nodes"),
        ("w1 --pidfile=%z.pid", "unknown abbreviation %z"),
    ],
)
def test_arguments_that_name_no_node_say_which_value(line: str, message: str) -> None:
    with pytest.raises(MultiArgsError, match=message):
        nodes(line)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("w1 w2", signal.SIGTERM),
        ("w1 -KILL", signal.SIGKILL),
        ("w1 -A proj -9", 9),
        ("w1 -INT -l INFO", signal.SIGINT),
    ],
)
def test_stop_finds_the_signal_among_the_options(line: str, expected: int) -> None:
    assert find_signal(parse_args(line.split())) == expected
