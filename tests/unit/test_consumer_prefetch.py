"""A prefork child's consumer leases its next batch while the batch it took runs (issue 18).

The dispatcher runs a batch in its own thread (the child's inline pool); the fetcher is
to fill the window meanwhile, so that the next batch is there when this one ends. It
used to look at the window only once it got the lock and the GIL, by which time the
batch was submitted and the window looked full: every fetch was then the dispatcher's
own, made after each batch and waited for.
"""

from __future__ import annotations

import threading

from chard import Celery
from chard.worker.child import ChildPool
from chard.worker.consumer import Consumer
from chard.worker.execute import Executor
from chard.worker.slot import Slot
from tests.helpers import wait_for


def test_the_next_batch_is_leased_while_the_batch_taken_runs(app: Celery) -> None:
    # Given a prefork child's consumer (an inline pool that takes batches, a window of
    # four) and eight messages queued, the first of which waits to be released
    release = threading.Event()
    ran: list[int] = []

    @app.task(acks_late=True)
    def hold(n: int) -> None:
        """Wait for the test on the first message; count every run."""
        if n == 0:
            release.wait(timeout=30)
        ran.append(n)

    for n in range(8):
        hold.delay(n)
    slot = Slot()
    pool = ChildPool(Executor(app, "h@x", slot=slot).run, slot, lambda: None)
    consumer = Consumer(app, pool, ["celery"], prefetch=4, burst=True, hostname="h@x")
    pool.start()
    runner = threading.Thread(target=consumer.run, name="test-consumer")
    runner.start()
    try:
        # When the first batch runs (its first message waits)
        wait_for(lambda: consumer.holding()[0], timeout=10)

        # Then the rest of the queue is leased meanwhile: the next batch is fetched now,
        # not after this one is settled
        wait_for(lambda: app.broker.queue_size("celery") == 0, timeout=10)
        assert not ran
    finally:
        release.set()
        runner.join(timeout=30)

    # And every message runs once, in order
    assert not runner.is_alive()
    assert ran == list(range(8))
