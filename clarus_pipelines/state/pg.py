"""The integration state in PostgreSQL (production): the same store contract as the DuckDB file.

Flows are written once, against DuckDB's connection API and SQL dialect. Here a
`PgConnection` offers the part of that API they use (`execute` with `?` parameters,
`fetchall`/`fetchone`/`pl`/`df`/`arrow`, `executemany`, `sql`, `register`/`unregister`)
over a psycopg2 connection: each SQL text is transpiled once to PostgreSQL with sqlglot
(cached), `INSERT OR REPLACE` becomes `ON CONFLICT (primary key) DO UPDATE`, `GROUP BY ALL`
becomes the non-aggregate columns, and a registered frame becomes a TEMP table filled by COPY.

No file lock exists in this mode. Writers keep today's one-writer-at-a-time semantics with
`pg_advisory_xact_lock` on one fixed key, taken at the start of each write transaction and
released by its commit or rollback (a crashed writer's lock goes with its session): the flows
read-decide-write inside one transaction and were built for a single writer, so this keeps
them idempotent without rewriting each as row locks. Readers take no lock at all: each
read is one REPEATABLE READ transaction (a consistent snapshot) that always ends in ROLLBACK.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import duckdb
import polars as pl
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlglot
from sqlglot import exp

log = logging.getLogger(__name__)

# One fixed advisory-lock key for "the state writer" (any 64-bit number nobody else uses).
WRITER_LOCK_KEY = 0x434C_4152_5553  # "CLARUS"
NAMED_LOCK_CLASS = 0x434C_4152  # first key of `try_lock(name)` locks (name hashed into the second)

_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg2://")


class PgStateError(duckdb.Error):
    """A PostgreSQL error raised to the flows as a `duckdb.Error` (what they catch to set a
    record aside), named after psycopg2's class (UniqueViolation...), the original as its cause."""


_ERROR_CLASSES: dict[str, type[PgStateError]] = {}


def _translated(exc: psycopg2.Error) -> PgStateError:
    name = type(exc).__name__
    cls = _ERROR_CLASSES.get(name)
    if cls is None:
        cls = _ERROR_CLASSES[name] = type(name, (PgStateError,), {"__module__": __name__})
    error = cls(str(exc).strip())
    error.pgcode = exc.pgcode
    return error


@contextlib.contextmanager
def _as_duckdb_errors() -> Iterator[None]:
    try:
        yield
    except psycopg2.Error as exc:
        raise _translated(exc) from exc


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(_PG_SCHEMES)


def masked_url(url: str) -> str:
    """The URL as logs and pages may show it: the password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


def pg_connect(url: str, *, autocommit: bool = False, application_name: str = "clarus-pipelines"):
    """A psycopg2 connection to the state database: UTC session, JSON columns returned as text.

    For other code that needs PostgreSQL directly (e.g. webhook intake); the caller closes it.
    """
    con = psycopg2.connect(_dsn(url), options="-c TimeZone=UTC", application_name=application_name)
    psycopg2.extras.register_default_json(con, loads=lambda text: text)
    psycopg2.extras.register_default_jsonb(con, loads=lambda text: text)
    con.autocommit = autocommit
    return con


# --------------------------------------------------------------------------- transpiling
_QUESTION = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\?)""", re.S)


def _number_placeholders(sql: str) -> tuple[str, int]:
    """`?` -> `$1 `, `$2 ` ... outside literals and comments (sqlglot keeps numbered ones apart)."""
    count = 0

    def repl(match: re.Match) -> str:
        nonlocal count
        if match.group(0) != "?":
            return match.group(0)
        count += 1
        return f"${count} "

    return _QUESTION.sub(repl, sql), count


def _group_by_all(select: exp.Select) -> None:
    group = select.args.get("group")
    if group is None or not group.args.get("all"):
        return
    ordinals = [
        exp.Literal.number(i)
        for i, projection in enumerate(select.expressions, start=1)
        if not projection.find(exp.AggFunc)
    ]
    select.set("group", exp.Group(expressions=ordinals) if ordinals else None)


def _order_by_all(select: exp.Select) -> None:
    order = select.args.get("order")
    if order is None or len(order.expressions) != 1:
        return
    [ordered] = order.expressions
    if not (isinstance(ordered.this, exp.Var) and ordered.this.name.upper() == "ALL"):
        return
    order.set("expressions", [
        exp.Ordered(this=exp.Literal.number(i), desc=ordered.args.get("desc"),
                    nulls_first=ordered.args.get("nulls_first"))
        for i in range(1, len(select.expressions) + 1)
    ])


def _first_of(node: exp.ArgMax | exp.ArgMin, where: exp.Expression | None) -> exp.Expression:
    """arg_max(v, k) [FILTER (WHERE ...)] as (array_agg(v ORDER BY k DESC NULLS LAST) [FILTER ...])[1]."""
    order = exp.Ordered(this=node.expression, desc=isinstance(node, exp.ArgMax), nulls_first=False)
    agg: exp.Expression = exp.ArrayAgg(this=exp.Order(this=node.this, expressions=[order]))
    if where is not None:
        agg = exp.Filter(this=agg, expression=where)
    return exp.Bracket(this=exp.Paren(this=agg), expressions=[exp.Literal.number(1)], offset=1)


def _functions(node: exp.Expression) -> exp.Expression:
    """DuckDB functions PostgreSQL lacks (or spells differently), as PostgreSQL expressions."""
    if isinstance(node, exp.Explode) and isinstance(node.this, exp.GenerateSeries):
        return node.this  # generate_series is already a set in PostgreSQL
    if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.AnyValue):
        return exp.Min(this=node.this.this)
    if isinstance(node, exp.AnyValue):
        return exp.Min(this=node.this)
    if isinstance(node, exp.ArgMax | exp.ArgMin):
        return _first_of(node, None)
    if isinstance(node, exp.Filter) and isinstance(node.this, exp.ArgMax | exp.ArgMin):
        return _first_of(node.this, node.expression)
    if isinstance(node, exp.TryCast):
        to = node.args["to"]
        guarded = exp.Anonymous(this="clarus_try_cast", expressions=[
            exp.Cast(this=node.this, to=exp.DataType.build("text")), exp.Cast(this=exp.null(), to=to.copy())])
        return exp.Cast(this=guarded, to=to.copy())
    if (isinstance(node, exp.Window) and isinstance(node.this, exp.Count) and isinstance(node.this.this, exp.Distinct)
            and len(node.this.this.expressions) == 1):
        # PostgreSQL has no DISTINCT in a window aggregate: the frame's values as an array, counted distinct
        window = node.copy()
        window.set("this", exp.ArrayAgg(this=node.this.this.expressions[0].copy()))
        return exp.Anonymous(this="clarus_count_distinct", expressions=[window])
    if isinstance(node, exp.JSONExtract | exp.JSONExtractScalar) and not isinstance(node.expression, exp.JSONPath):
        # a path known only at run time (a parameter, a column): PostgreSQL's ->> would look it up
        # as one key literally named '$.a.b' and give NULL, so it is read as DuckDB reads it
        name = "clarus_json_extract_string" if isinstance(node, exp.JSONExtractScalar) else "clarus_json_extract"
        return exp.Anonymous(this=name, expressions=[node.this, node.expression])
    if isinstance(node, exp.JSONObject):
        args = []
        for pair in node.expressions:
            args += [pair.this, pair.expression]
        return exp.Anonymous(this="json_build_object", expressions=args)
    if isinstance(node, exp.Anonymous) and node.name.lower() in ("to_hours", "to_minutes", "to_seconds", "to_days"):
        unit = node.name.lower()[3:-1]
        return exp.Mul(this=exp.Paren(this=node.expressions[0]), expression=exp.Interval(
            this=exp.Literal.string("1"), unit=exp.var(unit.upper())))
    return node


