"""Everything chard knows about talking to Redis, shared by its three Redis users.

The Redis broker, the Redis result backend and beat's Redis schedule store each keep
their own keys and scripts; what they have in common lives here, once:

* :mod:`.url`: chard's Redis URL syntax (``global_keyprefix``, Celery's TLS spelling);
  pure, it does not import ``redis``.
* :mod:`.client`: the client with chard's retry policy, and the translation of
  redis-py's errors into chard's, naming the (redacted) URL and the fix.
* :mod:`.lane`: one connection per thread for plain commands on a hot path.
* :mod:`.listener`: one pub/sub connection per process for the result backend's waiters.

The third-party ``redis`` module is imported only inside this package (an import-linter
contract in ``pyproject.toml``), so a redis-py upgrade is reviewed here and nowhere else.
This file imports nothing, so parsing a URL never needs the ``redis`` extra.
"""
