"""``chard dashboard`` end to end (issue 17): a real dashboard process, real CLI workers.

The dashboard runs as ``chard -A itproj dashboard --port <free>``; the tests talk
HTTP to it and wait for each outcome with a deadline (the dashboard learns about
workers by asking them and about tasks through events it switches on itself).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from chard import states
from chard.brokers.base import OutgoingMessage
from chard.dashboard.openapi import OPERATIONS
from chard.protocol.message import TaskMessage
from tests.helpers import redis_url, wait_for
from tests.integration.dashboard import Dashboard, DashboardFactory
from tests.integration.workers import WorkerFactory, run_cli

pytestmark = pytest.mark.slow

NODE = "dash@test"


def worker_row(dashboard: Dashboard, name: str = NODE) -> dict[str, Any] | None:
    rows = dashboard.get_json("/api/workers")
    return next((row for row in rows if row["hostname"] == name), None)


def events_flowing(dashboard: Dashboard, name: str = NODE) -> bool:
    """The node is online, its heartbeats arrive, and it confirmed task events are on."""
    row = worker_row(dashboard, name)
    return bool(
        row
        and row["status"] == "ONLINE"
        and row["heartbeat_age"] is not None
        and row["task_events"]
    )


def task_in(dashboard: Dashboard, task_id: str, state: str) -> dict[str, Any] | None:
    reply = dashboard.get(f"/api/tasks/{task_id}")
    found = reply.json() if reply.status == 200 else None
    return found if found and found["state"] == state else None


def first_stream_update(dashboard: Dashboard) -> dict[str, Any]:
    """Read the live stream (server-sent events) until its first ``update``; return its data."""
    with urllib.request.urlopen(dashboard.url + "/api/stream", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "update":
                return dict(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the stream ended without an update")


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text strictly: every line a comment or ``name{labels} value``."""
    sample = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
    )
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = sample.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def test_api_shows_workers_tasks_queues_and_metrics(
    itproj: Any, workers: WorkerFactory, dashboards: DashboardFactory, tmp_path: Path
) -> None:
    # Given a worker started without -E, and a dashboard
    workers.start("-n", NODE, "-c", "1")
    dashboard = dashboards.start("--inspect-interval", "1")

    # Then the worker shows up with its pool, and its events start flowing
    wait_for(lambda: events_flowing(dashboard), timeout=30)
    row = worker_row(dashboard)
    assert row is not None
    assert row["pool"] == "prefork"
    assert row["concurrency"] == 1
    assert "celery" in row["queues"]

    # When tasks run, one succeeding and one failing
    from itproj.tasks import add, boom

    ok = add.delay(2, 3)
    bad = boom.delay()
    assert ok.get(timeout=30) == 5
    with pytest.raises(ValueError, match="bad input"):
        bad.get(timeout=30)

    # Then the task list finds them by state and name, and each task has its page
    done = wait_for(lambda: task_in(dashboard, ok.id, states.SUCCESS), timeout=30)
    assert done["name"] == "itproj.tasks.add"
    assert done["args"] == "(2, 3)"
    assert done["result"] == "5"
    assert done["runtime"] is not None
    assert done["worker"] == NODE
    timeline = [entry["event"] for entry in done["timeline"]]
    assert timeline[-3:] == ["task-received", "task-started", "task-succeeded"]
    failed = wait_for(lambda: task_in(dashboard, bad.id, states.FAILURE), timeout=30)
    assert "bad input" in failed["traceback"]
    listed = dashboard.get_json("/api/tasks?state=SUCCESS&name=add")
    assert [t["id"] for t in listed["tasks"]] == [ok.id]
    assert dashboard.get_json(f"/api/tasks?id={bad.id[:8]}")["total"] == 1
    assert dashboard.get_json("/api/tasks?search=(2, 3)".replace(" ", "%20"))["total"] == 1
    assert dashboard.get_json("/api/tasks?limit=1&offset=1")["tasks"][0]["id"] == ok.id

    # And bad filters are 400 with a message naming the value
    bogus = dashboard.get("/api/tasks?state=BOGUS")
    assert bogus.status == 400
    assert "state='BOGUS' is not a task state" in bogus.json()["error"]
    assert (
        dashboard.get("/api/tasks?limit=abc").json()["error"] == "limit='abc' is not a whole number"
    )
    assert dashboard.get("/api/tasks?since=soon").json()["error"] == "since='soon' is not a number"
    assert dashboard.get("/api/tasks/nope").status == 404

    # And queues, metrics and the OpenAPI document answer
    queues = dashboard.get_json("/api/queues")
    assert {"name": "celery", "length": 0} in queues["queues"]
    assert queues["dead_letters"] == []
    metrics = dashboard.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(metrics.text)
    assert samples['chard_task_events_total{task="itproj.tasks.add",state="SUCCESS"}'] == 1
    assert samples['chard_task_events_total{task="itproj.tasks.boom",state="FAILURE"}'] == 1
    assert samples['chard_task_runtime_seconds_count{task="itproj.tasks.add"}'] == 1
    assert samples['chard_task_runtime_seconds_bucket{task="itproj.tasks.add",le="+Inf"}'] == 1
    assert samples['chard_queue_length{queue="celery"}'] == 0
    assert samples["chard_workers_online"] == 1
    assert samples["chard_dead_letters"] == 0
    document = dashboard.get_json("/openapi.json")
    assert document["openapi"].startswith("3.")
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert documented == set(OPERATIONS)
    overview = dashboard.get_json("/api/overview")
    assert overview["workers_online"] == 1
    chart = dashboard.get_json("/api/throughput?span=600&step=60")["buckets"]
    assert len(chart) == 10
    assert sum(b["succeeded"] for b in chart) == 1
    assert sum(b["failed"] for b in chart) == 1
    assert dashboard.get("/api/throughput?span=10&step=0").status == 400
    update = first_stream_update(dashboard)
    assert update["workers_online"] == 1
    assert update["counts"] == {"SUCCESS": 1, "FAILURE": 1}

    # When the dashboard restarts, its history is loaded, and the events the broker
    # still keeps are not folded in twice
    # (uvicorn stops gracefully, then ends by the signal it caught, as the default would)
    assert dashboard.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in dashboard.output()
    restarted = dashboards.start()
    again = wait_for(lambda: task_in(restarted, ok.id, states.SUCCESS), timeout=30)
    assert [e["event"] for e in again["timeline"]] == [e["event"] for e in done["timeline"]]
    wait_for(lambda: task_in(restarted, bad.id, states.FAILURE), timeout=30)

    # And a dashboard on another broker (no events log) with the same result backend
    # still finds them: the history is in the backend's database
    assert restarted.stop() in (0, -signal.SIGTERM)
    other_broker = (
        f"sqlite:///{tmp_path}/other-broker.sqlite3"
        if workers.env["CHARD_BROKER_URL"].startswith("sqlite")
        else redis_url()
    )
    elsewhere = dashboards.start(extra_env={"CHARD_BROKER_URL": other_broker})
    kept = task_in(elsewhere, ok.id, states.SUCCESS)
    assert kept is not None, elsewhere.output()
    assert kept["result"] == "5"
    assert [e["event"] for e in kept["timeline"]] == [e["event"] for e in done["timeline"]]
    assert "bad input" in (task_in(elsewhere, bad.id, states.FAILURE) or {})["traceback"]
    assert "history in" in elsewhere.output()


