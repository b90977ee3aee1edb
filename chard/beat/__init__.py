"""Beat: sends periodic tasks when their schedules come due.

:mod:`chard.beat.scheduler` is the pure core (entries, ``tick(now)``, config loading); the
service loop and schedule stores build on it.
"""

from __future__ import annotations

from chard.beat.scheduler import ScheduleEntry, Scheduler, entries_from_config, entry_from_config

__all__ = ["ScheduleEntry", "Scheduler", "entries_from_config", "entry_from_config"]
