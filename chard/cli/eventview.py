"""``chard events``: a live terminal view of the cluster (curses, so it works over SSH).

A thread follows the events into a :class:`~chard.events.state.State`; the screen is
redrawn from it twice a second and on each key. :func:`render` turns the state into
the lines to show and does no I/O, so it is tested without a terminal.

Keys: up/down (or k/j) select a task, Enter (or d) shows or hides its detail (every
field and its timeline), q quits.
"""

from __future__ import annotations

import contextlib
import curses
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chard.events import State, TaskState
from chard.protocol.events import Event

if TYPE_CHECKING:
    from chard.app import Celery

logger = logging.getLogger(__name__)

#: Seconds between two redraws when no key is pressed.
REFRESH_INTERVAL = 0.5
_ESCAPE = 27


@dataclass
class ViewState:
    """What the person looking has chosen: the selected task and whether its detail shows."""

    selected: int = 0
    show_detail: bool = False
    error: str | None = None


def render(state: State, view: ViewState, now: float, width: int, height: int) -> list[str]:
    """Return the screen's lines (each cut to ``width``, at most ``height`` of them)."""
    alive = state.alive_workers(now)
    counts = state.counts_by_state()
    lines = [
        f"chard events: {len(alive)} worker(s) online, {len(state.tasks)} task(s), "
        f"{state.rate(now):.1f} tasks/s  (q: quit, up/down: select, enter: detail)",
        "",
        "WORKERS",
    ]
    if not state.workers:
        lines.append("  (no worker seen yet: start one with -E, or run control enable_events)")
    for worker in reversed(state.workers.values()):
        age = worker.heartbeat_age(now)
        load = " ".join(f"{v:.2f}" for v in worker.loadavg or ())
        lines.append(
            f"  {worker.hostname:<28} {worker.status(now):<7} active {_num(worker.active):>3}"
            f"  processed {_num(worker.processed):>6}  load {load or '-':<14}"
            f"  heartbeat {'-' if age is None else f'{age:.0f}s ago'}"
        )
    by_state = "  ".join(f"{name} {count}" for name, count in sorted(counts.items()))
    lines += ["", f"TASKS  {by_state}".rstrip()]
    lines.append(f"  {'UUID':<36} {'NAME':<30} {'STATE':<9} {'WORKER':<24} RUNTIME")
    tasks = state.tasks_by_time()
    view.selected = max(0, min(view.selected, len(tasks) - 1))
    detail = _detail(tasks[view.selected]) if view.show_detail and tasks else []
    room = max(1, height - len(lines) - len(detail) - (2 if view.error else 0))
    first = max(0, view.selected - room + 1)
    for index, task in enumerate(tasks[first : first + room], start=first):
        mark = ">" if index == view.selected else " "
        runtime = "" if task.runtime is None else f"{task.runtime:.6f}s"
        lines.append(
            f"{mark} {task.uuid:<36} {task.name or '?':<30} {task.state:<9} "
            f"{task.worker or '':<24} {runtime}"
        )
    lines += detail
    if view.error:
        lines += ["", f"! {view.error}"]
    return [line[: max(0, width - 1)] for line in lines[:height]]


def _detail(task: TaskState) -> list[str]:
    lines = ["", f"TASK {task.uuid}"]
    lines += [f"  {key}: {_one_line(value)}" for key, value in task.info().items()]
    steps = ", ".join(
        f"{datetime.fromtimestamp(stamp):%H:%M:%S.%f}"[:-3] + f" {kind.removeprefix('task-')}"
        for kind, stamp in task.timeline
    )
    lines.append(f"  timeline: {steps}")
    return lines


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _one_line(value: Any) -> str:
    return str(value).replace("\n", " | ")


class Monitor:
    """Follow the events of ``app`` into a state, and show it with curses until q."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.state = State()
        self.view = ViewState()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self) -> None:
        """Show the view until q (or Ctrl-C)."""
        receiver = self.app.events.Receiver(handlers={"*": self._on_event})
        thread = threading.Thread(target=self._follow, args=(receiver,), daemon=True)
        thread.start()
        try:
            curses.wrapper(self._main)
        finally:
            self._stopping.set()
            receiver.should_stop = True

    def _on_event(self, event: Event) -> None:
        with self._lock:
            self.state.event(event)
            self.view.error = None

    def _follow(self, receiver: Any) -> None:
        pause = 1.0
        while not self._stopping.is_set():
            try:
                receiver.capture()
            except Exception as exc:  # the broker is down: show it, try again
                with self._lock:
                    self.view.error = f"cannot read events: {exc}; retrying in {pause:.0f}s"
                self._stopping.wait(pause)
                pause = min(pause * 2, 30.0)

    def _main(self, screen: Any) -> None:
        with contextlib.suppress(curses.error):  # a terminal without cursor control
            curses.curs_set(0)
        screen.timeout(int(REFRESH_INTERVAL * 1000))
        while True:
            self._draw(screen)
            key = screen.getch()
            if key in (ord("q"), ord("Q"), _ESCAPE):
                return
            with self._lock:
                if key in (curses.KEY_UP, ord("k")):
                    self.view.selected -= 1
                elif key in (curses.KEY_DOWN, ord("j")):
                    self.view.selected += 1
                elif key in (curses.KEY_ENTER, 10, 13, ord("d")):
                    self.view.show_detail = not self.view.show_detail

    def _draw(self, screen: Any) -> None:
        height, width = screen.getmaxyx()
        with self._lock:
            lines = render(self.state, self.view, time.time(), width, height)
        screen.erase()
        for row, line in enumerate(lines):
            try:
                screen.addstr(row, 0, line, curses.A_REVERSE if line.startswith(">") else 0)
            except curses.error:  # the terminal shrank under us: the next redraw fits
                break
        screen.refresh()
