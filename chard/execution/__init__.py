"""The task lifecycle: run a body (:mod:`.trace`), record how it ended (:mod:`.outcome`).

Everything that ends a task, in a worker or inline, goes through one of
:func:`chard.execution.outcome.succeeded`, :func:`~chard.execution.outcome.failed` or
:func:`~chard.execution.outcome.revoked`, which store the terminal state once and then
end every workflow the task belongs to (:mod:`.chord` for chord counting).
"""
