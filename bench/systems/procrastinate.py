"""Procrastinate 3 on PostgreSQL (its tables in a schema of their own, via search_path)."""

from __future__ import annotations

import subprocess
import urllib.parse
import uuid
from dataclasses import dataclass

from bench.systems import BIN, ROOT, Settings, System
from bench.systems._servers import Sql


@dataclass
class Procrastinate(System):
    """Two ``procrastinate worker -c 2`` processes (one asyncio process each)."""

    def worker_argv(self, node: int, events: bool) -> list[str]:
        one = f"{BIN / 'procrastinate'} --app {self.app_module}.app worker -c 2 -q ''"
        return ["sh", "-c", f"{one} & {one} & wait"]

    def _reset(self) -> None:
        super()._reset()  # drops the schema
        assert self.schema is not None
        self.schema.run(f'CREATE SCHEMA "{self.schema_name}"')  # its tables exist before a defer
        argv = [str(BIN / "procrastinate"), "--app", f"{self.app_module}.app", "schema", "--apply"]
        subprocess.run(argv, env=self.env(), cwd=ROOT, check=True, capture_output=True)


def _procrastinate(settings: Settings) -> System:
    schema = f"bench_proc_{uuid.uuid4().hex[:12]}"
    options = urllib.parse.quote(f"-c search_path={schema}")
    return Procrastinate(
        "procrastinate", "benchapp_procrastinate", "postgres", settings.counter_url(),
        variables={"BENCH_PROCRASTINATE_URL": f"{settings.postgres}?options={options}"},
        schema=Sql(settings.postgres), schema_name=schema,
    )  # fmt: skip


FACTORIES = {"procrastinate": _procrastinate}
