"""Beat: sends periodic tasks when their schedules come due.

:mod:`chard.beat.scheduler` is the pure core (entries, ``tick(now)``, config loading);
:mod:`chard.beat.store` keeps the editable schedule, run state, leader lease and firing claims in
the broker's database (:mod:`chard.beat.stores` picks the kind by the broker URL);
:mod:`chard.beat.service` is the loop that ties them together.
"""

from __future__ import annotations

from chard.beat.scheduler import ScheduleEntry, Scheduler, entries_from_config, entry_from_config
from chard.beat.service import Beat
from chard.beat.store import ScheduleStore
from chard.beat.store_memory import MemoryScheduleStore
from chard.beat.stores import open_schedule_store

__all__ = [
    "Beat",
    "MemoryScheduleStore",
    "ScheduleEntry",
    "ScheduleStore",
    "Scheduler",
    "entries_from_config",
    "entry_from_config",
    "open_schedule_store",
]