def test_actions_reach_a_real_worker(
    itproj: Any, workers: WorkerFactory, dashboards: DashboardFactory, tmp_path: Path
) -> None:
    # Given a prefork node with one child, busy with a task that waits for a gate
    workers.start("-n", NODE, "-c", "1", "--prefetch-multiplier", "1")
    dashboard = dashboards.start("--inspect-interval", "1")
    wait_for(lambda: events_flowing(dashboard), timeout=30)
    from itproj.tasks import add, block_until

    gate = tmp_path / "gate"
    blocker = block_until.delay(str(gate))
    wait_for(lambda: task_in(dashboard, blocker.id, states.STARTED), timeout=30)
    queued = add.delay(1, 1)

    # When an action comes without the CSRF value, it is refused
    no_csrf = dashboard.request("POST", f"/api/tasks/{queued.id}/revoke", {})
    assert no_csrf.status == 403

    # When the queued task is revoked through the dashboard, then the gate opens
    revoked = dashboard.act(f"/api/tasks/{queued.id}/revoke")
    assert revoked.status == 200, revoked.text
    gate.write_text("open")

    # Then it ends REVOKED without running
    assert blocker.get(timeout=30) is True
    wait_for(lambda: queued.state == states.REVOKED, timeout=30)
    wait_for(lambda: task_in(dashboard, queued.id, states.REVOKED), timeout=30)

    # When the pool grows through the dashboard, the node's stats show two children
    grown = dashboard.act(f"/api/workers/{NODE}/pool_grow", {"n": 1})
    assert grown.status == 200, grown.text
    assert grown.json()["reply"] == {"ok": "pool will grow"}
    wait_for(lambda: len((worker_row(dashboard) or {}).get("processes") or ()) == 2, timeout=30)
    stats = run_cli(["-A", "itproj", "inspect", "stats", "-d", NODE, "-t", "10", "-j"],
                    workers.env, tmp_path)  # fmt: skip
    assert len(json.loads(stats.stdout)[NODE]["pool"]["processes"]) == 2

    # And a task is sent again with the same arguments
    again = dashboard.act(f"/api/tasks/{queued.id}/retry")
    assert again.status == 200, again.text
    assert itproj.AsyncResult(again.json()["id"]).get(timeout=30) == 2

    # And an action on a worker that is not there says so
    ghost = dashboard.act("/api/workers/ghost@nowhere/pool_grow", {"n": 1})
    assert ghost.status == 404
    assert "did not answer" in ghost.json()["error"]
    bad = dashboard.act(f"/api/workers/{NODE}/pool_grow", {"n": "many"})
    assert bad.status == 400
    assert "'n' must be a whole number" in bad.json()["error"]


