"""``chard db upgrade``: create or migrate chard's PostgreSQL tables ahead of the processes.

Every process migrates on first use anyway (under an advisory lock); this command lets a
deployment do it as a step of its own, with a user that may create tables, before workers
that may not. It covers the broker's tables and beat's (in the broker's schema) and the
result backend's (in the backend's), and says what it did for each.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from chard._utils.log import redact_url
from chard.cli.context import AppContext

_POSTGRES = ("postgresql://", "postgres://", "db+postgresql://", "db+postgres://")


@click.group("db")
def command() -> None:
    """Manage chard's tables in a PostgreSQL database."""


@command.command("upgrade")
@click.pass_obj
def upgrade_command(ctx: AppContext) -> None:
    """Create or migrate the broker's, beat's and the results' tables to this chard's version."""
    # Imported here: only this command needs the postgres extra.
    from chard._postgres.database import Database
    from chard.backends.postgres import MIGRATIONS as RESULTS
    from chard.beat.store_postgres import MIGRATIONS as BEAT
    from chard.brokers._postgres_sql import MIGRATIONS as BROKER
    from chard.exceptions import BrokerConnectionError, BrokerError

    app = ctx.app
    work: list[tuple[str, dict[str, object], Sequence[tuple[str, Sequence[str]]]]] = []
    if app.broker_url.lower().startswith(_POSTGRES):
        options = dict(app.conf.broker_transport_options or {})
        work.append((app.broker_url, options, [("broker", BROKER), ("beat", BEAT)]))
    backend_url = app.backend_url
    if backend_url and backend_url.lower().startswith(_POSTGRES):
        options = dict(app.conf.result_backend_transport_options or {})
        work.append((backend_url, options, [("results", RESULTS)]))
    if not work:
        raise click.ClickException(
            f"chard db upgrade manages PostgreSQL tables, and neither the broker "
            f"{redact_url(app.broker_url)!r} nor the result backend "
            f"{redact_url(backend_url or '') or None!r} is postgresql://; set broker_url or "
            "result_backend (or pass -b / --result-backend)"
        )
    for url, options, components in work:
        db = Database(
            url,
            options,
            role="upgrade",
            connection_error=BrokerConnectionError,
            error=BrokerError,
        )
        try:
            for component, migrations in components:
                found = db.ensure_schema(component, migrations)
                where = f"schema {db.schema!r} of {db.target.redacted}"
                if found == len(migrations):
                    click.echo(f"{component}: {where} is at version {found}, the newest")
                else:
                    click.echo(
                        f"{component}: {where} upgraded from version {found} to {len(migrations)}"
                    )
        finally:
            db.close()
