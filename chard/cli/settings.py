"""``chard settings``: list every setting with its default and meaning."""

from __future__ import annotations

import click

from chard.config import describe_settings


@click.command("settings")
def command() -> None:
    """List every setting chard reads, its default and what it does."""
    click.echo(describe_settings())