def test_login_is_required_beyond_loopback_and_checked(
    itproj: Any, dashboards: DashboardFactory, transport: dict[str, str], tmp_path: Path
) -> None:
    # Without credentials, listening on every address is refused in one line
    refused = run_cli(["-A", "itproj", "dashboard", "--address", "0.0.0.0"], transport, tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "without a login; set CHARD_DASHBOARD_TOKEN" in refused.stderr

    # With a token and basic auth configured
    dashboard = dashboards.start(
        extra_env={"CHARD_DASHBOARD_TOKEN": "s3cret", "CHARD_DASHBOARD_BASIC_AUTH": "ann:pw"}
    )
    # Then the API refuses anonymous and wrong credentials, with no detail
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YW5uOm5v"}):
        reply = dashboard.get("/api/workers", **headers)
        assert reply.status == 401
        assert reply.json() == {"error": "unauthorized"}
    assert dashboard.get("/metrics").status == 401
    # And lets the right ones in: a bearer token, basic auth, or the login cookie
    assert dashboard.get("/api/workers", Authorization="Bearer s3cret").status == 200
    assert dashboard.get("/api/workers", Authorization="Basic YW5uOnB3").status == 200
    assert dashboard.request("POST", "/api/login", {"token": "wrong"}).status == 401
    login = dashboard.request("POST", "/api/login", {"token": "s3cret"})
    assert login.status == 200
    cookie = login.headers["set-cookie"].split(";")[0]
    assert "s3cret" not in cookie
    assert dashboard.get("/metrics", Cookie=cookie).status == 200
    # And the page itself, which holds no data, loads for the login form
    assert dashboard.get("/").status == 200


def test_dead_letters_are_listed_counted_and_redriven(
    itproj: Any, workers: WorkerFactory, dashboards: DashboardFactory
) -> None:
    # Given a message naming a task no worker knows, set aside by a worker
    worker = workers.start("-n", NODE, "-c", "1")
    message = TaskMessage("itproj.tasks.nope", "ghost-1", (1,)).to_wire()
    itproj.broker.publish(OutgoingMessage("celery", message))
    wait_for(lambda: itproj.broker.dead_letters(), timeout=30)
    worker.stop()
    dashboard = dashboards.start()

    # Then the queues view lists it, and /metrics counts it
    letters = dashboard.get_json("/api/queues")["dead_letters"]
    assert [(d["task"], d["task_id"], d["queue"]) for d in letters] == [
        ("itproj.tasks.nope", "ghost-1", "celery")
    ]
    assert parse_metrics(dashboard.get("/metrics").text)["chard_dead_letters"] == 1

    # When an unknown id is re-driven, it says so; when the real one is, it is queued again
    unknown = dashboard.act("/api/dead-letters/redrive", {"ids": ["no-such-id"]})
    assert unknown.status == 404
    assert "no dead letter with id no-such-id" in unknown.json()["error"]
    moved = dashboard.act("/api/dead-letters/redrive", {"ids": [letters[0]["id"]]})
    assert moved.status == 200, moved.text
    assert moved.json() == {"redriven": [letters[0]["id"]]}
    queues = dashboard.get_json("/api/queues")
    assert queues["dead_letters"] == []
    assert {"name": "celery", "length": 1} in queues["queues"]


@pytest.mark.timeout(300)  # hundreds of generated requests: a minute or more on a busy machine
def test_the_api_keeps_to_its_openapi_document(
    sqlite_transport: dict[str, str], tmp_path: Path
) -> None:
    # Given a dashboard, with a login (the document then declares the security schemes)
    factory = DashboardFactory(tmp_path, sqlite_transport)
    try:
        dashboard = factory.start(extra_env={"CHARD_DASHBOARD_TOKEN": "s3cret"})
        # When schemathesis generates requests from /openapi.json (fixed seed, so a CI
        # failure replays), every check holds: statuses and bodies as documented,
        # malformed input refused, no server error, wrong credentials refused
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("st")), "run",
                f"{dashboard.url}/openapi.json", "--url", dashboard.url,
                "--checks", "all", "--max-examples", "20", "--seed", "17",
                "--exclude-path", "/api/stream",  # never ends, by design
                "-H", "Authorization: Bearer s3cret", "--request-timeout", "20",
            ],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its cache dir there
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-6000:]
        assert "Traceback" not in dashboard.output()
    finally:
        factory.cleanup()


