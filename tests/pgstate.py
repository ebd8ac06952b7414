"""Fresh PostgreSQL databases for tests that run the state store on PostgreSQL (dropped after)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

SERVER = os.environ.get("CLARUS_TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def fresh_database(prefix: str = "clarus_state_test") -> Iterator[str]:
    """A new, empty database's URL; dropped (whoever is still connected) when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(f"{SERVER}/postgres")
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {SERVER} (scripts/ensure_postgres.sh starts it): {exc}")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{SERVER}/{name}"
    finally:
        with admin.cursor() as cur:
            for clone in _clones.pop(name, []):
                cur.execute(f'DROP DATABASE IF EXISTS "{clone}" WITH (FORCE)')
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()




_clones: dict[str, list[str]] = {}


def clone_state(base: str | Path, target: Path) -> str | Path:
    """A copy of the state at `base` for one test: the DuckDB file copied to `target`, or a new
    PostgreSQL database made from the base one as a template (dropped with the base)."""
    base = str(base)
    if not base.startswith("postgresql://"):
        shutil.copyfile(base, target)
        return target
    server, _, template = base.rpartition("/")
    name = f"{template}_c{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(f"{server}/postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        admin.close()
    _clones.setdefault(template, []).append(name)
    return f"{server}/{name}"


@contextlib.contextmanager
def state_base(backend: str, folder: Path) -> Iterator[str | Path]:
    """Where a test module keeps its synced base state for `backend` (clones dropped with it)."""
    if backend == "duckdb":
        yield folder / "state.duckdb"
        return
    with fresh_database() as url:
        yield url
