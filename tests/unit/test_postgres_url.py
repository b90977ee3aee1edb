"""PostgreSQL URLs: one syntax for broker, results and beat; chard's ``schema`` taken out."""

from __future__ import annotations

import pytest

from chard._postgres.url import parse_postgres_url
from chard.exceptions import ImproperlyConfigured


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pw@db:5432/proj?schema=jobs",
        "postgres://app:pw@db:5432/proj?schema=jobs",
        "db+postgresql://app:pw@db:5432/proj?schema=jobs",
    ],
)
def test_every_spelling_names_the_same_database_and_schema(url: str) -> None:
    target = parse_postgres_url(url)

    assert target.conninfo == "postgresql://app:pw@db:5432/proj"
    assert target.schema == "jobs"
    assert target.quoted_schema == '"jobs"'
    assert "pw" not in target.redacted


def test_libpq_parameters_pass_through_and_the_option_gives_the_schema() -> None:
    target = parse_postgres_url(
        "postgresql://db/proj?sslmode=require&connect_timeout=3", {"schema": "chard"}
    )

    assert target.conninfo == "postgresql://db/proj?sslmode=require&connect_timeout=3"
    assert target.schema == "chard"


def test_the_default_schema_is_public() -> None:
    assert parse_postgres_url("postgresql:///proj").schema == "public"


def test_the_query_schema_wins_over_the_option() -> None:
    assert parse_postgres_url("postgresql://db/p?schema=a", {"schema": "b"}).schema == "a"


@pytest.mark.parametrize("schema", ["a-b", "1abc", 'x"y', "a" * 64])
def test_an_unusable_schema_name_is_refused_with_an_example(schema: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"is not usable; .*'\?schema=chard'"):
        parse_postgres_url("postgresql://db/p", {"schema": schema})


def test_another_scheme_is_refused_without_its_password() -> None:
    with pytest.raises(ImproperlyConfigured, match="not a PostgreSQL URL") as info:
        parse_postgres_url("mysql://app:secret@db/p")
    assert "secret" not in str(info.value)