def test_beat_schedule_is_listed_and_toggled(
    itproj: Any, dashboards: DashboardFactory, transport: dict[str, str], tmp_path: Path
) -> None:
    # Given an entry added to beat's schedule with the CLI
    added = run_cli(
        ["-A", "itproj", "beat", "schedule", "add", "hourly", "itproj.tasks.add",
         "--every", "3600", "--args", "[1, 2]"],
        transport, tmp_path,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    dashboard = dashboards.start()

    # Then the beat view lists it with its next run, and no leader (no beat runs)
    beat = dashboard.get_json("/api/beat")
    assert beat["leader"] is None
    (entry,) = beat["entries"]
    assert (entry["name"], entry["task"], entry["enabled"]) == ("hourly", "itproj.tasks.add", True)
    assert entry["next_run_at"] is not None

    # When it is disabled through the dashboard, the store (and so every beat) has it
    disabled = dashboard.act("/api/beat/hourly/disable")
    assert disabled.status == 200, disabled.text
    assert dashboard.get_json("/api/beat")["entries"][0]["enabled"] is False
    listed = run_cli(["-A", "itproj", "beat", "schedule", "list", "--json"], transport, tmp_path)
    assert json.loads(listed.stdout)["enabled"] is False

    # And an unknown entry is a 404 that says so
    unknown = dashboard.act("/api/beat/nope/enable")
    assert unknown.status == 404
    assert "no schedule entry 'nope'" in unknown.json()["error"]
