"""Start-up against a broker or backend that is down: retry with back-off, never seem ready.

The worker and beat both start this way (they are siblings and share it from here): a
round trip to the broker and the result backend (:func:`check_reachable`) is retried
while they do not answer, logged at WARNING with the URL's password hidden, up to
``broker_connection_max_retries`` attempts (0 or None: forever) and only when
``broker_connection_retry_on_startup`` (Celery's settings); a wrong password or db is
retried the same way, since Redis reports both as a refused connection. Only then does
the worker say "ready.".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from chard._utils.log import redact_url
from chard.exceptions import BackendConnectionError, BrokerConnectionError

if TYPE_CHECKING:
    from chard.app import Celery

__all__ = ["MAX_STARTUP_BACKOFF", "check_reachable", "retry_until_reachable"]

logger = logging.getLogger(__name__)

#: Start-up retries wait 1 s, then twice as long each time, up to this.
MAX_STARTUP_BACKOFF = 10.0
#: The id looked up to prove the result backend answers (any id will do: it is only read).
_PROBE_ID = "chard-startup-probe"


def check_reachable(app: Celery, queue: str) -> None:
    """Make one round trip to the broker (``queue``'s size) and one to the result backend.

    Raises:
        BrokerConnectionError: the broker did not answer.
        BackendConnectionError: the result backend did not answer.
        ImproperlyConfigured: a URL chard cannot use (raised when it is opened).
    """
    app.broker.queue_size(queue)
    backend = app.backend
    if backend is not None:
        backend.exists(_PROBE_ID)


def retry_until_reachable(
    app: Celery,
    step: Callable[[], None],
    *,
    who: str,
    meanwhile: str,
    stopped: threading.Event,
) -> bool:
    """Run ``step`` until the broker and backend let it finish; False if stopped meanwhile.

    Args:
        app: Whose settings and URLs apply.
        step: What needs them (it raises a connection error while they are down).
        who: ``"worker"`` or ``"beat"``, for the log and the error.
        meanwhile: What ``who`` does while waiting, for the log (``"not ready"``).
        stopped: Set by a signal handler: stop waiting at once.

    Raises:
        BrokerConnectionError, BackendConnectionError: still down after the allowed
            attempts, or retrying on start-up is off; one line naming the URL and the fix.
    """
    conf = app.conf
    limit = int(conf.broker_connection_max_retries or 0)  # 0 or None: retry forever
    pause, attempt = 1.0, 0
    while True:
        try:
            step()
            return True
        except (BrokerConnectionError, BackendConnectionError) as exc:
            attempt += 1
            is_backend = isinstance(exc, BackendConnectionError)
            what = "result backend" if is_backend else "broker"
            url = redact_url((app.backend_url if is_backend else app.broker_url) or "")
            if not conf.broker_connection_retry_on_startup or (limit and attempt > limit):
                setting = "result_backend" if is_backend else "broker_url"
                raise type(exc)(
                    f"{who} cannot reach the {what} at {url!r} after {attempt} attempt(s): "
                    f"{exc}; start it or fix {setting}"
                ) from exc
            logger.warning(
                "%s: cannot reach the %s at %s (attempt %d): %s; %s, retrying in %.0fs",
                who,
                what,
                url,
                attempt,
                exc,
                meanwhile,
                pause,
            )
        if stopped.wait(pause):
            return False
        pause = min(pause * 2, MAX_STARTUP_BACKOFF)
