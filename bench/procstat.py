"""Process-tree memory and CPU from /proc (Linux), without psutil."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ppid_map() -> dict[int, list[int]]:
    """Map each pid to its children, from every /proc/<pid>/stat (no /proc children file)."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split(None, 2)[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """Return ``pid`` and all its descendants (alive at the time of the call)."""
    kids = _ppid_map()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(kids.get(current, ()))
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB: shared pages split among their users.

    Summed over a forked tree it is the tree's real memory (RSS counts what a parent and
    its children share once per process). 0 if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


class PeakRss:
    """Sample a process tree's summed RSS and PSS in a thread; keep the maximum of each."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def _run(self) -> None:
        pids: list[int] = []
        for i in itertools.count():
            if i % 4 == 0:  # the tree is stable; scanning /proc for it costs ~10 ms
                pids = tree(self.pid)
            self.peak_kib = max(self.peak_kib, sum(rss_kib(p) for p in pids))
            if i % 4 == 2:  # reading smaps_rollup walks the page tables: less often
                self.peak_pss_kib = max(self.peak_pss_kib, sum(pss_kib(p) for p in pids))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib
