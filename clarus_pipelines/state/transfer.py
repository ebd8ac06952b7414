"""Move a single-host state (a DuckDB file) into PostgreSQL, for a deployment that outgrows one host.

Every table the migrations made is copied row for row: one read of the DuckDB file and one
PostgreSQL transaction, so the copy is whole or absent. Each sequence then resumes where
DuckDB's stopped. What the flows keep carries over with it: order events and consumer
offsets, intents recorded before each outside call, idempotency keys, exceptions, stock
history. A flow started on PostgreSQL afterwards picks up where the DuckDB one stopped, and
sends nothing twice.

Refused, with the reason, before anything is written:
- a target that already holds rows (a copy never merges into a live state);
- landings the receiver acknowledged that ingest has not read yet (the command checks the
  landing zone; `clarus-pipelines ingest` first): PostgreSQL mode reads its webhook inbox, not
  the landing zone, so they would be lost;
- a DuckDB file or database whose migrations differ from this version's.

Stop the pipelines and the receiver first: the DuckDB file is read under its shared lock, and
what lands after the copy would stay behind in the landing zone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clarus_pipelines.state.pg import WRITER_LOCK_KEY, PgConnection, PgStateStore, _quote_ident, is_postgres_url
from clarus_pipelines.state.store import StateStore

CHUNK_ROWS = 50_000  # rows read and sent per COPY: bounds memory on a large stock history
_STAGED = "clarus_state_copy"


class StateCopyRefused(ValueError):
    """The copy would lose or merge data; nothing was written."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied (tables with none left out)
    sequences: dict[str, int] = field(default_factory=dict)  # sequence -> the last value it resumes after

    def as_json(self) -> dict[str, Any]:
        return {"tables": len(self.rows), "rows": sum(self.rows.values()), "by_table": self.rows,
                "sequences": self.sequences}


def _duckdb_layout(con) -> tuple[dict[str, list[tuple[str, str]]], dict[str, int | None], list[int]]:
    """Tables (column name, DuckDB type, in order), sequences' last values and applied migrations."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in con.execute(
            "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
            " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = 'main' AND t.table_type = 'BASE TABLE' AND c.table_name <> 'schema_migrations'"
            " ORDER BY c.table_name, c.ordinal_position").fetchall():
        tables.setdefault(table, []).append((column, data_type))
    sequences = dict(con.execute("SELECT sequence_name, last_value FROM duckdb_sequences()").fetchall())
    versions = [v for (v,) in con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
    return tables, sequences, versions


def _postgres_layout(cur) -> tuple[dict[str, dict[str, str]], list[int]]:
    """Tables (column name -> PostgreSQL type) and applied migrations of the current schema."""
    cur.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
        " AND c.relname <> 'schema_migrations'")
    tables: dict[str, dict[str, str]] = {}
    for table, column, pg_type in cur.fetchall():
        tables.setdefault(table, {})[column] = pg_type
    cur.execute("SELECT version FROM schema_migrations ORDER BY version")
    return tables, [v for (v,) in cur.fetchall()]


def _read_expression(column: str, duckdb_type: str) -> str:
    """How a column leaves DuckDB: JSON as its text, bytes as hex (the staging COPY is CSV)."""
    ident = _quote_ident(column)
    if duckdb_type == "JSON":
        return f"CAST({ident} AS VARCHAR) AS {ident}"
    if duckdb_type == "BLOB":
        return f"hex({ident}) AS {ident}"
    return ident


def _write_expression(column: str, pg_type: str) -> str:
    ident = _quote_ident(column)
    if pg_type == "bytea":
        return f"decode({ident}, 'hex')"
    return f"{ident}::{pg_type}"


def copy_state(source: Path | str, target: str) -> CopyReport:
    """Copy the DuckDB state at `source` into the empty PostgreSQL state at `target` (see the module)."""
    if is_postgres_url(source):
        raise StateCopyRefused("the source must be a DuckDB state file (to copy between PostgreSQL databases use pg_dump)")
    if not is_postgres_url(target):
        raise StateCopyRefused("the target must be a postgresql:// URL")
    if not Path(source).exists():
        raise StateCopyRefused(f"no DuckDB state at {source}")
    duck, pg = StateStore(source), PgStateStore(target)
    duck.ensure_schema()
    pg.ensure_schema()
    with duck.read() as src:
        tables, sequences, versions = _duckdb_layout(src)
        raw = pg.connect()
        try:
            with raw.cursor() as cur:
                # the state's writer lock, held to the commit: no flow (and no second copy) writes in between
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK_KEY])
                pg_tables, pg_versions = _postgres_layout(cur)
                if pg_versions != versions or set(pg_tables) != set(tables):
                    raise StateCopyRefused(
                        f"the two states are at different migrations (DuckDB {versions[-1:]}, PostgreSQL {pg_versions[-1:]}):"
                        " run this with the version that wrote the DuckDB file")
                held = [t for t in sorted(pg_tables) if _has_rows(cur, t)]
                if held:
                    raise StateCopyRefused(f"the PostgreSQL state already holds rows ({', '.join(held[:5])}"
                                           f"{'...' if len(held) > 5 else ''}): copy only into an empty state")
                report = CopyReport()
                for table, columns in tables.items():
                    copied = _copy_table(src, cur, table, columns, pg_tables[table])
                    if copied:
                        report.rows[table] = copied
                for name, last in sorted(sequences.items()):
                    if last is not None:
                        cur.execute("SELECT setval(%s, %s)", [name, last])
                        report.sequences[name] = last
            raw.commit()
        finally:
            if not raw.closed:
                raw.rollback()
                raw.close()
    return report


def _has_rows(cur, table: str) -> bool:
    cur.execute(f"SELECT EXISTS (SELECT 1 FROM {_quote_ident(table)})")
    return bool(cur.fetchone()[0])


def _copy_table(src, cur, table: str, columns: list[tuple[str, str]], pg_columns: dict[str, str]) -> int:
    """Stage the table's rows chunk by chunk (COPY into a temporary table), insert them cast to the target's types."""
    missing = [c for c, _ in columns if c not in pg_columns]
    if missing:
        raise StateCopyRefused(f"{table}: PostgreSQL has no column {', '.join(missing)}")
    selected = ", ".join(_read_expression(c, t) for c, t in columns)
    reader = src.sql(f"SELECT {selected} FROM {_quote_ident(table)}").to_arrow_reader(CHUNK_ROWS)
    staging = PgConnection(cur.connection)
    names = ", ".join(_quote_ident(c) for c, _ in columns)
    values = ", ".join(_write_expression(c, pg_columns[c]) for c, _ in columns)
    copied = 0
    for batch in reader:
        if not batch.num_rows:
            continue
        staging.register(_STAGED, batch)
        cur.execute(f"INSERT INTO {_quote_ident(table)} ({names}) SELECT {values} FROM pg_temp.{_STAGED}")
        copied += batch.num_rows
    if copied:
        staging.unregister(_STAGED)
    return copied
