"""Canvas: signatures and the workflow primitives built from them.

* :class:`Signature` (:mod:`.signature`): a task name with arguments and options,
  plain data in Celery's dict shape; ``a | b`` makes a chain.
* :class:`chain` (``a | b | c``): the first task is sent with the rest in the
  message's ``chain`` embed (reversed); each worker sends the next step.
* :class:`group`: every member is built first and all are published in one broker
  round-trip.
* :class:`chord`: header tasks carry the body in their ``chord`` embed; the worker
  finishing the last one sends the body (:mod:`chard.execution.chord`: atomic
  counting in the result backend, no ``chord_unlock`` polling task).
* :class:`xmap`, :class:`xstarmap`, :class:`chunks` (:mod:`.maps`): one message
  running a task over many items, through the built-in tasks ``celery.map`` & co.

What happens when a member of a workflow ends (the next chain step, the chord
count, errbacks) is not here but in :mod:`chard.execution.outcome`.
"""

from __future__ import annotations

from chard.canvas.chords import chord
from chard.canvas.maps import chunks, xmap, xstarmap
from chard.canvas.primitives import chain, group
from chard.canvas.signature import Signature, maybe_signature, signature, subtask
from chard.exceptions import ChordError

__all__ = [
    "ChordError",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "group",
    "maybe_signature",
    "signature",
    "subtask",
    "xmap",
    "xstarmap",
]
