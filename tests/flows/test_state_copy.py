"""`clarus-pipelines state-copy`: a single-host DuckDB state moves into PostgreSQL whole, or not at all."""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal

import duckdb
import pytest

from clarus_pipelines import cli
from clarus_pipelines.receiver.landing import Envelope, LandingZone
from clarus_pipelines.state import StateStore, transfer
from clarus_pipelines.state.pg import PgStateStore, masked_url
from dashboard_seed import seed_state
from pgstate import fresh_database

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 3, 12, 0)
AWKWARD_TEXT = 'a "quoted", comma\nnew line, \\ backslash, ünïcödé ✓, \'single\''


@pytest.fixture(scope="module")
def single_host(tmp_path_factory):
    """A DuckDB state the way a single-host deployment leaves it (the dashboard's seeded journey),
    plus values a copy most easily gets wrong: '' against NULL, quotes, new lines, arrays holding
    commas, quotes and NULLs, exact decimals."""
    path = tmp_path_factory.mktemp("single-host") / "state.duckdb"
    seed_state(path, now=NOW)
    with StateStore(path).write() as con:
        con.execute("INSERT INTO orders (order_id, order_name, status, hold_reasons, payload, created_at, received_at,"
                    " updated_at) VALUES ('awkward-1', ?, 'HELD', ?, ?, ?, ?, ?)",
                    [AWKWARD_TEXT, ["has,comma", 'has "quote"', None, "", "{braces}"],
                     json.dumps({"note": AWKWARD_TEXT, "total": "12.30"}), NOW, NOW, NOW])
        con.execute("INSERT INTO orders (order_id, order_name, status, hold_reasons, payload, created_at, received_at,"
                    " updated_at) VALUES ('awkward-2', '', 'HELD', [], NULL, ?, ?, ?)", [NOW, NOW, NOW])
    return path


def _tables(con) -> list[str]:
    return [t for (t,) in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        " AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations' ORDER BY 1").fetchall()]


def _rows(con, table: str) -> list[tuple]:
    columns = [c for (c,) in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table]).fetchall()]
    listed = ", ".join(f'"{c}"' for c in columns)
    return sorted(con.execute(f'SELECT {listed} FROM "{table}"').fetchall(), key=repr)


def copy(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main(["state-copy", *args])
    return code, json.loads(capsys.readouterr().out)


def test_every_table_and_sequence_arrives_as_it_was(single_host, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(transfer, "CHUNK_ROWS", 7)  # tables arrive in many chunks, as a large stock history does
    with fresh_database() as url:
        monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", url)
        code, answer = copy(capsys, "--from", str(single_host), "--landing-dir", str(tmp_path / "none"))
        assert code == 0, answer
        assert answer["ok"] and answer["to"] == masked_url(url)

        with StateStore(single_host).read() as duck:
            tables = _tables(duck)
            expected = {t: _rows(duck, t) for t in tables}
            sequences = dict(duck.execute("SELECT sequence_name, last_value FROM duckdb_sequences()").fetchall())
        assert answer["by_table"] == {t: len(rows) for t, rows in expected.items() if rows}
        assert answer["rows"] >= 500, "the seeded journey fills orders, events, shipments, stock and exceptions"

        pg = PgStateStore(url)
        with pg.check_reader(tables) as copied:  # PostgreSQL's rows, read back into DuckDB through Arrow
            for table in tables:
                assert _rows(copied, table) == expected[table], table
        awkward = dict((row[0], row) for row in expected["orders"] if row[0].startswith("awkward"))
        assert awkward["awkward-1"][1] == AWKWARD_TEXT and awkward["awkward-2"][1] == ""

        raw = pg.connect()
        try:
            with raw.cursor() as cur:
                for name, last in sequences.items():
                    cur.execute("SELECT nextval(%s)", [name])
                    assert cur.fetchone()[0] == (last or 0) + 1, f"{name} resumes after the last value DuckDB drew"
                cur.execute("SELECT hold_reasons, payload::text FROM orders WHERE order_id = 'awkward-1'")
                reasons, payload = cur.fetchone()
                assert reasons == ["has,comma", 'has "quote"', None, "", "{braces}"]
                assert json.loads(payload) == {"note": AWKWARD_TEXT, "total": "12.30"}
                cur.execute("SELECT count(*), sum(amount) FROM refunds")
                count, total = cur.fetchone()
        finally:
            raw.close()
        with duckdb.connect(str(single_host), read_only=True) as duck:
            assert (count, total) == duck.execute("SELECT count(*), sum(amount) FROM refunds").fetchone()
            assert isinstance(total, Decimal)


def test_a_target_holding_rows_is_refused_and_left_as_it_was(single_host, tmp_path, monkeypatch, capsys):
    with fresh_database() as url:
        monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", url)
        assert copy(capsys, "--from", str(single_host), "--landing-dir", str(tmp_path))[0] == 0
        with PgStateStore(url).read() as con:
            before = con.execute("SELECT count(*) FROM order_events").fetchone()[0]
        code, answer = copy(capsys, "--from", str(single_host), "--landing-dir", str(tmp_path))
        assert code == 1 and not answer["ok"]
        assert "already holds rows" in answer["error"] and "nothing written" in answer["error"]
        with PgStateStore(url).read() as con:
            assert con.execute("SELECT count(*) FROM order_events").fetchone()[0] == before, "never merged, never doubled"


def test_landings_not_yet_ingested_are_refused_until_ingest_takes_them(single_host, tmp_path, monkeypatch, capsys):
    state = tmp_path / "state.duckdb"
    state.write_bytes(single_host.read_bytes())
    zone = LandingZone(tmp_path / "landing")
    body = json.dumps({"id": 991, "name": "#991"}).encode()
    landed = zone.land(Envelope(source="shopify", topic="orders/create", body=body, dedupe_key="shopify:webhook:w-991",
                                webhook_id="w-991"))
    with fresh_database() as url:
        monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", url)
        code, answer = copy(capsys, "--from", str(state), "--landing-dir", str(zone.root))
        assert code == 1 and "not ingested yet" in answer["error"] and landed.landing_id in answer["error"]
        with PgStateStore(url).read() as con:
            assert con.execute("SELECT count(*) FROM orders").fetchone()[0] == 0, "a refusal writes nothing"

        monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", str(state))  # ingest the single host's landings first
        assert cli.main(["ingest", "--landing-dir", str(zone.root), "--state", str(state)]) == 0
        capsys.readouterr()
        monkeypatch.setenv("CLARUS_PIPELINES_STATE_URL", url)
        code, answer = copy(capsys, "--from", str(state), "--landing-dir", str(zone.root))
        assert code == 0, answer
        with PgStateStore(url).read() as con:
            assert con.execute("SELECT count(*) FROM landed_events WHERE landing_id = ?",
                               [landed.landing_id]).fetchone()[0] == 1


def test_without_a_postgresql_target_it_cannot_run(single_host, monkeypatch, capsys):
    monkeypatch.delenv("CLARUS_PIPELINES_STATE_URL", raising=False)
    code, answer = copy(capsys, "--from", str(single_host))
    assert code == 2 and "no PostgreSQL target" in answer["error"]
    code, answer = copy(capsys, "--from", str(single_host), "--to", str(single_host))
    assert code == 2 and "no PostgreSQL target" in answer["error"]


def test_two_copies_at_once_store_the_state_once(single_host):
    """The copy holds the state's writer lock from its emptiness check to its commit."""
    with fresh_database() as url:
        PgStateStore(url).ensure_schema()
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda _: _attempt(single_host, url), range(2)))
        assert sorted(o if isinstance(o, str) else "copied" for o in outcomes) == ["copied", "refused"]
        with PgStateStore(url).read() as con, StateStore(single_host).read() as duck:
            assert con.execute("SELECT count(*) FROM order_events").fetchone() == \
                duck.execute("SELECT count(*) FROM order_events").fetchone()


def _attempt(source, url):
    try:
        return transfer.copy_state(source, url)
    except transfer.StateCopyRefused as exc:
        assert "already holds rows" in str(exc)
        return "refused"
