"""The task lifecycle: run a body (:mod:`.trace`), record how it ended (:mod:`.outcome`).

Everything that ends a task, in a worker or inline, goes through
:func:`chard.execution.outcome.record`, which stores the terminal state once and
then ends every workflow the task belongs to (:mod:`.chord` for chord counting).
"""
