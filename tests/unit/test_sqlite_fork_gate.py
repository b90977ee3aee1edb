"""The fork gate: fork() waits for other threads' SQLite use, never for its own thread's."""

from __future__ import annotations

import os
import threading

from chard._sqlite import FORK_GATE


def fork_and_wait(child_code: int = 0) -> int:
    """Fork; the child exits with ``child_code`` at once. Return its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os._exit(child_code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_fork_from_inside_a_section_of_its_own_thread_goes_ahead() -> None:
    # Given this thread inside a (nested) section, When it forks
    code = 1
    with FORK_GATE, FORK_GATE:
        pid = os.fork()  # Then the fork does not wait for the sections it is in itself
    if pid == 0:  # the child: never return into pytest
        try:  # And the child left both sections, and opens a new one
            with FORK_GATE:
                code = 7
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7


def test_a_fork_waits_for_a_section_of_another_thread_to_end() -> None:
    # Given another thread inside a section, which notes its last step in it
    entered, release = threading.Event(), threading.Event()
    events: list[str] = []

    def use() -> None:
        with FORK_GATE:
            entered.set()
            release.wait(1.0)  # the fork must wait however long this takes
            events.append("done")

    user = threading.Thread(target=use)
    user.start()
    assert entered.wait(10)

    # When this thread forks, Then the child's copy of memory shows the section ended
    pid = os.fork()
    if pid == 0:
        os._exit(0 if events == ["done"] else 1)
    release.set()
    user.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    # And sections open again after the fork, in this process
    with FORK_GATE:
        assert fork_and_wait() == 0
