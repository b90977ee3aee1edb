"""The task registry: name -> task, with an error that says how to fix a missing name."""

from __future__ import annotations

from typing import Any

from chard.exceptions import NotRegistered


class TaskRegistry(dict[str, Any]):
    """Tasks by name. A missing name raises :class:`NotRegistered` with a hint."""

    def __missing__(self, key: str) -> Any:
        raise NotRegistered(
            f"task {key!r} is not registered; is the module that defines it imported by the "
            "worker (include=[...], imports, or autodiscover_tasks)?"
        )

    def register(self, task: Any) -> None:
        """Add ``task`` under its name."""
        self[task.name] = task

    def unregister(self, name: str) -> None:
        """Remove a task by name; raises NotRegistered if absent."""
        if name not in self:
            raise NotRegistered(f"task {name!r} is not registered")
        del self[name]

    def user_tasks(self) -> list[str]:
        """Return the registered names that are not chard's own, sorted."""
        return sorted(n for n in self if not n.startswith(("celery.", "chard.")))
