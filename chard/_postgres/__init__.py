"""chard's PostgreSQL plumbing: the only package that imports psycopg (the ``postgres`` extra).

:mod:`~chard._postgres.url` parses URLs, :mod:`~chard._postgres.database` runs SQL and
migrations on one fork-aware connection, :mod:`~chard._postgres.listener` waits for
LISTEN/NOTIFY. The broker, the result backend and beat's store build on these.
"""