def _fix(tree: exp.Expression, primary_key) -> exp.Expression:
    """DuckDB constructs sqlglot leaves as they are, rewritten into PostgreSQL equivalents."""
    tree = tree.transform(_functions)
    for select in tree.find_all(exp.Select):
        _group_by_all(select)
        _order_by_all(select)
    for n, subquery in enumerate(tree.find_all(exp.Subquery)):
        if not subquery.alias and isinstance(subquery.parent, (exp.From, exp.Join)):
            subquery.set("alias", exp.TableAlias(this=exp.to_identifier(f"_subquery{n}")))
    if isinstance(tree, exp.Insert) and tree.args.get("alternative") in ("REPLACE", "IGNORE"):
        alternative = tree.args["alternative"]
        tree.set("alternative", None)
        table = tree.find(exp.Table)
        if alternative == "IGNORE":
            tree.set("conflict", exp.OnConflict(nothing=True))
        else:
            keys = primary_key(table.name)
            schema = tree.this
            columns = [c.name for c in schema.expressions] if isinstance(schema, exp.Schema) else None
            if columns is None:
                raise ValueError(f"INSERT OR REPLACE INTO {table.name} needs a column list in PostgreSQL mode")
            updates = [
                exp.EQ(this=exp.column(c), expression=exp.column(c, table="EXCLUDED"))
                for c in columns if c not in keys
            ]
            conflict = exp.OnConflict(
                conflict_keys=[exp.to_identifier(k) for k in keys],
                action=exp.var("DO UPDATE") if updates else exp.var("DO NOTHING"),
                expressions=updates,
            ) if updates else exp.OnConflict(conflict_keys=[exp.to_identifier(k) for k in keys], nothing=True)
            tree.set("conflict", conflict)
    return tree


_PARAM = re.compile(r"%\((\d+)\)s")
_PERCENT = re.compile(r"%(?!\(\d+\)s)")


@lru_cache(maxsize=4096)
def _transpile_cached(sql: str, keys: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[str, int]:
    known = dict(keys)
    return _transpile(sql, lambda table: known[table])


def _transpile(sql: str, primary_key) -> tuple[str, int]:
    numbered, count = _number_placeholders(sql)
    statements = [s for s in sqlglot.parse(numbered, read="duckdb") if s is not None]
    text = ";\n".join(_fix(s, primary_key).sql(dialect="postgres") for s in statements)
    if count:
        text = _PERCENT.sub("%%", text)
    return text, count


def to_postgres(sql: str, primary_key=None) -> tuple[str, int]:
    """PostgreSQL text for DuckDB-dialect `sql` and how many parameters it takes (`%(n)s`)."""
    return _transpile(sql, primary_key or (lambda table: (_ for _ in ()).throw(KeyError(table))))


# --------------------------------------------------------------------------- parameters
class _TextArray:
    """An empty Python list as a typed array (a bare '{}' has no type in `unnest(?)`)."""

    def __init__(self, items: Sequence) -> None:
        self.items = list(items)

    def getquoted(self) -> bytes:
        return b"'{}'::text[]"


psycopg2.extensions.register_adapter(_TextArray, lambda value: value)


def _param(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and not value:
        return _TextArray(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return json.dumps(value)
    return value


def _params(params: Sequence | None, count: int) -> dict[str, Any] | None:
    if not count:
        return None
    values = list(params or [])
    if len(values) != count:
        raise ValueError(f"statement takes {count} parameters, got {len(values)}")
    return {str(i): _param(v) for i, v in enumerate(values, start=1)}


# --------------------------------------------------------------------------- results
_TEXT_OIDS = {25, 1043, 1042, 19, 114, 3802, 2950, 18}
_INT_OIDS = {20: pl.Int64, 21: pl.Int16, 23: pl.Int32, 26: pl.Int64}
_LIST_OIDS = {1009: pl.Utf8, 1015: pl.Utf8, 1014: pl.Utf8, 1016: pl.Int64, 1007: pl.Int32}


def _dtype(column) -> pl.DataType | None:
    oid = column.type_code
    if oid in _TEXT_OIDS:
        return pl.Utf8
    if oid in _INT_OIDS:
        return _INT_OIDS[oid]
    if oid == 16:
        return pl.Boolean
    if oid == 701:
        return pl.Float64
    if oid == 700:
        return pl.Float32
    if oid == 1114:
        return pl.Datetime("us")
    if oid == 1184:
        return pl.Datetime("us", "UTC")
    if oid == 1082:
        return pl.Date
    if oid == 1186:
        return pl.Duration("us")
    if oid == 1700 and column.precision is not None and column.scale is not None and column.precision < 65535:
        return pl.Decimal(column.precision, column.scale)
    if oid in _LIST_OIDS:
        return pl.List(_LIST_OIDS[oid])
    return None


class PgResult:
    """What DuckDB's `execute`/`sql` return, as far as the flows use it."""

    def __init__(self, description, rows: list[tuple] | None, rowcount: int) -> None:
        self.description = description
        if rows is None:  # DuckDB answers a write with its row count
            rows = [(rowcount,)] if rowcount >= 0 else []
        self._rows = rows
        self._at = 0

    def fetchall(self) -> list[tuple]:
        rows, self._at = self._rows[self._at:], len(self._rows)
        return rows

    def fetchone(self) -> tuple | None:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchmany(self, size: int = 1) -> list[tuple]:
        rows = self._rows[self._at:self._at + size]
        self._at += len(rows)
        return rows

    def pl(self) -> pl.DataFrame:
        rows = self.fetchall()
        if self.description is None:
            return pl.DataFrame()
        names = [c.name for c in self.description]
        dtypes = [_dtype(c) for c in self.description]
        if not rows:
            return pl.DataFrame(schema={n: (d or pl.Utf8) for n, d in zip(names, dtypes)})
        columns = list(zip(*rows))
        series = []
        for name, dtype, values in zip(names, dtypes, columns):
            if isinstance(dtype, pl.Decimal) or dtype is None:
                series.append(pl.Series(name, list(values), strict=False))
            else:
                series.append(pl.Series(name, list(values), dtype=dtype, strict=False))
        return pl.DataFrame(series)

    def arrow(self) -> pa.Table:
        return self.pl().to_arrow()

    fetch_arrow_table = arrow

    def df(self):
        return self.pl().to_pandas()

    fetchdf = df


# --------------------------------------------------------------------------- registered frames
def _as_arrow(frame: Any) -> pa.Table:
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatchReader):
        return frame.read_all()
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    if isinstance(frame, pl.DataFrame):
        return frame.to_arrow()
    if isinstance(frame, pl.LazyFrame):
        return frame.collect().to_arrow()
    if hasattr(frame, "to_arrow"):
        return frame.to_arrow()
    import pandas as pd

    if isinstance(frame, pd.DataFrame):
        return pa.Table.from_pandas(frame, preserve_index=False)
    raise TypeError(f"cannot register a {type(frame).__name__}")


def _pg_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) or pa.types.is_string_view(t):
        return "TEXT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE PRECISION"
    if pa.types.is_decimal(t):
        return f"NUMERIC({t.precision}, {t.scale})"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_duration(t):
        return "INTERVAL"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _pg_type(t.value_type) + "[]"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return "JSON"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "BYTEA"
    return "TEXT"


def _array_literal(values: list | None) -> str | None:
    if values is None:
        return None
    items = []
    for v in values:
        if v is None:
            items.append("NULL")
        else:
            s = str(v).replace("\\", "\\\\").replace('"', '\\"')
            items.append(f'"{s}"')
    return "{" + ",".join(items) + "}"


def _csv_ready(table: pa.Table) -> pa.Table:
    """Columns CSV cannot carry (lists, structs, durations) as the text PostgreSQL reads for them."""
    columns = []
    for name, column in zip(table.column_names, table.columns):
        t = column.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            column = pa.array([_array_literal(v) for v in column.to_pylist()], pa.string())
        elif pa.types.is_struct(t) or pa.types.is_map(t):
            column = pa.array([None if v is None else json.dumps(v, default=str) for v in column.to_pylist()], pa.string())
        elif pa.types.is_duration(t):
            column = pa.array([None if v is None else f"{v.total_seconds()} seconds" for v in column.to_pylist()], pa.string())
        elif pa.types.is_null(t):
            column = pa.array([None] * len(column), pa.string())
        elif pa.types.is_string_view(t):
            column = column.cast(pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgConnection:
    """DuckDB's connection API (the part the flows use) over one psycopg2 connection."""

    def __init__(self, raw, *, reader: bool = False) -> None:
        self.raw = raw
        self._last: PgResult | None = None
        self._registered: set[str] = set()
        # a read goes on after a refused statement, as in DuckDB (PostgreSQL aborts the transaction):
        # a refusal rolls back to the savepoint taken at the read's first statement and after each
        # registered or unregistered table, which undoes nothing else (a reader writes nothing)
        self._reader, self._marked = reader, False

    def _mark(self, cur) -> None:
        if self._reader:
            cur.execute("SAVEPOINT clarus_read")
            self._marked = True

    @contextlib.contextmanager
    def _statement(self) -> Iterator[Any]:
        with _as_duckdb_errors(), self.raw.cursor() as cur:
            if not self._marked:
                self._mark(cur)  # readers only
            try:
                yield cur
            except psycopg2.Error:
                if self._marked:
                    with contextlib.suppress(psycopg2.Error):  # the refusal is what is raised
                        cur.execute("ROLLBACK TO SAVEPOINT clarus_read")
                raise

    # the primary keys INSERT OR REPLACE conflicts on
    def _keys(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return _primary_keys(self.raw.dsn)

    def _prepare(self, sql: str) -> tuple[str, int]:
        try:
            return _transpile_cached(sql, self._keys())
        except KeyError:
            _primary_keys_cache.pop(self.raw.dsn, None)
            return _transpile_cached(sql, self._keys())

    def _run(self, sql: str, params: Sequence | None) -> PgResult:
        text, count = self._prepare(sql)
        with self._statement() as cur:
            cur.execute(text, _params(params, count))
            if cur.description is not None:
                result = PgResult(cur.description, cur.fetchall(), cur.rowcount)
            else:
                result = PgResult(None, None, cur.rowcount)
        return result

    def execute(self, sql: str, params: Sequence | None = None) -> PgConnection:
        self._last = self._run(sql, params)
        return self

    def sql(self, sql: str, params: Sequence | None = None) -> PgResult:
        return self._run(sql, params)

    query = sql

    def executemany(self, sql: str, params: Sequence[Sequence]) -> PgConnection:
        text, count = self._prepare(sql)
        rows = [_params(p, count) for p in params]
        if rows:
            with self._statement() as cur:
                psycopg2.extras.execute_batch(cur, text, rows, page_size=500)
        self._last = PgResult(None, [], -1)
        return self

    # results of the last execute
    def _result(self) -> PgResult:
        if self._last is None:
            raise RuntimeError("no statement executed")
        return self._last

    def fetchall(self):
        return self._result().fetchall()

    def fetchone(self):
        return self._result().fetchone()

    def fetchmany(self, size: int = 1):
        return self._result().fetchmany(size)

    def pl(self):
        return self._result().pl()

    def df(self):
        return self._result().df()

    fetchdf = df

    def arrow(self):
        return self._result().arrow()

    fetch_arrow_table = arrow

    @property
    def description(self):
        return self._result().description

    # frames as tables
    def register(self, name: str, frame: Any) -> PgConnection:
        """`name` becomes a TEMP table holding `frame` (COPY), until `unregister` or the session ends."""
        table = _as_arrow(frame)
        ident = _quote_ident(name)
        columns = ", ".join(f"{_quote_ident(f.name)} {_pg_type(f.type)}" for f in table.schema)
        with self._statement() as cur:
            cur.execute(f"DROP TABLE IF EXISTS pg_temp.{ident}")
            cur.execute(f"CREATE TEMP TABLE {ident} ({columns})")
            if table.num_rows:
                buffer = io.BytesIO()
                pacsv.write_csv(_csv_ready(table), buffer,
                                pacsv.WriteOptions(include_header=False, quoting_style="needed"))
                buffer.seek(0)
                cur.copy_expert(f"COPY {ident} FROM STDIN WITH (FORMAT csv)", buffer)
            self._mark(cur)  # a later refused statement keeps the table
        self._registered.add(name)
        return self

    def unregister(self, name: str) -> PgConnection:
        with self._statement() as cur:
            cur.execute(f"DROP TABLE IF EXISTS pg_temp.{_quote_ident(name)}")
            self._mark(cur)
        self._registered.discard(name)
        return self

    def complete(self) -> None:
        """Results are fetched whole at execute: nothing is ever half-read."""

    def close(self) -> None:  # the store closes the connection
        pass

    def commit(self) -> None:
        raise RuntimeError("the state store commits: leave the `with store.write()` block")


_primary_keys_cache: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {}
_primary_keys_lock = threading.Lock()


def _primary_keys(dsn: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    with _primary_keys_lock:
        if dsn in _primary_keys_cache:
            return _primary_keys_cache[dsn]
    con = psycopg2.connect(dsn)
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT c.relname, array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum))"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()"
                " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indisprimary GROUP BY c.relname"
            )
            keys = tuple(sorted((name, tuple(cols)) for name, cols in cur.fetchall()))
    finally:
        con.close()
    with _primary_keys_lock:
        _primary_keys_cache[dsn] = keys
    return keys


# --------------------------------------------------------------------------- migrations
# DuckDB functions the flows call that PostgreSQL lacks and sqlglot does not rewrite, defined
# once per database (CREATE OR REPLACE, under the writer lock, before the migrations).
COMPAT_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION json_valid(body text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM body::json;
    RETURN true;
EXCEPTION WHEN others THEN
    RETURN false;
END $$;

-- DuckDB's TRY_CAST: NULL instead of an error (`clarus_try_cast(x::text, NULL::type)`). As in
-- DuckDB, a JSON array cast to an array type takes its elements ('["a","b"]' -> {a,b}); PostgreSQL's
-- own cast reads only its '{a,b}' literal.
CREATE OR REPLACE FUNCTION clarus_try_cast(value text, target anyelement) RETURNS anyelement
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF pg_typeof(target)::text LIKE '%[]' AND ltrim(value) LIKE '[%' THEN
        value := (SELECT coalesce(array_agg(element), '{}') FROM json_array_elements_text(value::json) AS element)::text;
    END IF;
    EXECUTE format('SELECT %L::%s', value, pg_typeof(target)) INTO target;
    RETURN target;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

-- count(DISTINCT x) OVER (...), which PostgreSQL lacks, as clarus_count_distinct(array_agg(x) OVER (...)):
-- the frame's distinct values, NULL not counted.
CREATE OR REPLACE FUNCTION clarus_count_distinct(items anyarray) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT count(DISTINCT item) FROM unnest(items) AS item
$$;

-- A DuckDB JSON path as a PostgreSQL path array, read as DuckDB reads it: a JSONPath
-- ('$.a.b[0]' -> {a,b,0}), a JSON pointer ('/a/b/0' -> {a,b,0}, ~1 and ~0 unescaped), or else
-- one key ('a.b' -> {a.b}).
CREATE OR REPLACE FUNCTION duckdb_json_path(path text) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN path LIKE '$%' THEN array_remove(regexp_split_to_array(
            regexp_replace(regexp_replace(path, '^[$][.]?', ''), '\[(\d+)\]', '.\1', 'g'), '[.]'), '')
        WHEN path LIKE '/%' THEN ARRAY(
            SELECT replace(replace(part, '~1', '/'), '~0', '~')
            FROM unnest(regexp_split_to_array(substr(path, 2), '/')) WITH ORDINALITY AS p(part, n) ORDER BY n)
        ELSE ARRAY[path] END
$$;

-- json_extract(body, path) and json_extract_string(body, path) with a path given at run time.
CREATE OR REPLACE FUNCTION clarus_json_extract(body json, path text) RETURNS json LANGUAGE sql IMMUTABLE AS $$
    SELECT body #> duckdb_json_path(path)
$$;
CREATE OR REPLACE FUNCTION clarus_json_extract_string(body json, path text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT body #>> duckdb_json_path(path)
$$;

-- DuckDB's json_array_length(json, path): NULL when the path is missing, 0 when not an array.
CREATE OR REPLACE FUNCTION json_array_length(body json, path text) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN body #> duckdb_json_path(path) IS NULL THEN NULL
                WHEN json_typeof(body #> duckdb_json_path(path)) = 'array' THEN json_array_length(body #> duckdb_json_path(path))
                ELSE 0 END
$$;
"""

def migrate_pg(raw, files: list[tuple[int, str, str]], overrides: dict[int, str]) -> list[str]:
    """Apply every migration not yet applied (each in its own transaction) under the writer lock."""
    done = []
    with raw.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [WRITER_LOCK_KEY])
    try:
        with raw.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
            )
            cur.execute("SELECT version FROM schema_migrations")
            applied = {row[0] for row in cur.fetchall()}
            cur.execute(COMPAT_FUNCTIONS)
        raw.commit()
        for version, name, sql in files:
            if version in applied:
                continue
            text = overrides.get(version) or _transpile(sql, lambda table: ())[0]
            try:
                with raw.cursor() as cur:
                    cur.execute(text)
                    cur.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s, (now() AT TIME ZONE 'UTC'))", [version, name]
                    )
                raw.commit()
            except BaseException:
                raw.rollback()
                raise
            log.info("applied state migration %s (PostgreSQL)", name)
            done.append(name)
    finally:
        with raw.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", [WRITER_LOCK_KEY])
        raw.commit()
    _primary_keys_cache.pop(raw.dsn, None)
    return done


_MIGRATED: set[tuple[str, int]] = set()


class PgStateStore:
    """Handle on the state in PostgreSQL: `write()`, `read()`, `ensure_schema()` as `StateStore`."""

    backend = "postgres"

    def __init__(self, url: str, lock_timeout_s: float = 120.0) -> None:
        self.url = url
        self.path = url  # what the resources and harnesses pass on to open the same state
        self.lock_timeout_s = lock_timeout_s
        self._migrated = False

    def connect(self, *, autocommit: bool = False):
        """A raw psycopg2 connection to this state (the caller closes it)."""
        return pg_connect(self.url, autocommit=autocommit)

    def _migrate(self, raw) -> None:
        from clarus_pipelines.state.store import _migration_files, _pg_overrides

        files = _migration_files()
        done = (self.url, files[-1][0] if files else 0)
        if done not in _MIGRATED:  # once per process and database (up to the newest file)
            migrate_pg(raw, files, _pg_overrides())
            _MIGRATED.add(done)
        self._migrated = True

    @contextlib.contextmanager
    def write(self) -> Iterator[PgConnection]:
        """One transaction, one writer at a time (advisory lock): commits on success, rolls back on error."""
        from clarus_pipelines.state.store import LockTimeout

        raw = pg_connect(self.url)
        try:
            if not self._migrated:
                self._migrate(raw)
            with raw.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = %s", [f"{int(self.lock_timeout_s * 1000)}ms"])
                try:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", [WRITER_LOCK_KEY])
                except psycopg2.errors.LockNotAvailable as exc:
                    raise LockTimeout(f"the state writer lock stayed taken for {self.lock_timeout_s:.0f}s") from exc
                cur.execute("SET LOCAL lock_timeout = 0")
            try:
                yield PgConnection(raw)
            except BaseException:
                raw.rollback()
                raise
            raw.commit()
        finally:
            if not raw.closed:
                if raw.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                    raw.rollback()
                raw.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[PgConnection]:
        """A consistent snapshot (REPEATABLE READ) taking no lock; always rolled back."""
        self.ensure_schema()
        raw = pg_connect(self.url)
        try:
            raw.set_session(isolation_level="REPEATABLE READ")
            yield PgConnection(raw, reader=True)
        finally:
            raw.rollback()
            raw.close()

    def ensure_schema(self) -> None:
        if self._migrated:
            return
        raw = pg_connect(self.url)
        try:
            self._migrate(raw)
        finally:
            raw.close()

    @contextlib.contextmanager
    def check_reader(self, tables: Sequence[str]) -> Iterator[Any]:
        """An in-memory DuckDB holding `tables` as read in one PostgreSQL snapshot (through Arrow);
        an entry `"orders(order_id, order_name)"` pulls only those columns.

        DuckDB stays the engine of the data checks (reconciliation, SKU and tracking
        mismatches): they run their DuckDB SQL on this copy and never write PostgreSQL.
        """

        local = duckdb.connect()
        try:
            with self.read() as con:
                for entry in tables:  # "table" or "table(col, col)": only the columns a check reads
                    table, _, listed = entry.partition("(")
                    table = table.strip()
                    columns = ", ".join(_quote_ident(c.strip()) for c in listed.rstrip(")").split(",")) if listed else "*"
                    frame = con.sql(f"SELECT {columns} FROM {_quote_ident(table)}").arrow()
                    local.register("_pulled", frame)
                    local.execute(f"CREATE TABLE {_quote_ident(table)} AS SELECT * FROM _pulled")
                    local.unregister("_pulled")
            yield local
        finally:
            local.close()

    @contextlib.contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        """A named lock between processes, not waited for: yields False when another holds it.

        A session advisory lock on its own connection (two-int key space, apart from the
        writer lock), released when the block ends or the process dies.
        """
        raw = pg_connect(self.url, autocommit=True)
        try:
            with raw.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [NAMED_LOCK_CLASS, name])
                held = cur.fetchone()[0]
            yield held
        finally:
            raw.close()

    def snapshot(self, target=None):
        raise NotImplementedError("PostgreSQL state has no file to copy: read through `read()`")
